"""A tiny web app for the integration tests: `/` says hello, `/env` answers its environment."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/env":
            body = json.dumps(dict(os.environ)).encode()
            ctype = "application/json"
        else:
            body = f"hello from {os.environ.get('FLYNN_JOB_ID', '?')}\n".encode()
            ctype = "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"listening on :{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
