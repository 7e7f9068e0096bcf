"""The leader's view (flynn.scheduler.state): merging host news, reports, crashes, lost hosts."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

from flynn.scheduler.backoff import Backoff
from flynn.scheduler.memory import expanded
from flynn.scheduler.model import Formation, FormationKey, Job, JobState
from flynn.scheduler.state import HOST_LOST, JOB_VANISHED, SchedulerState

KEY = FormationKey("app1", "rel1", "web")
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def crashes(backoff: Backoff, key: FormationKey) -> int:
    record = backoff.get(key)
    return 0 if record is None else record.crashes


def stamp(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def raw_job(jid: str, state: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": jid,
        "host_id": jid.partition("-")[0],
        "app_id": "app1",
        "app_name": "myapp",
        "release_id": "rel1",
        "type": "web",
        "state": state,
        "args": ["/bin/app"],
        "created_at": stamp(0),
        **kw,
    }


def J(jid: str, state: str, **kw: Any) -> Job:
    return Job.from_json(raw_job(jid, state, **kw))


def synced(st: SchedulerState, host_id: str) -> bool:
    return st.hosts[host_id].synced


def ready_state(*host_ids: str, now: float = 0.0) -> SchedulerState:
    st = SchedulerState(started_at=now)
    st.set_formations([Formation.from_expanded(expanded("app1", "rel1", {"web": 2}))])
    for h in host_ids:
        st.host_up(h, f"http://{h}:1113")
        st.jobs_synced(h, [])
    st.hosts_current()
    return st


def test_jobs_only_move_forward() -> None:
    st = ready_state("h1")
    assert [r.state for r in st.job_update("h1", J("h1-a", "up"), 1)] == ["up"]
    assert st.job_update("h1", J("h1-a", "starting"), 2) == []  # an older event after a reconnect
    assert st.jobs["h1-a"].job.state is JobState.UP
    assert [r.state for r in st.job_update("h1", J("h1-a", "stopping"), 3)] == ["stopping"]
    assert [r.state for r in st.job_update("h1", J("h1-a", "down"), 4)] == ["down"]
    assert "h1-a" not in st.jobs
    # a late repeat of an earlier state does not bring a finished job back
    assert st.job_update("h1", J("h1-a", "up"), 5) == []
    assert "h1-a" not in st.jobs


def test_each_state_is_reported_once_with_the_controller_fields() -> None:
    st = ready_state("h1")
    (report,) = st.job_update("h1", J("h1-a", "starting"), 1)
    assert st.job_update("h1", J("h1-a", "starting"), 2) == []
    assert report.app_id == "app1"
    assert report.job_id == "h1-a"
    assert report.body == {
        "id": "h1-a",
        "uuid": "a",
        "host_id": "h1",
        "app_id": "app1",
        "release_id": "rel1",
        "type": "web",
        "state": "starting",
        "args": ["/bin/app"],
        "exit_status": None,
        "host_error": None,
    }
    (crash,) = st.job_update("h1", J("h1-a", "crashed", exit_status=3, error="exited 3"), 3)
    assert (crash.body["exit_status"], crash.body["host_error"]) == (3, "exited 3")


def test_updates_from_unknown_hosts_are_ignored() -> None:
    st = ready_state("h1")
    assert st.job_update("h9", J("h9-a", "up"), 1) == []
    assert st.jobs == {}


def test_a_lost_host_takes_its_jobs_down_at_the_controller() -> None:
    st = ready_state("h1", "h2")
    st.job_update("h1", J("h1-a", "up"), 1)
    st.job_update("h2", J("h2-b", "up"), 1)
    st.refuse("h2", KEY, 1)
    reports = st.host_down("h2", 2)
    assert [(r.job_id, r.state, r.body["host_error"]) for r in reports] == [("h2-b", "down", HOST_LOST)]
    assert list(st.jobs) == ["h1-a"]
    assert "h2" not in st.hosts
    assert st.refused == {}
    plan = st.plan(3, new_uuid=lambda: "n")
    assert [(a.host_id, a.job_id) for a in plan.starts] == [("h1", "h1-n")]  # replaced on the other host


def test_a_host_that_comes_back_reports_its_jobs_afresh() -> None:
    st = ready_state("h1", "h2")
    st.job_update("h1", J("h1-a", "up"), 1)
    st.job_update("h1", J("h1-b", "up"), 1)
    st.host_down("h1", 2)
    assert [a.host_id for a in st.plan(2, new_uuid=lambda: "n").starts] == ["h2", "h2"]
    st.job_update("h2", J("h2-n1", "up", created_at=stamp(5)), 2)
    st.job_update("h2", J("h2-n2", "up", created_at=stamp(6)), 2)
    assert st.host_up("h1", "http://h1:1113")
    # its jobs kept running through a partition: known again (and counted) once it reports
    reports = st.job_update("h1", J("h1-a", "up"), 3)
    assert [(r.job_id, r.state) for r in reports] == [("h1-a", "up")]
    st.job_update("h1", J("h1-b", "up", created_at=stamp(9)), 3)
    assert st.jobs_synced("h1", ["h1-a", "h1-b"]) == []
    assert sorted(st.jobs) == ["h1-a", "h1-b", "h2-n1", "h2-n2"]
    stops = st.plan(3).stops
    assert [a.job_id for a in stops] == ["h1-b", "h2-n2"]  # the extras, newest first


def test_host_up_again_at_the_same_address_is_not_news() -> None:
    st = ready_state("h1")
    assert not st.host_up("h1", "http://h1:1113")
    assert st.hosts["h1"].synced
    assert st.host_up("h1", "http://10.0.0.9:1113")
    assert not st.hosts["h1"].synced


def test_jobs_missing_from_a_fresh_snapshot_are_looked_up() -> None:
    st = ready_state("h1")
    st.job_update("h1", J("h1-a", "up"), 1)
    st.job_update("h1", J("h1-b", "up"), 1)
    st.job_update("h1", J("h1-c", "up"), 1)
    st.host_stream_lost("h1")
    assert not synced(st, "h1")
    assert list(st.jobs) == ["h1-a", "h1-b", "h1-c"]  # kept (and counted) while we cannot see the host
    st.job_update("h1", J("h1-new", "starting"), 2)  # started meanwhile: the snapshot may predate it
    st.job_update("h1", J("h1-a", "up"), 3)
    assert st.jobs_synced("h1", ["h1-a"]) == ["h1-b", "h1-c", "h1-new"]
    assert synced(st, "h1")
    # the host's answers: b crashed unseen, c has no record at all, new is simply new
    assert [r.state for r in st.job_update("h1", J("h1-b", "crashed", exit_status=1), 4)] == ["crashed"]
    (gone,) = st.job_gone("h1", "h1-c")
    assert (gone.state, gone.body["host_error"]) == ("down", JOB_VANISHED)
    assert st.job_update("h1", J("h1-new", "starting"), 4) == []
    assert sorted(st.jobs) == ["h1-a", "h1-new"]
    assert crashes(st.backoff, KEY) == 1


def test_a_crash_is_backed_off_but_a_requested_stop_is_not() -> None:
    st = ready_state("h1")
    for n, now in zip(range(3), (10.0, 11.0, 12.0), strict=True):
        st.job_update("h1", J(f"h1-k{n}", "up"), now)
        st.job_update("h1", J(f"h1-k{n}", "stopping"), now)  # flynn kill
        st.job_update("h1", J(f"h1-k{n}", "down"), now)
    assert st.backoff.get(KEY) is None

    st.job_update("h1", J("h1-s", "up"), 13)
    st.stop_requested("h1-s")  # the scheduler's own stop: it may see only the final state
    st.job_update("h1", J("h1-s", "down"), 13)
    assert st.backoff.get(KEY) is None

    for n, state in enumerate(("crashed", "failed", "down")):  # down without a stop: exited on its own
        st.job_update("h1", J(f"h1-c{n}", "up"), 14)
        st.job_update("h1", J(f"h1-c{n}", state), 14)
    record = st.backoff.get(KEY)
    assert record is not None
    assert record.crashes == 3


def test_uptime_as_the_host_measured_it_resets_the_backoff() -> None:
    st = ready_state("h1")
    st.job_update("h1", J("h1-a", "crashed"), 10)
    st.job_update("h1", J("h1-b", "crashed"), 11)
    assert crashes(st.backoff, KEY) == 2
    long_run = J("h1-c", "crashed", up_at=stamp(100), finished_at=stamp(161))
    st.job_update("h1", long_run, 12)  # the scheduler's clock barely moved; the host says 61 s up
    assert crashes(st.backoff, KEY) == 1


def test_uptime_observed_by_the_scheduler_when_the_host_gives_no_times() -> None:
    st = ready_state("h1")
    st.job_update("h1", J("h1-a", "crashed"), 10)
    st.job_update("h1", J("h1-b", "up"), 11)
    st.job_update("h1", J("h1-b", "crashed"), 71)
    assert crashes(st.backoff, KEY) == 1


def test_one_off_jobs_are_reported_but_never_backed_off() -> None:
    st = ready_state("h1")
    reports = st.job_update("h1", J("h1-r", "crashed", type="run"), 1)
    assert [r.state for r in reports] == ["crashed"]
    assert st.backoff.records == {}


def test_crash_backoff_through_plans_with_an_injected_clock() -> None:
    st = ready_state("h1", now=0)
    st.set_formations([Formation.from_expanded(expanded("app1", "rel1", {"web": 1}))])
    ids = itertools.count()
    new = lambda: f"u{next(ids)}"  # noqa: E731
    now = 20.0
    starts_at = []
    for _ in range(5):
        plan = st.plan(now, new)
        while not plan.starts:
            assert plan.wake_at is not None
            assert plan.wake_at > now
            now = plan.wake_at
            plan = st.plan(now, new)
        (start,) = plan.starts
        starts_at.append(now)
        st.job_update("h1", J(start.job_id, "starting"), now)
        st.job_update("h1", J(start.job_id, "crashed", exit_status=1), now)
    assert [b - a for a, b in itertools.pairwise(starts_at)] == [0, 1, 2, 4]


def test_waiting_for_a_complete_view_before_acting() -> None:
    st = SchedulerState(started_at=100.0, sync_grace=10.0)
    assert st.waiting_for(100) == "the controller's formations"
    st.set_formations([])
    assert st.waiting_for(100) == "the list of hosts from discoverd"
    st.host_up("h1", "http://h1:1113")
    st.host_up("h2", "http://h2:1113")
    st.hosts_current()
    assert st.waiting_for(101) == "the job lists of hosts h1, h2"
    st.jobs_synced("h1", [])
    assert st.waiting_for(101) == "the job lists of hosts h2"
    assert st.waiting_for(110) is None  # a silent host does not hold the cluster back for ever
    st.jobs_synced("h2", [])
    assert st.waiting_for(101) is None


def test_formations_changes_are_detected() -> None:
    st = SchedulerState()
    f = Formation.from_expanded(expanded("app1", "rel1", {"web": 1}))
    assert st.set_formations([]) is True  # the first read is news even when empty
    assert st.set_formations([f]) is True
    assert st.set_formations([Formation.from_expanded(expanded("app1", "rel1", {"web": 1}))]) is False
    assert st.set_formations([Formation.from_expanded(expanded("app1", "rel1", {"web": 2}))]) is True
    assert st.app_name("app1") == "name-app1"


def test_the_scheduler_stop_of_an_unknown_job_is_down() -> None:
    st = ready_state("h1")
    st.job_update("h1", J("h1-a", "up"), 1)
    (report,) = st.job_gone("h1", "h1-a")
    assert (report.state, report.body["host_error"]) == ("down", JOB_VANISHED)
    assert st.job_gone("h1", "h1-a") == []
