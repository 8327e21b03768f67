"""cfd.runner: active runs, Stop per session, the sweep of left-over folders."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cfd.errors import InputError
from cfd.runner import RUNS_FOLDER, RUNS_MARKER, Runner


def _age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_sweep_removes_old_left_overs_but_never_an_active_run(tmp_path):
    runner = Runner(tmp_path, ttl_s=60)
    active = runner.open("session-a")
    (active.folder / "result").mkdir()
    _age(active.folder, 3600)           # its folder's mtime is old, the run is not
    stale = runner.root / "run-20000101-000000-deadbeef"
    stale.mkdir()
    _age(stale, 3600)
    fresh = runner.root / "run-20990101-000000-cafecafe"
    fresh.mkdir()
    theirs = tmp_path / "run-20000101-000000-0ther0ne"   # beside the runner's own folder: never swept
    theirs.mkdir()
    _age(theirs, 3600)
    assert runner.sweep() == [stale]
    assert active.folder.is_dir() and fresh.is_dir() and not stale.exists() and theirs.is_dir()
    active.finish()
    assert not active.folder.exists() and not runner.runs()


def test_stop_reaches_only_its_own_session(tmp_path):
    runner = Runner(tmp_path)
    a1, a2, b = runner.open("a"), runner.open("a"), runner.open("b")
    anon1, anon2 = runner.open(None), runner.open(None)
    assert anon1.key != anon2.key                         # no shared "anonymous" session
    assert runner.stop(None) == 0 and not anon1.stop.is_set() and not anon2.stop.is_set()
    assert runner.stop("a") == 2 and a1.stop.is_set() and a2.stop.is_set()
    assert not b.stop.is_set()
    for run in (a1, a2, b, anon1, anon2):
        run.finish()
    assert not runner.runs() and [p.name for p in runner.root.iterdir()] == [RUNS_MARKER]


def test_the_runner_works_only_in_a_marked_folder_of_its_own(tmp_path):
    shared = tmp_path / "shared"
    (shared / RUNS_FOLDER).mkdir(parents=True)          # someone else's folder of that name
    with pytest.raises(InputError, match="was not made by cfd"):
        Runner(shared)
    runner = Runner(tmp_path / "mine")
    assert runner.root == (tmp_path / "mine" / RUNS_FOLDER).resolve() and (runner.root / RUNS_MARKER).is_file()
    assert Runner(tmp_path / "mine").root == runner.root   # ours: reused


def test_a_run_stopped_by_non_finite_gradients_is_an_expected_failure_with_advice(capfd):
    from cfd.distill import NonFiniteGradient
    from cfd.runner import failure

    problem = failure(NonFiniteGradient("step 6: the gradient was NaN or infinite for 4 steps in a row. "
                                        "Try a lower guidance scale."))
    assert problem.expected and problem.title == "Run stopped"
    assert "lower guidance scale" in problem.message and "Nothing was saved" in problem.message
    assert "Traceback" not in capfd.readouterr().err   # not logged as a bug


def test_an_internal_error_is_logged_and_told_apart_from_bad_input(capfd):
    from cfd.errors import InputError, RequestError
    from cfd.runner import failure

    try:
        raise ValueError("timestep 1200 is out of range")   # ours, not the user's
    except ValueError as exc:
        bug = failure(exc)
    assert not bug.expected and bug.title == "Internal error" and bug.exit_code == 1
    incident = bug.message.split("incident ")[1][:8]
    assert "timestep 1200" not in bug.message and "timestep 1200" in bug.detail   # internals stay in the log
    log = capfd.readouterr().err
    assert f"internal error {incident}" in log and "Traceback" in log and "timestep 1200" in log
    refusal = failure(InputError("scenes: a.ply: no such file"))
    zebra = failure(RequestError("prompt: no object named 'a zebra that ran out of memory'"))
    assert zebra.title == "Invalid input" and zebra.exit_code == 2   # classified by type, not by its words
    assert failure(RuntimeError("DefaultCPUAllocator: can't allocate memory")).title == "Out of memory"
    assert failure(MemoryError()).title == "Out of memory"
    assert refusal.expected and refusal.title == "Invalid input" and refusal.exit_code == 2
    assert "Traceback" not in capfd.readouterr().err


def _compare(runner: Runner, base, n_seeds: int) -> tuple[list, list]:
    from cfd.backends import prepare
    from cfd.runner import Item, Step

    events = list(runner.compare(base, ["cfd", "sds"], n_seeds, prepare(base), session="s"))
    items = [e for e in events if isinstance(e, Item)]
    return sorted(items, key=lambda it: (it.request.method, it.request.seed)), [e for e in events if isinstance(e, Step)]


def test_compare_side_by_side_in_worker_processes_gives_each_run_exactly_as_alone(tmp_path):
    """Two worker processes run a comparison's runs at once; each run's scene is
    bit for bit the scene the same request gives in the app's own process."""
    from cfd.request import parse_request

    base = parse_request(prompt="a cactus", seed=3, steps=12, res=16, views=2)
    alone, _ = _compare(Runner(tmp_path / "alone", workers=1), base, 2)
    pool = Runner(tmp_path / "pool", workers=2)
    try:
        side, steps = _compare(pool, base, 2)
    finally:
        pool.workers.close()
    assert len(alone) == len(side) == 4
    assert [it.fingerprint for it in side] == [it.fingerprint for it in alone]
    assert [it.near for it in side] == [it.near for it in alone]
    assert all(it.gif.name.endswith(".gif") for it in side)
    fractions = [s.fraction for s in steps]
    assert fractions[-1] == (4 * 12, 4 * 12) and len(steps) == 4 * 12   # every step of every run, counted once


