"""A static file server on $PORT, written into the slug by the static buildpack.

Serves the directory named in ``root`` next to this file (``public`` or ``.``, relative to the
slug's root), never a dotfile nor anything under a dot-directory (``.flynn``, ``.profile.d``...).
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    def send_head(self) -> io.BytesIO | Any | None:
        parts = self.path.split("?", 1)[0].split("#", 1)[0].split("/")
        if any(part.startswith(".") for part in parts if part):
            self.send_error(404)
            return None
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    root = (HERE.parent / (HERE / "root").read_text().strip()).resolve()
    port = int(os.environ.get("PORT", "8080"))
    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 - the job's $PORT
    print(f"serving {root} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
