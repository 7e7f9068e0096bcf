"""The pure reconcile step and the crash backoff rule (flynn.scheduler.reconcile, .backoff)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from flynn.scheduler.backoff import MAX_DELAY, Backoff, delay_after
from flynn.scheduler.memory import expanded
from flynn.scheduler.model import (
    Formation,
    FormationKey,
    Host,
    Job,
    JobState,
    ModelError,
    StartJob,
    StopJob,
    job_config,
)
from flynn.scheduler.reconcile import Plan, extras_order, reconcile

NOW = 1000.0


def crashes(backoff: Backoff, key: FormationKey) -> int:
    record = backoff.get(key)
    return 0 if record is None else record.crashes


def formation(
    counts: dict[str, int],
    *,
    app: str = "app1",
    release: str = "rel1",
    omni: tuple[str, ...] = (),
    **kw: Any,
) -> Formation:
    procs = kw.pop("processes", None) or {
        t: {"args": ["/bin/app", t], **({"omni": True} if t in omni else {})} for t in counts
    }
    return Formation.from_expanded(expanded(app, release, counts, processes=procs, **kw))


def hosts(*ids: str, synced: bool = True) -> list[Host]:
    return [Host(i, f"http://{i}.test:1113", synced=synced) for i in ids]


_created = itertools.count(1)


def job(
    host: str,
    type_: str = "web",
    *,
    app: str = "app1",
    release: str = "rel1",
    state: JobState = JobState.UP,
    created: float | None = None,
    jid: str | None = None,
) -> Job:
    n = next(_created)
    return Job(
        id=jid or f"{host}-j{n}",
        host_id=host,
        app_id=app,
        release_id=release,
        type=type_,
        state=state,
        created_at=float(n) if created is None else created,
    )


def uuids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"u{next(counter)}"


def plan(
    formations: list[Formation],
    hs: list[Host],
    jobs: list[Job],
    backoff: Backoff | None = None,
    now: float = NOW,
    refused: dict[tuple[str, str, str], float] | None = None,
) -> Plan:
    return reconcile(formations, hs, jobs, backoff or Backoff(), now, refused=refused, new_uuid=uuids())


def placements(p: Plan) -> list[str]:
    return [a.host_id for a in p.starts]


# -- scale up and spread ---------------------------------------------------------------------------


def test_starts_the_missing_jobs_one_per_host() -> None:
    p = plan([formation({"web": 3})], hosts("h1", "h2", "h3"), [])
    assert placements(p) == ["h1", "h2", "h3"]
    assert [a.job_id for a in p.starts] == ["h1-u1", "h2-u2", "h3-u3"]
    assert p.stops == []
    assert p.shortfalls == []


def test_more_jobs_than_hosts_go_round_the_hosts() -> None:
    p = plan([formation({"web": 5})], hosts("h1", "h2"), [])
    assert sorted(placements(p)) == ["h1", "h1", "h1", "h2", "h2"]


def test_spread_prefers_fewest_of_the_type_then_fewest_overall_then_host_id() -> None:
    other = [job("h1", "worker"), job("h1", "worker"), job("h3", "worker")]
    p = plan([formation({"web": 1, "worker": 3})], hosts("h1", "h2", "h3"), other)
    # worker: h1 has 2, h3 has 1, h2 has 0 -> worker is satisfied (3). web: none anywhere, h2 has
    # the fewest jobs overall
    assert [(a.key.type, a.host_id) for a in p.starts] == [("web", "h2")]

    p = plan([formation({"web": 2})], hosts("h1", "h2", "h3"), [job("h3", "x", app="other")])
    # web=2 on empty-of-web hosts: h1 and h2 have no jobs at all; h3 has one of another app
    assert placements(p) == ["h1", "h2"]


def test_scale_up_fills_the_hosts_with_the_fewest_of_the_type() -> None:
    existing = [job("h1"), job("h1"), job("h2")]
    p = plan([formation({"web": 6})], hosts("h1", "h2", "h3"), existing)
    assert sorted(placements(p)) == ["h2", "h3", "h3"]


def test_jobs_placed_in_one_pass_count_towards_the_next_placement() -> None:
    f1 = formation({"web": 2}, app="a1")
    f2 = formation({"web": 2}, app="a2")
    p = plan([f1, f2], hosts("h1", "h2", "h3", "h4"), [])
    assert sorted(placements(p)) == ["h1", "h2", "h3", "h4"]


def test_a_matching_formation_needs_nothing() -> None:
    existing = [job("h1"), job("h2", state=JobState.STARTING)]
    p = plan([formation({"web": 2})], hosts("h1", "h2"), existing)
    assert p.actions == []
    assert p.shortfalls == []
    assert p.wake_at is None


# -- scale down ------------------------------------------------------------------------------------


def test_scale_down_stops_the_newest_first() -> None:
    old, mid, new = job("h1", created=1), job("h2", created=2), job("h3", created=3)
    p = plan([formation({"web": 1})], hosts("h1", "h2", "h3"), [mid, new, old])
    assert [a.job_id for a in p.stops] == [new.id, mid.id]
    assert all("extra" in a.reason for a in p.stops)
    assert p.starts == []


def test_scale_down_stops_starting_jobs_before_up_ones() -> None:
    up_new = job("h1", created=9)
    starting_old = job("h2", state=JobState.STARTING, created=1)
    up_old = job("h3", created=2)
    p = plan([formation({"web": 2})], hosts("h1", "h2", "h3"), [up_new, starting_old, up_old])
    assert [a.job_id for a in p.stops] == [starting_old.id]
    assert [j.id for j in extras_order([up_new, starting_old, up_old])] == [
        starting_old.id,
        up_new.id,
        up_old.id,
    ]


def test_stopping_and_final_jobs_are_not_live() -> None:
    gone = [
        job("h1", state=JobState.STOPPING),
        job("h1", state=JobState.DOWN),
        job("h2", state=JobState.CRASHED),
        job("h2", state=JobState.FAILED),
    ]
    p = plan([formation({"web": 2})], hosts("h1", "h2"), gone)
    assert p.stops == []
    assert sorted(placements(p)) == ["h1", "h2"]


# -- omni ------------------------------------------------------------------------------------------


def test_omni_types_run_count_jobs_on_every_host() -> None:
    f = formation({"agent": 2, "web": 1}, omni=("agent",))
    p = plan([f], hosts("h1", "h2", "h3"), [job("h2", "agent")])
    agents = sorted(a.host_id for a in p.starts if a.key.type == "agent")
    assert agents == ["h1", "h1", "h2", "h3", "h3"]
    assert [a.key.type for a in p.starts].count("web") == 1


def test_omni_extras_are_stopped_per_host_newest_first() -> None:
    f = formation({"agent": 1}, omni=("agent",))
    a_old, a_new = job("h1", "agent", created=1), job("h1", "agent", created=5)
    p = plan([f], hosts("h1", "h2"), [a_old, a_new, job("h2", "agent")])
    assert [a.job_id for a in p.stops] == [a_new.id]
    assert p.starts == []


def test_omni_skips_hosts_that_cannot_take_jobs_and_says_so() -> None:
    f = formation({"agent": 1}, omni=("agent",))
    hs = [*hosts("h1"), *hosts("h2", synced=False)]
    p = plan([f], hs, [], refused=None)
    assert placements(p) == ["h1"]
    assert [(s.missing, "h2" in s.reason) for s in p.shortfalls] == [(1, True)]


# -- stale jobs --------------------------------------------------------------------------------------


def test_jobs_of_a_superseded_release_are_stopped_and_the_new_release_started() -> None:
    old = [job("h1", release="rel0"), job("h2", release="rel0")]
    p = plan([formation({"web": 2}, release="rel1")], hosts("h1", "h2"), old)
    assert sorted(a.job_id for a in p.stops) == sorted(j.id for j in old)
    assert {a.reason for a in p.stops} == {"release superseded"}
    assert [(a.key.release_id, a.host_id) for a in p.starts] == [("rel1", "h1"), ("rel1", "h2")]


def test_jobs_of_a_deleted_app_are_stopped() -> None:
    orphans = [job("h1", app="gone", release="r"), job("h2", "worker", app="gone", release="r")]
    p = plan([formation({"web": 1})], hosts("h1", "h2"), [*orphans, job("h2")])
    assert sorted(a.job_id for a in p.stops) == sorted(j.id for j in orphans)
    assert all("no active formation" in a.reason for a in p.stops)


def test_nothing_runs_when_no_formation_is_active() -> None:
    running = [job("h1"), job("h2", "worker")]
    p = plan([], hosts("h1", "h2"), running)
    assert sorted(a.job_id for a in p.stops) == sorted(j.id for j in running)
    assert p.starts == []


def test_a_type_scaled_to_zero_is_stopped() -> None:
    web, worker = job("h1"), job("h2", "worker")
    p = plan([formation({"web": 0, "worker": 1})], hosts("h1", "h2"), [web, worker])
    assert [(a.job_id, a.reason) for a in p.stops] == [(web.id, "type web is scaled to 0")]
    assert p.starts == []


def test_one_off_jobs_are_neither_counted_nor_stopped_but_load_their_host() -> None:
    run = job("h1", "run", app="app1", release="rel1")
    p = plan([formation({"web": 1})], hosts("h1", "h2"), [run])
    assert p.stops == []
    assert placements(p) == ["h2"]  # h1 already carries the one-off job


def test_jobs_are_the_schedulers_when_they_carry_its_meta_mark() -> None:
    def answered(jid: str, type_: str, meta: dict[str, str]) -> Job:
        return Job.from_json(
            {"id": jid, "app_id": "app1", "release_id": "rel1", "type": type_, "state": "up", "meta": meta}
        )

    mark = {"flynn-scheduler.formation": "true"}
    ours = [answered("h1-a", "web", mark), answered("h2-b", "web", mark)]
    not_ours = [answered("h1-c", "web", {}), answered("h2-d", "worker", {"k": "v"})]
    p = plan([formation({"web": 1})], hosts("h1", "h2"), [*ours, *not_ours])
    assert [a.job_id for a in p.stops] == ["h1-a"]  # an extra of ours; a one-off "web" is left alone
    assert p.starts == []
    assert job_config(formation({"web": 1}), "web", "h1-x")["meta"] == mark


# -- lost, unsynced and refusing hosts ---------------------------------------------------------------


def test_jobs_on_a_lost_host_are_replaced_on_the_others_not_stopped() -> None:
    on_lost = [job("h3"), job("h3")]
    p = plan([formation({"web": 3})], hosts("h1", "h2"), [job("h1"), *on_lost])
    assert p.stops == []
    assert placements(p) == ["h2", "h1"]


def test_an_unsynced_host_takes_no_jobs_but_its_known_jobs_count() -> None:
    hs = [*hosts("h1", "h2"), *hosts("h3", synced=False)]
    p = plan([formation({"web": 3})], hs, [job("h3")])
    assert sorted(placements(p)) == ["h1", "h2"]
    p = plan([formation({"web": 1})], hs, [job("h3"), job("h3")])
    assert len(p.stops) == 1  # stopping still works through the host API


def test_a_refused_host_is_skipped_for_the_formation_until_the_refusal_expires() -> None:
    f = formation({"web": 2})
    refused = {("h1", "app1", "rel1"): NOW + 10}
    p = plan([f], hosts("h1", "h2"), [], refused=refused)
    assert placements(p) == ["h2", "h2"]
    p = plan([f], hosts("h1", "h2"), [], refused=refused, now=NOW + 10)
    assert placements(p) == ["h1", "h2"]


def test_a_refusal_only_concerns_its_formation() -> None:
    refused = {("h1", "app1", "rel1"): NOW + 10}
    other = formation({"web": 1}, app="app2")
    p = plan(
        [formation({"web": 1}), other],
        hosts("h1", "h2"),
        [job("h2", app="app2", release="rel1")],
        refused=refused,
    )
    assert [(a.key.app_id, a.host_id) for a in p.starts] == [("app1", "h2")]
    p = plan([other], hosts("h1", "h2"), [job("h2")], refused=refused)
    assert [(a.key.app_id, a.host_id) for a in p.starts] == [("app2", "h1")]


def test_with_every_host_refusing_the_plan_wakes_when_the_first_refusal_expires() -> None:
    refused = {("h1", "app1", "rel1"): NOW + 7, ("h2", "app1", "rel1"): NOW + 4}
    p = plan([formation({"web": 2})], hosts("h1", "h2"), [], refused=refused)
    assert p.starts == []
    assert p.wake_at == NOW + 4
    assert [s.missing for s in p.shortfalls] == [2]
    assert "refused" in p.shortfalls[0].reason


def test_no_hosts_means_a_shortfall_not_an_error() -> None:
    p = plan([formation({"web": 2})], [], [])
    assert p.actions == []
    assert [(s.key, s.missing) for s in p.shortfalls] == [(FormationKey("app1", "rel1", "web"), 2)]


def test_a_counted_type_missing_from_the_release_is_a_shortfall() -> None:
    f = formation({"web": 1, "ghost": 2}, processes={"web": {"args": ["x"]}})
    p = plan([f], hosts("h1"), [])
    assert [a.key.type for a in p.starts] == ["web"]
    assert [(s.key.type, s.missing, s.reason) for s in p.shortfalls] == [
        ("ghost", 2, "type not in the release")
    ]


# -- backoff -----------------------------------------------------------------------------------------


def test_backoff_delays_double_from_one_second_up_to_thirty() -> None:
    assert [delay_after(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, MAX_DELAY, MAX_DELAY]


def test_repeated_crashes_hold_back_starts_of_the_type_with_growing_delays() -> None:
    key = FormationKey("app1", "rel1", "web")
    f = formation({"web": 1})
    b, t = Backoff(), NOW
    waits = []
    for _ in range(8):
        b = b.record_crash(key, up_for=0.5, now=t)
        p = plan([f], hosts("h1"), [], backoff=b, now=t)
        if p.starts:
            waits.append(0.0)
            continue
        assert p.wake_at is not None
        assert [s.reason for s in p.shortfalls] == ["crash backoff"]
        waits.append(p.wake_at - t)
        assert plan([f], hosts("h1"), [], backoff=b, now=p.wake_at - 0.01).starts == []
        assert plan([f], hosts("h1"), [], backoff=b, now=p.wake_at).starts != []
        t = p.wake_at + 2  # the restarted job crashes again 2 s after it was started
    assert waits == [0, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_resets_after_a_job_stayed_up_for_a_minute() -> None:
    key = FormationKey("app1", "rel1", "web")
    b = Backoff()
    for t in (0.0, 1.0, 3.0):
        b = b.record_crash(key, up_for=0.0, now=t)
    assert crashes(b, key) == 3
    # the job restarted at 5 s stayed up for 60 s (as its host measured) before crashing
    b = b.record_crash(key, up_for=60.0, now=66.0)
    assert crashes(b, key) == 1
    assert b.restart_at(key) is None


def test_backoff_also_resets_after_a_quiet_minute_on_the_schedulers_clock() -> None:
    key = FormationKey("app1", "rel1", "web")
    b = Backoff().record_crash(key, up_for=0, now=0).record_crash(key, up_for=0, now=1)
    assert b.restart_at(key) == 2.0
    assert crashes(b.record_crash(key, up_for=0, now=61.9), key) == 3
    assert crashes(b.record_crash(key, up_for=0, now=62.0), key) == 1
    assert b.prune(61.9).get(key) is not None
    assert b.prune(62.0).get(key) is None


def test_backoff_is_per_formation_type() -> None:
    held = FormationKey("app1", "rel1", "web")
    b = Backoff().record_crash(held, up_for=0, now=NOW - 0.5).record_crash(held, up_for=0, now=NOW)
    p = plan([formation({"web": 1, "worker": 1})], hosts("h1"), [], backoff=b)
    assert [a.key.type for a in p.starts] == ["worker"]
    assert p.wake_at == NOW + 1


def test_extras_are_still_stopped_while_the_type_is_held_back() -> None:
    key = FormationKey("app1", "rel1", "web")
    b = Backoff().record_crash(key, up_for=0, now=NOW).record_crash(key, up_for=0, now=NOW)
    p = plan([formation({"web": 1})], hosts("h1", "h2"), [job("h1"), job("h2")], backoff=b)
    assert len(p.stops) == 1


# -- the job config ----------------------------------------------------------------------------------


def test_the_job_config_follows_the_expanded_formation() -> None:
    procs = {
        "web": {
            "args": ["python3", "app.py"],
            "env": {"MODE": "web", "SHARED": "from-process"},
            "service": "myapp-web",
            "check": {"type": "http", "path": "/health", "status": 200},
            "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        }
    }
    env = {"SHARED": "from-release", "DATABASE_URL": "postgres://x", "PORT": "1", "HOME": "/root"}
    f = formation({"web": 1}, processes=procs, env=env, app_name="myapp")
    p = plan([f], hosts("host1"), [])
    (start,) = p.starts
    assert isinstance(start, StartJob)
    assert start.config == {
        "id": "host1-u1",
        "app_id": "app1",
        "app_name": "myapp",
        "release_id": "rel1",
        "type": "web",
        "artifact": {
            "id": "art-rel1",
            "type": "tarball",
            "uri": "http://blobstore.test/slug.tgz",
            "sha256": None,
        },
        "args": ["python3", "app.py"],
        # release env merged with the process env; names the host sets itself are left out
        "env": {"SHARED": "from-process", "DATABASE_URL": "postgres://x", "MODE": "web"},
        "service": "myapp-web",
        "check": {"type": "http", "path": "/health", "status": 200},
        "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        "attach": False,
        "stop_timeout": 10,
        "meta": {"flynn-scheduler.formation": "true"},
    }
    assert job_config(f, "web", "host1-x")["id"] == "host1-x"


def test_a_release_without_artifact_sends_null_and_no_resources() -> None:
    f = formation({"web": 1}, artifact_uri=None)
    config = job_config(f, "web", "h-1")
    assert config["artifact"] is None
    assert "resources" not in config
    assert config["service"] is None
    assert config["check"] is None


@pytest.mark.parametrize(
    "broken",
    [
        {"app": None},
        {"processes": {"web": -1}},
        {"processes": {"web": True}},
        {"release": {"id": "r", "processes": {"web": {"args": []}}}},
        {"release": {"id": "r", "env": {"A": 1}, "processes": {}}},
        {"artifacts": [{"id": "a"}]},
    ],
)
def test_malformed_formations_are_refused_with_a_reason(broken: dict[str, Any]) -> None:
    data = {**expanded("a", "r", {"web": 1}), **broken}
    with pytest.raises(ModelError):
        Formation.from_expanded(data)


def test_reconcile_is_pure() -> None:
    f = [formation({"web": 2})]
    hs = hosts("h1", "h2", "h3")
    jobs = [job("h1"), job("h2", release="old")]
    b = Backoff()
    first = reconcile(f, hs, jobs, b, NOW, new_uuid=uuids())
    again = reconcile(f, hs, jobs, b, NOW, new_uuid=uuids())
    assert first == again
    assert [(type(a), a.host_id) for a in first.actions] == [(StopJob, "h2"), (StartJob, "h2")]
    assert b.records == {}


def test_the_job_config_is_accepted_by_the_hosts_own_parser() -> None:
    from flynn.host.jobs.spec import parse_job

    procs = {
        "web": {
            "args": ["python3", "app.py"],
            "service": "myapp-web",
            "check": {"type": "http", "path": "/", "status": 200},
            "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        },
        "worker": {"args": ["worker"], "env": {"QUEUE": "default"}},
    }
    app, release = "0b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11", "1b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11"
    f = formation({"web": 1, "worker": 1}, app=app, release=release, processes=procs, env={"PORT": "80"})
    for type_ in ("web", "worker"):
        job_id = "host1-2b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11"
        spec = parse_job(job_config(f, type_, job_id), "host1", job_id)
        assert (spec.id, spec.app_id, spec.release_id, spec.type) == (job_id, app, release, type_)
        assert spec.meta == {"flynn-scheduler.formation": "true"}
    assert spec.artifact is not None
    assert spec.artifact.uri == "http://blobstore.test/slug.tgz"