@pytest.mark.parametrize("workers", [1, 2], ids=["in-turn", "side-by-side"])
def test_one_time_limit_bounds_a_whole_comparison_and_keeps_what_finished(tmp_path, workers):
    """CFD_RUN_LIMIT_S is one deadline for every run of a Compare (it was per
    run: 8 runs could hold the slot 8 × the limit); the runs finished or
    stopped by it are kept, the others never start."""
    from cfd.backends import prepare
    from cfd.request import parse_request
    from cfd.runner import Compared, Item

    base = parse_request(prompt="a cactus", seed=3, steps=3000, res=16, views=1)
    runner = Runner(tmp_path, workers=workers, time_limit_s=4.0)
    try:
        if workers > 1:   # warmed up first: the limit is on the runs, not on the workers' start
            runner.workers.start(base.values())
            assert runner.workers.wait_ready(120)
        t0 = time.monotonic()
        events = list(runner.compare(base, ["cfd", "sds"], 4, prepare(base), session="s"))
        seconds = time.monotonic() - t0
    finally:
        runner.workers.close()
    items = [e for e in events if isinstance(e, Item)]
    done = events[-1]
    assert isinstance(done, Compared) and done.runs == 8 and done.done == len(items) == workers
    assert all(it.limited_at is not None and it.limited_at < 3000 for it in items)   # stopped by the limit, kept
    assert "the time limit ended the comparison" in done.status and seconds < 4.0 + 20, seconds


def test_a_failing_worker_job_comes_back_as_its_own_kind_of_error(tmp_path):
    """An error in a worker process is raised in the app's process as the same
    kind of exception (here a refused prompt: a user error, not a bug)."""
    import threading

    from cfd.request import RequestError, parse_request
    from cfd.runner import _raised, failure
    from cfd.workers import WorkerPool

    pool = WorkerPool(1)
    values = {**parse_request(prompt="a cactus", steps=10, res=16, views=1).values(), "prompt": "a giraffe"}
    events, finished = [], threading.Event()

    def on_event(event):
        events.append(event)
        if event["event"] in ("done", "error"):
            finished.set()

    pool.submit({"job": 0, "values": values, "gif": str(tmp_path / "x.gif"), "stop_file": str(tmp_path / "stop")},
                on_event)
    try:
        assert finished.wait(120)
    finally:
        pool.close()
    error = _raised(events[-1])
    assert isinstance(error, RequestError) and "giraffe" in str(error)
    assert failure(error).expected and failure(error).title == "Invalid input"


