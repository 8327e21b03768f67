"""cfd.runner: active runs, Stop per session, the sweep of left-over folders."""
from __future__ import annotations

import os
import time

from cfd.runner import Runner


def _age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_sweep_removes_old_left_overs_but_never_an_active_run(tmp_path):
    runner = Runner(tmp_path, ttl_s=60)
    active = runner.open("session-a")
    (active.folder / "result").mkdir()
    _age(active.folder, 3600)           # its folder's mtime is old, the run is not
    stale = tmp_path / "run-20000101-000000-deadbeef"
    stale.mkdir()
    _age(stale, 3600)
    fresh = tmp_path / "run-20990101-000000-cafecafe"
    fresh.mkdir()
    assert runner.sweep() == [stale]
    assert active.folder.is_dir() and fresh.is_dir() and not stale.exists()
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
    assert not runner.runs() and not any(tmp_path.iterdir())


def test_a_run_stopped_by_non_finite_gradients_is_an_expected_failure_with_advice(capfd):
    from cfd.distill import NonFiniteGradient
    from cfd.runner import failure

    problem = failure(NonFiniteGradient("step 6: the gradient was NaN or infinite for 4 steps in a row. "
                                        "Try a lower guidance scale."))
    assert problem.expected and problem.title == "Run stopped"
    assert "lower guidance scale" in problem.message and "Nothing was saved" in problem.message
    assert "Traceback" not in capfd.readouterr().err   # not logged as a bug
