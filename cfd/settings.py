"""The environment variables that configure the app, the batch runner and the
renderer: one reader that checks each value against its range and names the
variable, its range and the fix in its message.

    setting("CFD_MAX_SEEDS")      # → 4, or the checked value of $CFD_MAX_SEEDS
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError
from .machine import default_worker_count


class SettingError(InputError):
    """An environment variable holds a value out of its range."""


@dataclass(frozen=True)
class Setting:
    kind: type               # int | float
    default: float | None    # None: computed (``default_for``)
    lo: float
    hi: float
    what: str


SETTINGS = {
    "CFD_CONCURRENCY": Setting(int, 1, 1, 64, "runs at once in the app (keep it to what the GPU's memory holds)"),
    "CFD_MAX_SEEDS": Setting(int, 4, 1, 64, "most seeds in one Compare"),
    "CFD_QUEUE_SIZE": Setting(int, 32, 1, 100_000, "requests waiting in the app's queue"),
    "CFD_MAX_WORK": Setting(float, 24.0, 0.01, 1e6, "work one app request may ask for, in default runs of its "
                            "backend (steps × views × pixels × runs)"),
    "CFD_RUN_LIMIT_S": Setting(float, 600.0, 1, 86_400, "wall-clock seconds one run of the app may distil before "
                               "it stops and keeps what it has"),
    "CFD_WORKERS": Setting(int, None, 1, 256, "worker processes for the app's CPU runs: a Generate runs in one "
                           "with this many torch threads, a Compare's runs side by side (default: the cores this "
                           "process may use, at most 8; 1: every run in the app's own process)"),
    "CFD_MAX_PER_CLIENT": Setting(int, 2, 1, 10_000, "requests one client address may have queued or running"),
    "CFD_TRUST_FORWARDED": Setting(int, None, 0, 1, "1: a client's address is the first of X-Forwarded-For, as "
                                   "the Space's proxy sets it (default 1 on a Space, else 0: the connection's)"),
    "CFD_EXAMPLE_CACHE": Setting(int, 1, 0, 1, "1: clicking an example shows its result, made once (ahead at "
                                 "start-up for the exact prior's) and kept until the code or a model changes; 0: "
                                 "an example only fills in the inputs"),
    "CFD_BATCH_TIMEOUT_H": Setting(float, 24.0, 0.01, 10_000, "hours a batch process waits for the slowest one"),
    "GRADIO_SERVER_PORT": Setting(int, 7860, 1, 65535, "the app's port"),
}


def default_for(name: str) -> float:
    if name == "CFD_WORKERS":   # the cores this process may use (affinity, cgroup quota), at most 8
        return default_worker_count()
    if name == "CFD_TRUST_FORWARDED":
        return int(bool(os.environ.get("SPACE_ID")))
    return SETTINGS[name].default


def setting(name: str) -> float:
    """The value of environment variable ``name`` (its default when unset or
    empty), checked against its range; SettingError with the fix otherwise."""
    spec = SETTINGS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return spec.kind(default_for(name))
    kind = "an integer" if spec.kind is int else "a number"
    valid = f"{name} ({spec.what}) must be {kind} in {spec.lo:g}–{spec.hi:g}"
    fix = f"Fix: unset it (default {default_for(name):g}) or set a value in range."
    try:
        value = spec.kind(text)
    except ValueError:
        raise SettingError(f"{valid}; got {text!r}. {fix}") from None
    if not spec.lo <= value <= spec.hi:
        raise SettingError(f"{valid}; got {value:g}. {fix}")
    return value


def check_settings() -> None:
    """Every setting checked at once: one SettingError naming each bad one and its fix."""
    problems = []
    for name in SETTINGS:
        try:
            setting(name)
        except SettingError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingError("\n".join(problems))
