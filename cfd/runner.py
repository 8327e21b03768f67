"""Long runs in worker threads, owned by one ``Runner``: each run's temp folder,
Stop per session, and the sweep of folders left behind. The app drives it; no
gradio here.

    runner = Runner()                                   # root: $CFD_RUNS_DIR or <tmp>/cfd-app
    for event in runner.generate(request, guidance, session="abc"):
        ...   # Step, Stage, Tick (heartbeat), then Done or Cancelled; Failure is raised
    runner.stop("abc")                                  # stops that session's runs only

A run's folder ``run-<time>-<id>`` lives under the root until the run's stream
is closed (after its last event was consumed, or when the consumer stops
iterating on cancel); the sweep removes folders older than ``ttl_s`` that no
active run owns. A run without a session id gets a key of its own, so Stop
never reaches another client's run.
"""
from __future__ import annotations

import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .distill import NonFiniteGradient
from .export import to_uint8
from .request import BACKEND_NAMES, RES_RANGE, Request, RequestError
from .guidance.base import GuidanceUnavailable

RUN_TTL_S = 3600           # folders older than this that no active run owns are swept
COMPARE_FRAMES, COMPARE_RES = 24, 128   # each compared seed's orbit loop (GIF)
RESULT_PREVIEW_RES = 256


# ------------------------------------------------------------------ events

@dataclass
class Step:
    """After a distillation step; ``job``/``jobs`` count the runs of a comparison."""

    step: int
    steps: int
    t: int
    n_splats: int
    preview: np.ndarray | None = None     # uint8 [H,W,3] every preview_every steps
    job: int = 0
    jobs: int = 1

    @property
    def fraction(self) -> tuple[int, int]:
        """(done, total) steps over every job."""
        return self.job * self.steps + self.step, self.jobs * self.steps


@dataclass
class Stage:
    """Export progress: stage in render_video, noise_video, glb."""

    name: str
    done: int
    total: int

    LABELS = {"render_video": "Rendering the orbit video", "noise_video": "Rendering the noise video",
              "glb": "Meshing the GLB"}

    @property
    def label(self) -> str:
        return self.LABELS.get(self.name, self.name)


@dataclass
class Tick:
    """Nothing new (a heartbeat, so a consumer can notice a cancel promptly)."""


@dataclass
class Item:
    """One finished run of a seed comparison."""

    request: Request
    gif: Path                 # orbit loop
    near: dict | None         # nearest reference (exact prior): nearest, nearest_psnr, psnr
    seconds: float
    n_splats: int

    @property
    def caption(self) -> str:
        return caption(self.request, self.near)


def caption(request: Request, near: dict | None) -> str:
    """Short, so a gallery tile shows it whole: "cfd · seed 3 · rocket 27.1 dB"
    (``near``: a dict with the nearest object and its PSNR, e.g. run.json's summary)."""
    if near and "nearest" in near:
        return f"{request.label()} · {near['nearest']} {near['nearest_psnr']:.1f} dB"
    return request.label()


@dataclass
class Done:
    """A finished generation: files (key → path, in the run's folder until the
    stream is closed), the run summary (run.json) and a final render."""

    request: Request
    files: dict[str, Path]
    summary: dict
    image: np.ndarray

    @property
    def download_keys(self) -> list[str]:
        """The files offered for download, in order (viewer.ply is the viewer's copy)."""
        return [k for k in ("scene_ply", "glb", "render_mp4", "noise_mp4", "run_json") if k in self.files]

    @property
    def downloads(self) -> list[str]:
        return [str(self.files[k]) for k in self.download_keys]

    @property
    def status(self) -> str:
        s = self.summary
        near = (f" · nearest object: **{s['nearest']}** ({s['nearest_psnr']:.1f} dB at {s['psnr_res']} px)"
                if "nearest" in s else "")
        return f"**Done** in {s['timings_s']['total']:.1f} s · {self.request.label()} · {s['n_splats']} splats{near}"

    @property
    def caption(self) -> str:
        return caption(self.request, self.summary)


@dataclass
class Cancelled:
    steps_done: int
    steps: int

    @property
    def status(self) -> str:
        return (f"**Cancelled** after {self.steps_done}/{self.steps} steps — its temp files were removed; "
                "the last finished result stays.")


@dataclass
class Compared:
    """A finished seed comparison (its runs came as Items)."""

    seconds: float


class Failure(Exception):
    """A run could not be done: ``title`` and ``message`` for people; ``expected``
    is False for bugs (their traceback was logged)."""

    def __init__(self, title: str, message: str, expected: bool = True):
        super().__init__(message)
        self.title, self.message, self.expected = title, message, expected


