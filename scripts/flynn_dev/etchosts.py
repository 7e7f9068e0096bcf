"""A managed block in the machine's ``/etc/hosts`` for the developer's cluster (``dev``) only.

``flynn cluster add -p PIN default DOMAIN KEY`` reaches ``https://controller.DOMAIN``, so the
machine must resolve that name. For the developer's cluster (``scripts/up``, cluster ``dev``)
``scripts/cluster up`` writes::

    # BEGIN flynn dev cluster (scripts/cluster; removed by `scripts/cluster down`)
    192.168.250.11  controller.dev.flynn.test git.dev.flynn.test
    ...
    # END flynn dev cluster

and ``down`` removes it. Nothing outside the block is touched, and the file is rewritten in
place (it may be a bind mount). Other clusters (the test suite's) never write it: their clients
use ``FLYNN_RESOLVE`` (the CLI), ``curl --resolve`` or ``git -c http.curloptResolve=...``.
"""

from __future__ import annotations

from pathlib import Path

HOSTS = Path("/etc/hosts")


def _markers(cluster: str) -> tuple[str, str]:
    return (
        f"# BEGIN flynn {cluster} cluster (scripts/cluster; removed by `scripts/cluster down`)",
        f"# END flynn {cluster} cluster",
    )


def without_block(text: str, cluster: str) -> str:
    begin, end = _markers(cluster)
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line == begin:
            inside = True
            continue
        if inside and line == end:
            inside = False
            continue
        if not inside:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def with_block(text: str, cluster: str, entries: dict[str, list[str]]) -> str:
    """``text`` with the cluster's block (address -> names) replaced by ``entries``."""
    begin, end = _markers(cluster)
    lines = [begin] + [f"{addr}\t{' '.join(names)}" for addr, names in entries.items()] + [end]
    return without_block(text, cluster) + "\n".join(lines) + "\n"


def _rewrite(path: Path, text: str) -> None:
    with open(path, "r+") as f:  # in place: /etc/hosts may be a bind mount
        f.seek(0)
        f.write(text)
        f.truncate()


def install(cluster: str, entries: dict[str, list[str]], path: Path = HOSTS) -> None:
    current = path.read_text() if path.exists() else ""
    new = with_block(current, cluster, entries)
    if new != current:
        if not path.exists():
            path.write_text("")
        _rewrite(path, new)


def remove(cluster: str, path: Path = HOSTS) -> bool:
    if not path.exists():
        return False
    current = path.read_text()
    new = without_block(current, cluster)
    if new == current:
        return False
    _rewrite(path, new)
    return True