def test_admission_refuses_work_over_the_budget_and_a_second_request_per_session(tmp_path):
    from cfd.request import parse_request, work_units
    from cfd.runner import SessionBusy

    runner = Runner(tmp_path, max_work=24, max_per_client=100)
    default, big = parse_request(), parse_request(steps=3000, views=8, res=128)
    assert work_units(default) == 1 and work_units(default, runs=8) == 8 and work_units(big) == 120
    with pytest.raises(InputError, match=r"asks for 120× the work of a default run .* allows 24× per request"):
        runner.admit(big, 1, "a")
    with pytest.raises(InputError, match=r"asks for 40×"):
        runner.admit(default, 40, "a")
    first = runner.admit(default, 8, "a")                # a default comparison
    with pytest.raises(SessionBusy, match="already has a request queued or running"):
        runner.admit(default, 1, "a")
    runner.admit(default, 1, "b")                        # another session is not held up
    runner.admit(default, 1, None)                       # nor are requests without a session
    runner.release(first)
    second = runner.admit(default, 1, "a")
    runner.stop("a")                                     # Stop frees the place too
    third = runner.admit(default, 1, "a")
    runner.release(second)                               # the stopped request's late release …
    with pytest.raises(SessionBusy):                     # … frees nothing of the next one's
        runner.admit(default, 1, "a")
    assert runner.claim("a") is third and runner.claim("a") is None   # its handler takes it, once
    runner.release(third)
    runner.admit(default, 1, "a")


def test_admission_limits_requests_per_client_address(tmp_path):
    from cfd.request import parse_request
    from cfd.runner import ClientBusy

    runner, default = Runner(tmp_path, max_per_client=2), parse_request()
    tickets = [runner.admit(default, 1, f"session-{k}", "10.0.0.7") for k in range(2)]
    with pytest.raises(ClientBusy, match="your address already has 2 request"):   # new session hashes do not help
        runner.admit(default, 1, "session-2", "10.0.0.7")
    runner.admit(default, 1, "session-3", "10.0.0.8")   # another address is not held up
    runner.release(tickets[0])
    runner.admit(default, 1, "session-2", "10.0.0.7")


def test_a_place_whose_request_never_started_is_freed_sooner_than_a_running_ones(tmp_path):
    from cfd.request import parse_request
    from cfd.runner import QUEUED_TTL_S, SessionBusy

    runner, default = Runner(tmp_path), parse_request()
    queued, running = runner.admit(default, 1, "left-the-queue"), runner.admit(default, 1, "running")
    assert runner.claim("running") is running
    queued.since -= QUEUED_TTL_S + 1    # its client left while it waited: gradio dropped it unseen
    running.since -= QUEUED_TTL_S + 1   # a long run keeps its place
    runner.admit(default, 1, "left-the-queue")
    with pytest.raises(SessionBusy):
        runner.admit(default, 1, "running")


def test_the_budget_counts_the_splats_a_run_may_grow_to_and_the_objects_it_weighs(tmp_path):
    from cfd.backends import objects_factor, objects_weighed
    from cfd.request import parse_request, splat_ceiling, work_units

    default = parse_request()
    dense = parse_request(steps=20, densify_every=1)     # grows 2 000 → up to 50 000 splats in 10 rounds
    assert splat_ceiling(default.config()) == 2000 and splat_ceiling(dense.config()) == 50_000
    assert splat_ceiling(parse_request(steps=300, densify_every=100).config()) == 4000   # one round: at most ×2
    assert work_units(dense) == pytest.approx(20 / 200 * 25)   # was counted as 0.1 default runs
    cactus, cactus_cfg = parse_request(prompt="a cactus"), parse_request(prompt="a cactus", guidance_scale=3)
    assert objects_weighed(cactus) == 12 and objects_weighed(cactus_cfg) == objects_weighed(parse_request(
        guidance_scale=2)) == 96   # CFG ≠ 1 weighs every object (ε_u)
    assert objects_factor(cactus) < 1 and objects_factor(cactus_cfg) == 96 / objects_weighed(default)
    runner = Runner(tmp_path, max_work=24)
    with pytest.raises(InputError, match=r"up to 50000 splats.*densify_every"):
        runner.admit(parse_request(steps=200, densify_every=1), 1, "a")
    with pytest.raises(InputError, match=r"2× the objects weighed per step.*CFG 1"):
        runner.admit(parse_request(steps=1000, guidance_scale=3), 4, "b")   # 4 runs × 5 × 2 = 40 > 24
    runner.admit(parse_request(steps=1000), 4, "c")                          # the same at CFG 1: 20


