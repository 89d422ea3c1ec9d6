"""A real TCP client: connect + HTTP GET every few milliseconds, one JSON line per attempt.

    python3 -m vigil.lab.probe --target 10.213.0.101:8080 --interval 0.01 --timeout 0.05

Each line: ``{"t": <unix time>, "ok": true, "body": "served by n1 ..."}`` or
``{"t": ..., "ok": false, "error": "refused" | "timeout" | "closed" | ...}``. Stops after
``--duration`` seconds or ``--count`` attempts (bounded by design), or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def attempt(host: str, port: int, timeout: float) -> dict[str, object]:
    started = time.time()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        if not data:  # accepted, then closed with no answer (the app killed mid-request)
            return {"t": started, "ok": False, "error": "closed"}
        body = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
        return {"t": started, "ok": True, "body": body}
    except ConnectionRefusedError:
        return {"t": started, "ok": False, "error": "refused"}
    except TimeoutError:
        return {"t": started, "ok": False, "error": "timeout"}
    except OSError as exc:
        return {"t": started, "ok": False, "error": exc.strerror or str(exc)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        began = time.monotonic()
        print(json.dumps(attempt(host, int(port), args.timeout)), flush=True)
        time.sleep(max(0.0, began + args.interval - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
