"""The router's integration-test app (TCP): every line comes back as ``JOB:line``."""

import os
import socketserver

JOB = os.environ.get("FLYNN_JOB_ID", "?")


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(JOB.encode() + b":" + line)


if __name__ == "__main__":
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("0.0.0.0", int(os.environ["PORT"])), Echo)
    server.daemon_threads = True
    print(f"tcp echo {JOB} on :{server.server_address[1]}", flush=True)
    server.serve_forever()
