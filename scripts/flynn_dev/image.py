"""Build the host image as two cached layers, each keyed by a hash of what goes into it.

* ``base-<hash>``: a Debian 12 rootfs (mmdebstrap) with the packages of appliance/packages.txt and the
  venv /opt/flynn/venv holding the pinned dependencies (appliance/requirements.txt) installed offline
  from a wheelhouse. Key: those two files, the install scripts and the Debian suite. ~1 minute.
* ``app-<hash>``: the upper directory of an overlay on top of the base, into which appliance/install
  puts the flynn wheel and the units of units/. Key: services/, units/, pyproject.toml, setup.py.
  ~40 s (the wheel build compiles the router's data plane with mypyc).

Hosts boot ``--overlay=BASE:APP:HOST_UPPER:/``, so a code change rebuilds only the app layer and a
host keeps its own state (its upper directory) across rebuilds. Builds go to a temporary directory
and are renamed into place only when complete, so an interrupted build is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flynn_dev.util import REPO, DevError, dev_home, run, tree_hash, venv_python

SUITE = "bookworm"
RECIPE_VERSION = "1"  # bump to force a base rebuild when this module's base recipe changes
KEEP_APP_LAYERS = 3
STAGE = "/tmp/flynn"  # noqa: S108 - a path inside the image chroot being built, not on this machine


@dataclass(frozen=True)
class Image:
    base: Path
    app: Path
    build_id: str


def images_dir() -> Path:
    return dev_home() / "images"


def mirror() -> str:
    return os.environ.get("FLYNN_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def base_key() -> str:
    appliance = REPO / "appliance"
    return tree_hash(
        [
            appliance / "packages.txt",
            appliance / "requirements.txt",
            appliance / "install",
            appliance / "rootfs-customize",
        ],
        extra=[SUITE, RECIPE_VERSION, mirror()],
    )


def app_key() -> str:
    return tree_hash(
        [
            REPO / "services",
            REPO / "units",
            REPO / "pyproject.toml",
            REPO / "setup.py",
            REPO / "appliance/install",
        ]
    )


def packages() -> list[str]:
    lines = (REPO / "appliance/packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _log(msg: str) -> None:
    print(f"image: {msg}", flush=True)


def build_wheelhouse(dest: Path) -> None:
    """Wheels of every pinned dependency, built with the machine's python3 (same ABI as the image)."""
    py = venv_python()
    if not py.exists():
        raise DevError(f"{py} missing: run scripts/setup first")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run(
        [
            py,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            tmp,
            "-r",
            REPO / "appliance/requirements.txt",
        ],
        timeout=1800,
    )
    tmp.rename(dest)


