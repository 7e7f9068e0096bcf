"""The example app that scripts/up deploys with `git push`: a page served on $PORT (stdlib only)."""

import html
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        job = html.escape(os.environ.get("FLYNN_JOB_ID", "?"))
        body = (
            "<!doctype html><title>Hello from Flynn</title>"
            f"<h1>Hello from Flynn</h1><p>job {job} on {html.escape(socket.gethostname())}</p>\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Hello).serve_forever()
