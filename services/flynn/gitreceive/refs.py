"""The ref updates a push makes (the pre-receive hook's stdin) and the branch rule.

Only ``refs/heads/main`` or ``refs/heads/master`` is deployed (Heroku's rule); a push that
updates anything else, deletes the branch, or updates both branches at once is rejected whole,
with a message saying what to push instead, before anything is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEPLOY_REFS = ("refs/heads/main", "refs/heads/master")
ZERO = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1 or SHA-256 object names


class Rejected(Exception):
    """The push is refused; the message is shown to the pusher as is."""


@dataclass(frozen=True)
class Update:
    old: str
    new: str
    ref: str

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/")


def parse(text: str) -> list[Update]:
    """``OLD NEW REF`` lines, as git gives them to a pre-receive hook."""
    updates = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not _SHA.match(parts[0]) or not _SHA.match(parts[1]):
            raise Rejected(f"unexpected ref update line from git: {line[:120]!r}")
        updates.append(Update(*parts))
    return updates


def _short(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def deployable(updates: list[Update]) -> Update:
    """The one update to build, or :class:`Rejected` with the reason."""
    if not updates:
        raise Rejected("nothing was pushed")
    others = [u for u in updates if u.ref not in DEPLOY_REFS]
    if others:
        ref = others[0].ref
        name = _short(ref)
        kind = "tag" if ref.startswith("refs/tags/") else "branch"
        raise Rejected(
            f"pushed {kind} {name}: only the main or master branch is deployed"
            f" (git push flynn {name}:main deploys it)"
        )
    if len(updates) > 1:
        raise Rejected("main and master were pushed together: push one of them")
    update = updates[0]
    if set(update.new) == {"0"}:
        raise Rejected(f"deleting {update.branch} is not allowed: it is what the app runs")
    return update