def build_base(dest: Path, wheelhouse: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    appliance = REPO / "appliance"
    m = mirror()
    security = os.environ.get("FLYNN_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
    hooks = [
        f'mkdir -p "$1/tmp/flynn" && cp -a {appliance}/. "$1/tmp/flynn/appliance/"',
        f'cp -a {wheelhouse} "$1/tmp/flynn/wheelhouse"',
        'chroot "$1" /tmp/flynn/appliance/install deps --no-apt --wheelhouse /tmp/flynn/wheelhouse',
        'chroot "$1" /tmp/flynn/appliance/rootfs-customize',
        'rm -rf "$1/tmp/flynn" "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages',
    ]
    cmd: list[str | Path] = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--quiet",
        "--include=" + ",".join(packages()),
    ]
    # Debian's postgresql-common creates and starts a "main" cluster on install unless told not to;
    # Flynn runs its own (flynn-postgres.service, /var/lib/flynn/postgres).
    cmd.append(
        '--setup-hook=mkdir -p "$1/etc/postgresql-common/createcluster.d" && '
        "echo 'create_main_cluster = false' > \"$1/etc/postgresql-common/createcluster.d/flynn.conf\""
    )
    for hook in hooks:
        cmd.append(f"--customize-hook={hook}")
    cmd += [
        SUITE,
        tmp,
        f"deb {m} {SUITE} main",
        f"deb {m} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]
    run(cmd, timeout=1800)
    tmp.rename(dest)


@contextlib.contextmanager
def _overlay(lower: Path, upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            merged,
        ]
    )
    mounted = [merged]
    try:
        for sub, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            run(["mount", *args, merged / sub])
            mounted.append(merged / sub)
        yield merged
    finally:
        for m in reversed(mounted):
            if run(["umount", m], check=False).returncode != 0:
                run(["umount", "--lazy", m], check=False)


def build_app(dest: Path, base: Path, build_id: str) -> None:
    py = venv_python()
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        wheels = tmp / "wheels"
        run(
            [
                py,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                wheels,
                REPO,
            ],
            timeout=600,
        )
        wheel = next(wheels.glob("flynn-*.whl"))
        with _overlay(base, tmp / "upper", tmp / "work", tmp / "merged") as root:
            stage = root / STAGE.lstrip("/")
            stage.mkdir(parents=True)
            shutil.copy2(wheel, stage / wheel.name)
            shutil.copytree(REPO / "units", stage / "units")
            shutil.copytree(REPO / "appliance", stage / "appliance")
            run(
                [
                    "chroot",
                    root,
                    f"{STAGE}/appliance/install",
                    "app",
                    "--wheel",
                    f"{STAGE}/{wheel.name}",
                    "--units",
                    f"{STAGE}/units",
                    "--build",
                    build_id,
                ],
                timeout=600,
            )
            shutil.rmtree(stage)
        (tmp / "upper").rename(dest)
    finally:
        with contextlib.suppress(OSError):
            # the overlay work dir holds a root-only "work" subdir; plain rmtree copes as root
            shutil.rmtree(tmp)


def layers_in_use() -> set[Path]:
    """Layers (app and base) named by any cluster's state file (every cluster on this machine,
    not only ours)."""
    found: set[Path] = set()
    for state in dev_home().glob("cluster-*/state.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded = json.loads(state.read_text())
            found.update(Path(recorded[k]) for k in ("app", "base") if recorded.get(k))
    return found


def _gc_app_layers(keep: Path, in_use: set[Path]) -> None:
    layers = sorted(images_dir().glob("app-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    in_use = in_use | layers_in_use()
    for layer in layers[KEEP_APP_LAYERS:]:
        if layer != keep and layer not in in_use and layer.is_dir():
            shutil.rmtree(layer, ignore_errors=True)


def _gc_base_layers(keep: Path, in_use: set[Path]) -> None:
    """Base layers other than the current one go, with their app layers, unless a cluster's hosts
    run on them (a base of ~0.5-1 GB per change of appliance/ used to stay forever)."""
    in_use = in_use | layers_in_use()
    used = {p.name.split("-")[1] for p in in_use if p.name.startswith("app-")}
    for base in images_dir().glob("base-*"):
        key = base.name.removeprefix("base-")
        if base == keep or base in in_use or not re.fullmatch(r"[0-9a-f]{16}", key) or key[:8] in used:
            continue
        _log(f"removing the old base layer {base.name}")
        shutil.rmtree(base, ignore_errors=True)
        for app in images_dir().glob(f"app-{key[:8]}-*"):
            shutil.rmtree(app, ignore_errors=True)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Image builds of several clusters (dev, test, ...) on one machine run one at a time."""
    with open(images_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure(*, in_use: set[Path] | None = None, force: bool = False) -> Image:
    """Return the current image, building whatever layer is missing or stale."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with _build_lock():
        return _ensure(in_use=in_use, force=force)


def _ensure(*, in_use: set[Path] | None, force: bool) -> Image:
    cache = dev_home() / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    bkey = base_key()
    base = images_dir() / f"base-{bkey}"
    if force:
        shutil.rmtree(base, ignore_errors=True)
    if not (base / "usr/lib/systemd/systemd").exists():
        wheelhouse = cache / f"wheelhouse-{tree_hash([REPO / 'appliance/requirements.txt'])}"
        if not wheelhouse.is_dir():
            t0 = time.monotonic()
            _log("building the dependency wheelhouse")
            build_wheelhouse(wheelhouse)
            _log(f"wheelhouse ready in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        _log(f"building base rootfs {base.name} (mmdebstrap {SUITE})")
        build_base(base, wheelhouse)
        _log(f"base rootfs ready in {time.monotonic() - t0:.1f}s")
    akey = app_key()
    build_id = f"{bkey[:8]}.{akey[:8]}"
    app = images_dir() / f"app-{bkey[:8]}-{akey}"
    if force:
        shutil.rmtree(app, ignore_errors=True)
    if not app.is_dir():
        t0 = time.monotonic()
        _log(f"building app layer {app.name}")
        build_app(app, base, build_id)
        _log(f"app layer ready in {time.monotonic() - t0:.1f}s")
    os.utime(app)
    _gc_app_layers(app, in_use or set())
    _gc_base_layers(base, in_use or set())
    return Image(base=base, app=app, build_id=build_id)


def check_tools() -> None:
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter", "ip", "mount", "chroot"):
        if shutil.which(tool) is None:
            raise DevError(f"{tool} not found: run scripts/setup")