def failure(exc: BaseException, request: Request | None = None) -> Failure:
    """The Failure of anything a run (or its preparation) raised."""
    import torch

    if isinstance(exc, Failure):
        return exc
    text = str(exc)
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower() \
        or "can't allocate memory" in text.lower()
    if oom:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        res = request.res if request else None
        lo = RES_RANGE[request.backend][0] if request else 16
        lower = max(lo, (res or 2 * lo) // 2)
        return Failure("Out of memory", f"Out of memory at res={res}. Try a lower resolution (e.g. res={lower}) "
                       "or fewer seeds/views; nothing was saved.")
    if isinstance(exc, GuidanceUnavailable):
        return Failure(f"{BACKEND_NAMES['sd']} unavailable", text)
    if isinstance(exc, (RequestError, ValueError)):
        return Failure("Invalid input", text)
    if isinstance(exc, NonFiniteGradient):
        return Failure("Run stopped", f"{text} Nothing was saved.")
    traceback.print_exception(exc, file=sys.stderr)  # a bug: keep its traceback in the log
    return Failure("Run failed", f"The run failed ({type(exc).__name__}: {text}); nothing was saved.", expected=False)


# ------------------------------------------------------------------ one run

@dataclass
class _Result:
    value: Any


@dataclass
class _Error:
    exc: BaseException


class Run:
    """One request's work in a worker thread: progress goes through a queue; the
    work stops at its next step once ``stop`` is set."""

    def __init__(self, runner: "Runner", key: str, folder: Path):
        self.runner, self.key, self.folder = runner, key, folder
        self.stop = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.job, self.jobs = 0, 1
        self._finished = False

    def step_callback(self, info) -> bool:
        """``distill`` callback: forward progress (and the preview); True = stop."""
        img = to_uint8(info.preview) if info.preview is not None else None
        self.events.put(Step(info.step, info.steps, info.t, info.n_splats, img, self.job, self.jobs))
        return self.stop.is_set()

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        self.events.put(Stage(stage, done, total))

    def emit(self, event) -> None:
        self.events.put(event)

    def start(self, work: Callable[["Run"], Any]) -> None:
        def main():
            try:
                self.events.put(_Result(work(self)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self.events.put(_Error(exc))

        self.thread = threading.Thread(target=main, name="cfd-run", daemon=True)
        self.thread.start()

    def stream(self, heartbeat_s: float = 0.5) -> Iterator:
        """Events until the work returns (``_Result``) or raises (``_Error``); a
        Tick whenever nothing happened for ``heartbeat_s``."""
        while True:
            try:
                event = self.events.get(timeout=heartbeat_s)
            except queue.Empty:
                yield Tick()
                continue
            yield event
            if isinstance(event, (_Result, _Error)):
                return

    def finish(self) -> None:
        """Stop the work; once its thread has ended, remove the folder and forget
        the run (in the background, so a cancel returns at once)."""
        if self._finished:
            return
        self._finished = True
        self.stop.set()

        def wait_and_clean():
            if self.thread is not None:
                self.thread.join()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.runner._forget(self)

        if self.thread is not None and self.thread.is_alive():
            threading.Thread(target=wait_and_clean, name="cfd-cleanup", daemon=True).start()
        else:
            wait_and_clean()


# ------------------------------------------------------------------ the runner

class Runner:
    """Owns the active runs: their folders under ``root``, Stop per session, the sweep."""

    def __init__(self, root: Path | str | None = None, ttl_s: float = RUN_TTL_S):
        root = root or os.environ.get("CFD_RUNS_DIR") or Path(tempfile.gettempdir()) / "cfd-app"
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._runs: dict[str, set[Run]] = {}
        self._lock = threading.Lock()

    # -- bookkeeping

    def open(self, session: str | None) -> Run:
        """A new run (and its folder) for ``session``; None gets a key of its own."""
        self.sweep()
        key = session or f"no-session-{uuid.uuid4().hex}"
        folder = self.root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run = Run(self, key, folder)
        with self._lock:
            self._runs.setdefault(key, set()).add(run)
        folder.mkdir()
        return run

    def _forget(self, run: Run) -> None:
        with self._lock:
            runs = self._runs.get(run.key)
            if runs is not None:
                runs.discard(run)
                if not runs:
                    del self._runs[run.key]

    def runs(self, session: str | None = None) -> list[Run]:
        """Active runs (of ``session``, or all)."""
        with self._lock:
            if session is not None:
                return list(self._runs.get(session, ()))
            return [r for runs in self._runs.values() for r in runs]

    def stop(self, session: str | None) -> int:
        """Ask every run of ``session`` to stop; returns how many. None stops nothing."""
        if not session:
            return 0
        runs = self.runs(session)
        for run in runs:
            run.stop.set()
        return len(runs)

    def sweep(self) -> list[Path]:
        """Remove run folders older than ``ttl_s`` that no active run owns."""
        owned = {r.folder for r in self.runs()}
        now, removed = time.time(), []
        for path in self.root.glob("run-*"):
            try:
                if path not in owned and now - path.stat().st_mtime > self.ttl_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            except OSError:
                pass
        return removed

    # -- work

    def _events(self, run: Run, request: Request | None) -> Iterator:
        """The run's events for a consumer; raises Failure; returns the work's value."""
        for event in run.stream():
            if isinstance(event, _Error):
                raise failure(event.exc, request)
            if isinstance(event, _Result):
                return event.value
            yield event
        return None

    def generate(self, request: Request, guidance, session: str | None = None, config=None) -> Iterator:
        """One generation (``pipeline.generate``: distil and export) of a prepared
        request: Step/Stage/Tick events, then Done (files named for download) or
        Cancelled. ``config``: default ``request.app_config()`` (live previews)."""
        from .distill import preview
        from .pipeline import generate as pipeline_generate

        config = config or request.app_config()
        run = self.open(session)

        def work(run: Run):
            return pipeline_generate(guidance, config, run.folder / "result", callback=run.step_callback,
                                     should_stop=run.stop.is_set, stage_progress=run.stage_progress,
                                     metadata=request.metadata(), **request.exports.pipeline_kwargs())

        try:
            run.start(work)
            result = yield from self._events(run, request)
            summary = result["summary"]
            if result["cancelled"]:
                yield Cancelled(summary["steps_done"], summary["steps"])
                return
            files = {}
            for key, path in result["files"].items():
                if key != "viewer_ply":  # downloads carry the run's name
                    path = path.rename(path.with_name(f"cfd_{request.method}_seed{request.seed}_{path.name}"))
                files[key] = path
            yield Done(request, files, summary, to_uint8(preview(result["scene"], RESULT_PREVIEW_RES)))
        finally:
            run.finish()

    def compare(self, base: Request, methods: list[str], n_seeds: int, guidance,
                session: str | None = None) -> Iterator:
        """``base`` for seeds seed … seed + n_seeds − 1 with each method: Step
        events, an Item per finished run (orbit GIF, nearest object), then
        Compared or Cancelled."""
        from .distill import distill, run_threads
        from .export import orbit_frames, write_gif
        from .pipeline import nearest_reference

        jobs = [replace(base, method=m, seed=base.seed + k) for m in methods for k in range(n_seeds)]
        run = self.open(session)
        run.jobs = len(jobs)
        started = time.perf_counter()

        def work(run: Run):
            items = []
            for i, job in enumerate(jobs):
                run.job = i
                t0 = time.perf_counter()
                config = job.config()
                scene = distill(guidance, config, callback=run.step_callback)
                if run.stop.is_set():
                    return None
                with run_threads(guidance, config):
                    gif = write_gif(orbit_frames(scene, n_frames=COMPARE_FRAMES, res=COMPARE_RES),
                                    run.folder / f"{job.method}-seed{job.seed}.gif")
                    near = nearest_reference(scene, guidance, config.res)
                items.append(Item(job, gif, near, time.perf_counter() - t0, len(scene)))
                run.emit(items[-1])
            return items

        try:
            run.start(work)
            items = yield from self._events(run, base)
            if items is None:
                yield Cancelled(run.job * base.steps, len(jobs) * base.steps)
                return
            yield Compared(time.perf_counter() - started)
        finally:
            run.finish()


def compare_table(items: list[Item]) -> str:
    """Markdown table of a comparison and, on the exact prior, its diversity."""
    if not items:
        return ""
    res = next((it.near["psnr_res"] for it in items if it.near), None)
    psnr_head = f"PSNR at {res} px (dB)" if res else "PSNR (dB)"
    lines = [f"| method | seed | nearest object | {psnr_head} | splats | seconds |", "|---|---|---|---|---|---|"]
    for it in items:
        near, psnr = (it.near["nearest"], f"{it.near['nearest_psnr']:.1f}") if it.near else ("–", "–")
        lines.append(f"| {it.request.method} | {it.request.seed} | {near} | {psnr} | {it.n_splats} | "
                     f"{it.seconds:.1f} |")
    reached: dict[str, list[str]] = {}
    for it in items:
        if it.near:
            reached.setdefault(it.request.method, []).append(it.near["nearest"])
    if reached:
        lines += ["", "Diversity: " + "; ".join(f"**{m}** reached {len(set(v))} distinct object(s) over "
                                                f"{len(v)} seed(s)" for m, v in reached.items())]
    return "\n".join(lines)
