"""cfd.workers: a supervised pool (a worker that dies, hangs or breaks the
protocol fails its job with the reason and is replaced; Stop ends a
side-by-side Compare at once; no worker outlives the pool), the worker's own
checks before a job starts, and the default worker count. Fake workers (tiny
Python scripts) stand in for ``python -m cfd.workers``; tests/test_runner.py
runs the real one."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import replace

import pytest

from cfd.errors import WorkerFailed, failure
from cfd.machine import cpu_quota, default_worker_count, usable_cores
from cfd.workers import WORKER_DIED, WORKER_HUNG, WORKER_PROTOCOL, WORKER_START, WorkerPool, serve

# A fake worker: says it is ready, then per job does what the job's values say
# ("mode", else its first argument): ok, die, hang, junk, or steps-then-hang.
FAKE = r"""
import json, os, sys, time
default = sys.argv[1]
print(json.dumps({"event": "ready"}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    mode = job["values"].get("mode", default)
    if mode == "die":
        print(json.dumps({"job": job["job"], "event": "step", "step": 1, "steps": 4, "t": 900, "n_splats": 8}),
              flush=True)
        os._exit(3)
    if mode == "hang":
        time.sleep(3600)
    if mode == "junk":
        print("[1, 2]", flush=True)
        time.sleep(3600)
    if mode == "steps-then-hang":   # one step, then stuck inside the next one (never looks at the stop file)
        print(json.dumps({"job": job["job"], "event": "step", "step": 1, "steps": 4, "t": 900, "n_splats": 8}),
              flush=True)
        time.sleep(3600)
    print(json.dumps({"job": job["job"], "event": "done", "result": {"pid": os.getpid()}}), flush=True)
"""


def fake_pool(size: int = 1, mode: str = "ok", **kwargs) -> WorkerPool:
    kwargs.setdefault("answer_timeout_s", 30)
    return WorkerPool(size, command=[sys.executable, "-c", FAKE, mode], **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Jobs:
    """Submits jobs and collects their events."""

    def __init__(self, pool: WorkerPool, folder):
        self.pool, self.folder = pool, folder
        self.events: dict[int, list[dict]] = {}
        self.finished: dict[int, threading.Event] = {}

    def submit(self, i: int, mode: str | None = None, **job) -> None:
        self.events[i], self.finished[i] = [], threading.Event()

        def on_event(event):
            self.events[i].append(event)
            if event["event"] in ("done", "error"):
                self.finished[i].set()

        values = {} if mode is None else {"mode": mode}
        self.pool.submit({"job": i, "values": values, "gif": str(self.folder / f"{i}.gif"),
                          "stop_file": str(self.folder / "stop"), **job}, on_event)

    def last(self, i: int, timeout: float = 20) -> dict:
        assert self.finished[i].wait(timeout), f"job {i} got no answer in {timeout} s"
        return self.events[i][-1]


@contextlib.contextmanager
def one_ready_worker(tmp_path, mode: str = "ok", **kwargs):
    """(pool, jobs, the worker's pid): a ``fake_pool`` of one worker, started and
    ready; closed on leaving."""
    pool = fake_pool(1, mode, **kwargs)
    try:
        assert pool.wait_ready(20)
        [pid] = pool.pids
        yield pool, Jobs(pool, tmp_path), pid
    finally:
        pool.close()


def test_a_worker_that_dies_fails_its_job_and_the_next_job_gets_a_new_worker(tmp_path):
    with one_ready_worker(tmp_path) as (pool, jobs, first):
        jobs.submit(0, "die")
        jobs.submit(1, "ok")
        error = jobs.last(0)
        assert error["event"] == "error" and error["type"] == WORKER_DIED and error["job"] == 0
        assert f"worker process {first} ended during job 0 (exit status 3)" in error["message"]
        assert [e["event"] for e in jobs.events[0]] == ["step", "error"]   # its steps came through first
        done = jobs.last(1)
        assert done["event"] == "done" and done["result"]["pid"] != first
        assert not alive(first) and pool.pids == [done["result"]["pid"]]


def test_a_worker_that_hangs_is_killed_within_the_answer_timeout_and_replaced(tmp_path):
    with one_ready_worker(tmp_path, answer_timeout_s=1.0) as (pool, jobs, first):
        started = time.monotonic()
        jobs.submit(0, "hang")
        error = jobs.last(0)
        assert 1.0 <= time.monotonic() - started < 5
        assert error["type"] == WORKER_HUNG and "sent nothing for 1 s during job 0: killed" in error["message"]
        assert not alive(first) and first not in pool.pids
        jobs.submit(1)
        assert jobs.last(1)["result"]["pid"] != first


def test_a_line_that_is_not_an_event_object_is_a_protocol_error_the_worker_killed_and_reaped(tmp_path):
    with one_ready_worker(tmp_path) as (pool, jobs, first):
        jobs.submit(0, "junk")
        error = jobs.last(0)
        assert error["type"] == WORKER_PROTOCOL and "'[1, 2]'" in error["message"]
        assert not alive(first) and pool.pids == []          # reaped: not even a zombie is left
        jobs.submit(1)
        assert jobs.last(1)["event"] == "done"


def test_a_worker_that_cannot_start_fails_the_job_and_the_pool_thread_lives_on(tmp_path):
    pool = WorkerPool(1, command=[str(tmp_path / "no-such-worker")])
    jobs = Jobs(pool, tmp_path)
    try:
        jobs.submit(0)
        error = jobs.last(0)
        assert error["type"] == WORKER_START and "could not be started" in error["message"]
        assert all(t.is_alive() for t in pool._threads)
        pool.command = [sys.executable, "-c", FAKE, "ok"]     # fixed: the same thread runs the next job
        jobs.submit(1)
        assert jobs.last(1)["event"] == "done"
        pool.command = [sys.executable, "-c", "import sys; sys.exit(5)"]   # dies before its ready line
        jobs.submit(2, "die")                                 # its worker dies; the next one cannot start
        assert jobs.last(2)["type"] == WORKER_DIED
        jobs.submit(3)
        error = jobs.last(3)
        assert error["type"] == WORKER_START and "ended before it was ready (exit status 5)" in error["message"]
    finally:
        pool.close()


def test_close_kills_every_worker_and_answers_the_jobs_in_flight_and_queued(tmp_path):
    pool = fake_pool(2, "hang")
    jobs = Jobs(pool, tmp_path)
    assert pool.wait_ready(20)
    pids = pool.pids
    assert len(pids) == 2
    for i in range(3):
        jobs.submit(i)
    time.sleep(0.3)
    pool.close()
    assert not any(alive(pid) for pid in pids) and pool.pids == []
    for i in range(3):
        error = jobs.last(i, timeout=5)
        assert error["event"] == "error" and "closed" in error["message"]
    late = []
    pool.submit({"job": 9, "values": {}, "gif": "", "stop_file": ""}, late.append)   # answered at once
    assert late[0]["event"] == "error" and "closed" in late[0]["message"]


def test_workers_start_only_as_jobs_need_them(tmp_path):
    pool = fake_pool(4)
    jobs = Jobs(pool, tmp_path)
    try:
        assert pool.pids == [] and not pool._threads          # nothing at construction
        jobs.submit(0)
        assert jobs.last(0)["event"] == "done"
        assert len(pool._threads) == 1 and len(pool.pids) == 1
    finally:
        pool.close()


def test_a_stopped_or_late_job_is_answered_before_it_starts(tmp_path):
    """In the pool (no worker is even asked) and in the worker itself (nothing
    parsed or prepared: these values would be refused)."""
    with one_ready_worker(tmp_path, "hang") as (pool, jobs, pid):
        (tmp_path / "stop").touch()
        jobs.submit(0)
        assert jobs.last(0, timeout=2) == {"job": 0, "event": "done", "result": None,
                                            "reason": "stopped before it started"}
        (tmp_path / "stop").unlink()
        jobs.submit(1, deadline=time.time() - 1)
        assert jobs.last(1, timeout=2)["reason"] == "its deadline passed before it started"
        assert pool.pids == [pid]                             # the worker was left alone

    sent = []
    (tmp_path / "stop").touch()
    refused = {"prompt": "a giraffe", "steps": -3}
    serve([json.dumps({"job": 0, "values": refused, "gif": "x.gif", "stop_file": str(tmp_path / "stop")}),
           json.dumps({"job": 1, "values": refused, "gif": "x.gif", "stop_file": str(tmp_path / "none"),
                       "deadline": time.time() - 1, "time_limit_s": 60})], sent.append)
    assert sent == [{"job": 0, "event": "done", "result": None, "reason": "stopped before it started"},
                    {"job": 1, "event": "done", "result": None, "reason": "its deadline passed before it started"}]


def test_a_worker_stuck_after_stop_is_killed_after_its_grace(tmp_path):
    with one_ready_worker(tmp_path, "steps-then-hang", stop_grace_s=0.5) as (pool, jobs, pid):
        jobs.submit(0)
        deadline = time.monotonic() + 10
        while not jobs.events[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        (tmp_path / "stop").touch()
        stopped = time.monotonic()
        done = jobs.last(0, timeout=5)
        assert time.monotonic() - stopped < 1.5
        assert done["event"] == "done" and done["result"] is None and "was killed" in done["reason"]
        assert not alive(pid) and pool.pids == []


def _runner_with_fake_workers(tmp_path, mode: str):
    from cfd.request import parse_request
    from cfd.runner import Runner

    runner = Runner(tmp_path, workers=2)
    runner.workers = fake_pool(2, mode)
    base = parse_request(prompt="a cactus", seed=3, steps=10, res=16, views=1)
    return runner, [replace(base, seed=s) for s in range(3, 8)]


def test_stop_ends_a_side_by_side_compare_within_two_seconds_even_with_hung_workers(tmp_path):
    runner, jobs = _runner_with_fake_workers(tmp_path, "steps-then-hang")
    run = runner.open("s")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("items", runner._side_by_side(run, jobs, None)))
    try:
        thread.start()
        first = run.events.get(timeout=20)                    # a step: both workers are busy, 3 jobs queued
        assert first.jobs == 5
        run.cancel()
        stopped = time.monotonic()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - stopped < 2.5
        assert out["items"] is None
    finally:
        runner.workers.close()
        run.finish()


def test_a_dead_worker_fails_a_side_by_side_compare_with_the_reason(tmp_path):
    runner, jobs = _runner_with_fake_workers(tmp_path, "die")
    run = runner.open("s")
    try:
        with pytest.raises(WorkerFailed, match=r"worker process .* ended during job .*\(exit status") as info:
            runner._side_by_side(run, jobs[:2], None)
        problem = failure(info.value)   # told to people as the machine's trouble, not a bug or their input
        assert problem.title == "Worker failed" and "try again" in problem.message and "incident" not in problem.message
    finally:
        runner.workers.close()
        run.finish()


def test_default_worker_count_is_the_usable_cores_under_the_cgroup_quota(tmp_path):
    nowhere = tmp_path / "no-cgroup-file"
    cores = len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path, nowhere) is None and usable_cores(tmp_path, nowhere) == cores
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, nowhere) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")    # 1.5 cores: 2 workers
    assert cpu_quota(tmp_path, nowhere) == 2 and usable_cores(tmp_path, nowhere) == min(cores, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert default_worker_count(8, tmp_path, nowhere) == 1
    # this process's own cgroup (from /proc/self/cgroup) and its ancestors: the smallest quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "app" / "web").mkdir(parents=True)
    (tmp_path / "app" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "app" / "web" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "self").write_text("0::/app/web\n")
    assert cpu_quota(tmp_path, tmp_path / "self") == 3
    # cgroup v1
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path, tmp_path / "self") == 2
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path, tmp_path / "self") == 3
    # the cap
    many = tmp_path / "many"
    many.mkdir()
    (many / "cpu.max").write_text("6400000 100000\n")
    assert default_worker_count(8, many, nowhere) == min(8, cores)
    assert default_worker_count(1, many, nowhere) == 1
