"""The host's job runtime: each job is a transient systemd unit ``flynn-job-<ID>.service``.

One module per concern:

* :mod:`.state` — the job record and its explicit state machine (allowed transitions).
* :mod:`.spec` — validation of a job config (``PUT /host/jobs/:id`` body).
* :mod:`.ports` — ``PORT`` allocation from 49152-65535.
* :mod:`.units` — the mapping of a job config to unit properties, and of unit properties back to
  a job outcome (pure, no D-Bus).
* :mod:`.artifacts` — download, verification and safe extraction of tarball artifacts.
* :mod:`.health` — tcp/http health checks.
* :mod:`.dbus` — systemd over D-Bus (pystemd), signals integrated into the asyncio loop.
* :mod:`.store` — job records on disk (``/var/lib/flynn/jobs``).
* :mod:`.events` — fan-out of job changes to event-stream subscribers.
* :mod:`.manager` — the orchestration: start, follow, stop, recover.
* :mod:`.journal` — job log lines from the journal.
* :mod:`.attach` — the attach WebSocket (stdin/stdout/stderr of a job).
* :mod:`.platform` — ``PUT /host/platform/:name`` (platform services at bootstrap).
* :mod:`.api` — the HTTP routes.
"""
