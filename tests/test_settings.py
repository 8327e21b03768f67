"""cfd.settings: environment variables read once, checked, named in the message."""
from __future__ import annotations

import os

import pytest

from cfd import params
from cfd.settings import SETTINGS, SettingError, setting
from cfd.machine import default_worker_count


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_unset_or_empty_gives_the_default(monkeypatch, name):
    monkeypatch.delenv(name, raising=False)
    unset = setting(name)
    monkeypatch.setenv(name, " ")
    assert setting(name) == unset and type(unset) is SETTINGS[name].kind
    if name == "CFD_WORKERS":   # the cores this process may use (affinity, cgroup quota), capped
        assert unset == default_worker_count() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("name, value, problem", [
    ("CFD_MAX_SEEDS", "0", "got 0"),                 # it used to refuse every Compare silently
    ("CFD_CONCURRENCY", "two", "got 'two'"),         # it used to crash the app's import with a traceback
    ("CFD_QUEUE_SIZE", "1.5", "got '1.5'"),
    ("CFD_BATCH_TIMEOUT_H", "-1", "got -1"),
    ("GRADIO_SERVER_PORT", "70000", "got 70000"),
])
def test_a_bad_value_names_the_variable_its_range_and_the_fix(monkeypatch, name, value, problem):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as info:
        setting(name)
    message = str(info.value)
    assert message.startswith(name) and problem in message and "Fix: unset it" in message, message


def test_max_seeds_reads_the_checked_setting(monkeypatch):
    monkeypatch.setenv("CFD_MAX_SEEDS", "6")
    assert params.max_seeds() == 6
    monkeypatch.setenv("CFD_MAX_SEEDS", "0")
    with pytest.raises(SettingError, match="CFD_MAX_SEEDS"):
        params.max_seeds()


def test_app_py_with_a_bad_setting_says_so_in_one_message_and_exits_2():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "app.py"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CFD_CONCURRENCY": "lots", "CFD_MAX_SEEDS": "0"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("app.py: CFD_CONCURRENCY") and "got 'lots'" in lines[0] and "Fix:" in lines[0]
    assert lines[1].startswith("CFD_MAX_SEEDS") and len(lines) == 2   # every bad setting, one line each
