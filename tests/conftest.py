"""Shared fixtures: tiny offline SD folders; the ``slow`` marker and ``--runslow``."""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from random_sd import build_random_sd


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (deselected by default)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, deselected unless --runslow is given")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture(scope="session", autouse=True)
def cpu_kernel_built():
    """The C++ compositor built before any test renders (as the app's start-up
    and ``make`` build it), so every render of the suite uses one compositor."""
    from cfd.render import build_cpu_kernel

    build_cpu_kernel()


@pytest.fixture(scope="session")
def random_sd_model(tmp_path_factory) -> Path:
    """Folder of a small random-weight ε-prediction SD pipeline (diffusers layout)."""
    return build_random_sd(tmp_path_factory.mktemp("random_sd_eps"), prediction_type="epsilon")


@pytest.fixture(scope="session")
def random_sd_model_v(tmp_path_factory) -> Path:
    """Folder of the same tiny SD configured for v-prediction."""
    return build_random_sd(tmp_path_factory.mktemp("random_sd_v"), prediction_type="v_prediction")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(runs: Path, **env):
    """(app module, url, demo): the app on 127.0.0.1 at a free port with its own
    launch settings (app.launch_kwargs: CSS, served paths), its per-request
    folders under ``runs``, no SD weights reachable (offline, a missing folder),
    examples that only fill in the inputs; ``env``: more environment variables
    (e.g. CFD_CONCURRENCY="2", CFD_EXAMPLE_CACHE="1")."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CFD_RUNS_DIR", str(runs))
    mp.setenv("CFD_EXAMPLE_CACHE", "0")
    mp.setenv("CFD_MODEL", str(runs.parent / "no-sd-weights-here"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    for key, value in env.items():
        mp.setenv(key, value)
    import app

    demo = app.create_app()
    _, url, _ = demo.launch(**{**app.launch_kwargs(), "server_name": "127.0.0.1", "server_port": free_port(),
                               "prevent_thread_lock": True, "quiet": True})
    try:
        yield app, url, demo
    finally:
        demo.close()
        app.RUNNER.workers.close()
        app.RUNNER = None      # the next served app starts its own engine (its own runs folder)
        mp.undo()