def test_a_finished_run_hands_its_freed_memory_back(tmp_path, monkeypatch):
    """glibc keeps a run's freed heap in its arenas, so a server's RSS would ratchet
    up run after run: a run's clean-up calls ``machine.return_free_memory``."""
    calls = []
    monkeypatch.setattr("cfd.runner.return_free_memory", lambda: calls.append(1))
    run = Runner(tmp_path).open("s")
    run.start(lambda run: sum(range(10)))
    list(run.stream())
    run.thread.join()   # finished: the clean-up runs at once, not in the background
    run.finish()
    assert calls == [1] and not run.folder.exists()


def _generate(runner: Runner, request, stop_at: int | None = None) -> tuple[list, bytes | None]:
    """(every event of one generation, Ticks left out; its scene.ply's bytes):
    Stop once a step event reaches ``stop_at``. The files a Picture or Artefact
    names exist when it comes."""
    from cfd.backends import prepare
    from cfd.runner import Artefact, Done, Picture, Step, Tick

    events, scene = [], None
    for event in runner.generate(request, prepare(request), session="s"):
        if isinstance(event, Done):
            scene = event.files["scene_ply"].read_bytes()
        if isinstance(event, (Picture, Artefact)):
            assert Path(getattr(event, "viewer", getattr(event, "path", None))).is_file()
        if stop_at is not None and isinstance(event, Step) and event.step >= stop_at:
            runner.stop("s")
        if not isinstance(event, Tick):
            events.append(event)
    return events, scene


def test_a_generation_in_a_worker_process_is_bit_for_bit_the_one_in_this_process(tmp_path):
    """Generate runs in a worker (its own interpreter, a torch thread per worker)
    and gives the same scene as in the app's process; the picture comes as soon
    as the loop ends, each other file as it is written, then Done."""
    from cfd.request import parse_request
    from cfd.runner import Artefact, Done, Picture, Step

    request = parse_request(prompt="a cactus", seed=3, steps=12, res=16, views=2)
    scenes = {}
    for workers in (1, 2):
        runner = Runner(tmp_path / f"workers{workers}", workers=workers)
        try:
            events, scenes[workers] = _generate(runner, request)
        finally:
            runner.workers.close()
        kinds = [type(e).__name__ for e in events if not isinstance(e, Step) and type(e).__name__ != "Stage"]
        assert kinds[0] == "Picture" and kinds[-1] == "Done" and sorted(kinds[1:-1]) == ["Artefact"] * 3, kinds
        picture, done = events[[type(e) for e in events].index(Picture)], events[-1]
        assert isinstance(done, Done) and picture.summary["n_splats"] == done.summary["n_splats"]
        assert picture.image.shape == done.image.shape == (256, 256, 3)
        assert {e.key for e in events if isinstance(e, Artefact)} == {"render_mp4", "noise_mp4", "glb"}
        assert any(isinstance(e, Step) and e.preview is not None for e in events)   # the live previews
    assert scenes[1] == scenes[2]


def test_stop_reaches_a_generation_in_a_worker_process(tmp_path):
    from cfd.request import parse_request
    from cfd.runner import Cancelled

    runner = Runner(tmp_path, workers=2)
    try:
        events, _ = _generate(runner, parse_request(prompt="a cactus", steps=400, res=16, views=2), stop_at=5)
    finally:
        runner.workers.close()
    assert isinstance(events[-1], Cancelled) and 5 <= events[-1].steps_done < 400
    end = time.monotonic() + 30
    while list((tmp_path / RUNS_FOLDER).glob("run-*")) and time.monotonic() < end:   # removed in the background
        time.sleep(0.1)
    assert not list((tmp_path / RUNS_FOLDER).glob("run-*"))
