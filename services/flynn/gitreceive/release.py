"""The release a build makes, and the build job's limits, from the app's current release.

* env: the current release's, unchanged (``flynn env`` owns it).
* processes: the slug's process types, each run through the slug's ``.flynn/run`` (which sources
  the buildpacks' ``.profile.d`` first); a type the current release has keeps its settings
  (``env``, ``resources``, ``omni``, ``service``, ``check``: ``flynn limit`` and the like). The
  ``slugbuilder`` type, which only holds the build's limits and is never scaled, is kept as is.
* meta: ``git``, ``branch``, ``rev`` (the pushed commit), as Flynn's receiver sets them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from flynn.gitreceive.slug import Slug

if TYPE_CHECKING:
    from flynn.controller.client import NewRelease, ProcessType, Release

RUNNER = "/app/.flynn/run"
SLUGBUILDER_TYPE = "slugbuilder"
KEPT = ("env", "resources", "omni", "service", "check")


def new_release(
    app_id: str, current: Release | None, slug: Slug, artifact_id: str, *, branch: str, rev: str
) -> NewRelease:
    old: dict[str, Any] = dict(current["processes"]) if current else {}
    processes: dict[str, ProcessType] = {}
    for name, command in sorted(slug.processes.items()):
        proc: ProcessType = {"args": [RUNNER, command]}
        before = old.get(name) or {}
        for key in KEPT:
            if key in before and before[key] is not None:
                proc[key] = copy.deepcopy(before[key])  # type: ignore[literal-required]
        processes[name] = proc
    if SLUGBUILDER_TYPE in old:
        processes[SLUGBUILDER_TYPE] = copy.deepcopy(old[SLUGBUILDER_TYPE])
    return {
        "app_id": app_id,
        "artifacts": [artifact_id],
        "env": dict(current["env"]) if current else {},
        "meta": {"git": "true", "branch": branch, "rev": rev},
        "processes": processes,
    }


def build_resources(current: Release | None, default_memory: int) -> dict[str, dict[str, int]]:
    """The build job's ``resources``: the ``slugbuilder`` type's, else the default memory limit."""
    resources: dict[str, dict[str, int]] = {"memory": {"limit": default_memory}}
    spec = (current["processes"].get(SLUGBUILDER_TYPE) if current else None) or {}
    for name, value in (spec.get("resources") or {}).items():
        if name in ("memory", "cpu") and isinstance(value, dict) and isinstance(value.get("limit"), int):
            resources[name] = {"limit": int(value["limit"])}
    return resources
