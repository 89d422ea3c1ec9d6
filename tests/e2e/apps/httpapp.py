"""An HTTP app for tests/e2e/test_supervision.py, run by Vigil as a foreground app.

It answers every GET with ``<name> on <node>`` and prints one marker line once it listens (the
test reads it back with ``vigil logs``). With ``--ignore-term`` it ignores SIGTERM (saying so in its
log) and forks a child that ignores SIGTERM too (``SIG_IGN``), so only a SIGKILL of the whole
process group stops it.

python3 tests/e2e/apps/httpapp.py --name stubborn --bind 10.213.0.103 --port 8080 --ignore-term
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

CHILD_LIFETIME = 300.0  # a safety net only: the test expects SIGKILL to end the child long before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    node = os.environ.get("VIGIL_NODE", "?")

    if args.ignore_term:
        if os.fork() == 0:  # the child: same process group, deaf to SIGTERM, never exits by itself
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(CHILD_LIFETIME)
            os._exit(0)

        def ignore(signum: int, frame: FrameType | None) -> None:
            print(f"{args.name}: ignoring SIGTERM", flush=True)

        signal.signal(signal.SIGTERM, ignore)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{args.name} on {node}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            pass  # monitors poll us often; keep the log to the marker lines

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"{args.name}: listening on {args.bind}:{args.port} on node {node}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
