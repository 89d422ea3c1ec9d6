"""The lab's demo application: an HTTP server that says which node and group served the request.

python3 -m vigil.lab.demo_app --bind 10.213.0.101 --port 8080
"""

from __future__ import annotations

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (
            f"served by {os.environ.get('VIGIL_NODE', '?')} "
            f"group {os.environ.get('VIGIL_GROUP', '?')} pid {os.getpid()}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the probe hits us every few ms; keep the group's log readable


class Server(ThreadingHTTPServer):
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for its own name (getfqdn): where no DNS server
        # answers (a container on an internal network) that stalls the start for 10 s.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = Server((args.bind, args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
