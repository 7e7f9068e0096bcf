"""Job records on disk: ``/var/lib/flynn/jobs/<id>.json``, one file per job, written atomically
(temporary file, fsync, rename) on every change. Records never hold a job's env.

Live jobs' records are what a restarted daemon recovers from; finished ones are the history of
``flynn-host ps -a`` and are pruned to the newest :data:`KEEP_FINISHED`. A record that cannot be
parsed is moved aside (``<id>.json.corrupt``) with a warning rather than stopping the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from flynn.host.jobs.state import JobRecord

log = logging.getLogger(__name__)

KEEP_FINISHED = 1000


class JobStore:
    def __init__(self, directory: Path, *, keep_finished: int = KEEP_FINISHED) -> None:
        self.dir = directory
        self.keep_finished = keep_finished

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def save(self, job: JobRecord) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._path(job.id)
        tmp = path.with_name(f".{path.name}.tmp")
        data = json.dumps(job.to_record(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def delete(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(job_id).unlink()

    def load_all(self) -> list[JobRecord]:
        if not self.dir.is_dir():
            return []
        jobs: list[JobRecord] = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                jobs.append(JobRecord.from_record(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("job record %s is unreadable (%s); moved aside", path, exc)
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".json.corrupt"))
        return jobs

    def prune(self, jobs: list[JobRecord]) -> list[str]:
        """Delete the records of the oldest finished jobs beyond ``keep_finished``; returns their ids."""
        finished = sorted((j for j in jobs if j.final), key=lambda j: j.finished_at or "", reverse=True)
        dropped = [j.id for j in finished[self.keep_finished :]]
        for job_id in dropped:
            self.delete(job_id)
        return dropped
