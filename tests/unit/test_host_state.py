"""The job state machine: allowed transitions only, final states are final."""

from __future__ import annotations

import re

import pytest

from flynn.host.jobs.spec import parse_job
from flynn.host.jobs.state import FINAL, TRANSITIONS, JobRecord, JobState, TransitionError, rfc3339


def record() -> JobRecord:
    return JobRecord(
        spec=parse_job({"args": ["true"], "env": {"SECRET": "hunter2"}}, "host1", "host1-a"), host_id="host1"
    )


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rfc3339())


def test_the_happy_path() -> None:
    job = record()
    assert job.state is JobState.STARTING
    job.transition(JobState.UP)
    assert job.up_at is not None
    job.transition(JobState.STOPPING)
    job.transition(JobState.DOWN, exit_status=0)
    assert job.final
    assert job.finished_at is not None
    assert job.exit_status == 0


@pytest.mark.parametrize("state", sorted(FINAL))
def test_final_states_are_final(state: JobState) -> None:
    assert not TRANSITIONS[state]
    job = record()
    job.transition(state)
    for target in JobState:
        if target is not state:
            with pytest.raises(TransitionError):
                job.transition(target)


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (JobState.UP, JobState.STARTING),
        (JobState.UP, JobState.FAILED),  # failed means "could not be started"
        (JobState.STOPPING, JobState.UP),
        (JobState.STOPPING, JobState.CRASHED),  # asked to stop: any exit is down
        (JobState.STOPPING, JobState.FAILED),
    ],
)
def test_refused_transitions(start: JobState, target: JobState) -> None:
    job = record()
    if start is not JobState.STARTING:
        if start is JobState.STOPPING:
            job.transition(JobState.UP)
        job.transition(start)
    with pytest.raises(TransitionError):
        job.transition(target)
    assert job.state is start


def test_every_state_is_reachable_from_starting() -> None:
    seen = {JobState.STARTING}
    frontier = [JobState.STARTING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(JobState)


def test_unknown_fields_are_refused() -> None:
    job = record()
    with pytest.raises(TransitionError):
        job.transition(JobState.UP, bogus=1)


def test_api_form_and_record_never_hold_the_env() -> None:
    job = record()
    assert "hunter2" not in repr(job.to_api())
    assert "hunter2" not in repr(job.to_record())
    assert set(job.to_api()) >= {
        "id", "host_id", "app_id", "app_name", "release_id", "type", "state", "port", "unit", "args",
        "service", "exit_status", "signal", "error", "created_at", "started_at", "up_at", "finished_at",
    }  # fmt: skip
    assert job.to_api()["unit"] == "flynn-job-host1-a.service"


def test_record_round_trip() -> None:
    job = record()
    job.port = 49153
    job.transition(JobState.UP)
    again = JobRecord.from_record(job.to_record())
    assert again.to_api() == job.to_api()
    assert again.state is JobState.UP
