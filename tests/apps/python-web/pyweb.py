"""python-web: a Bottle app (one small pure-Python package from PyPI) answering HTTP on $PORT."""

import os
import sys

import bottle  # type: ignore[import-not-found]  # installed by the python buildpack, not in .venv


def index() -> str:
    return f"python-web ok: bottle {bottle.__version__} from {os.path.dirname(bottle.__file__)}\n"


def env(name: str) -> str:
    return os.environ.get(name, "")


app = bottle.Bottle()
app.route("/", "GET", index)
app.route("/env/<name>", "GET", env)

if __name__ == "__main__":
    print(f"python-web on port {os.environ['PORT']} ({sys.executable})", flush=True)
    bottle.run(app, host="0.0.0.0", port=int(os.environ["PORT"]), quiet=True)
