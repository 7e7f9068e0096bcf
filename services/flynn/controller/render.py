"""Rows to the JSON objects of docs/controller.md (times as RFC 3339 UTC with milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Row = dict[str, Any]


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def app(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "meta": row["meta"],
        "strategy": row["strategy"],
        "deploy_timeout": row["deploy_timeout"],
        "release_id": _id(row["release_id"]),
        "system": row["system"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


def artifact(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "type": row["type"],
        "uri": row["uri"],
        "meta": row["meta"],
        "size": row["size"],
        "sha256": row["sha256"],
        "created_at": ts(row["created_at"]),
    }


def release(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "app_id": str(row["app_id"]),
        "artifacts": [str(a) for a in row.get("artifacts") or []],
        "env": row["env"],
        "meta": row["meta"],
        "processes": row["processes"],
        "created_at": ts(row["created_at"]),
    }


def formation(row: Row) -> dict[str, Any]:
    return {
        "app_id": str(row["app_id"]),
        "release_id": str(row["release_id"]),
        "processes": row["processes"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


def job(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uuid": str(row["uuid"]),
        "host_id": row["host_id"],
        "app_id": str(row["app_id"]),
        "release_id": str(row["release_id"]),
        "type": row["type"],
        "state": row["state"],
        "args": row["args"],
        "exit_status": row["exit_status"],
        "host_error": row["host_error"],
        "restarts": row["restarts"],
        "meta": row["meta"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


def deployment(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "app_id": str(row["app_id"]),
        "old_release_id": _id(row["old_release_id"]),
        "new_release_id": str(row["new_release_id"]),
        "strategy": row["strategy"],
        "status": row["status"],
        "error": row["error"],
        "processes": row["processes"],
        "deploy_timeout": row["deploy_timeout"],
        "created_at": ts(row["created_at"]),
        "finished_at": ts(row["finished_at"]),
    }


def event(row: Row) -> dict[str, Any]:
    return {
        "id": int(row["id"]),
        "app_id": _id(row["app_id"]),
        "object_type": row["object_type"],
        "object_id": row["object_id"],
        "op": row["op"],
        "data": row["data"],
        "created_at": ts(row["created_at"]),
    }


def key(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "fingerprint": row["fingerprint"],
        "type": row["type"],
        "key": row["key"],
        "comment": row["comment"],
        "created_at": ts(row["created_at"]),
    }
