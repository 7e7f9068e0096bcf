"""``flynn-slugbuilder --source URL --slug URL [--cache URL]``: the command run by build jobs.

Exit 0 after the last line ``FLYNN-SLUG {"sha256", "size", "processes"}``; exit 1 after a one-line
reason on stderr (``flynn-slugbuilder: ...``), also when cancelled (SIGTERM from stopping the
job, SIGINT, SIGHUP), which kills every child at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from flynn.slugbuilder import output, process
from flynn.slugbuilder.build import Build, Options, Slug
from flynn.slugbuilder.errors import BuildError, Cancelled

CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flynn-slugbuilder", description="Build a slug with buildpacks.")
    p.add_argument("--source", required=True, metavar="URL", help="tarball of the app's source (GET)")
    p.add_argument("--slug", required=True, metavar="URL", help="where to PUT the slug (gzip'd tar of /app)")
    p.add_argument("--cache", metavar="URL", help="the app's build cache (GET if present, PUT after a build)")
    p.add_argument("--build-dir", type=Path, default=Path("/app"), help="where to build (default /app)")
    return p.parse_args(argv)


def slug_line(slug: Slug) -> str:
    body = {"sha256": slug.sha256, "size": slug.size, "processes": slug.processes}
    return "FLYNN-SLUG " + json.dumps(body, separators=(",", ":"))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    process.cancel(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        build = Build(Options(source=args.source, slug=args.slug, cache=args.cache, build_dir=args.build_dir))
    except OSError as exc:
        output.fail(f"no temporary space for the build: {exc.strerror or exc}")
        return 1
    try:
        slug = build.run()
    except BuildError as exc:
        output.fail(str(exc))
        return 1
    except OSError as exc:  # the build directory or temporary space (disk full, permissions)
        where = f": {exc.filename}" if exc.filename else ""
        output.fail(f"{exc.strerror or type(exc).__name__}{where}")
        return 1
    except Cancelled as exc:
        process.kill_all()
        output.fail(f"build cancelled ({exc.signame})")
        return 1
    except Exception as exc:  # a bug: still one line, and the build fails cleanly
        first = str(exc).splitlines()[0] if str(exc) else ""
        output.fail(f"internal error: {type(exc).__name__}: {first}"[:300])
        return 1
    finally:
        for sig in CANCEL_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        build.close()
    print(slug_line(slug), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
