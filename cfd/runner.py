"""Long runs, owned by one ``Runner``: admission, each run's temp folder, Stop
per session, and the sweep of folders left behind. A run's work goes to the
worker processes (``cfd.workers``: a Generate on a CPU backend, a Compare's runs
side by side) or to a thread of this process; either way its events come
through one queue. The app drives it; no gradio here.

    runner = Runner()                                   # root: $CFD_RUNS_DIR or <tmp>/cfd-app
    for event in runner.generate(request, guidance, session="abc"):
        ...   # Step, Stage, Picture, Artefact, Tick (heartbeat), then Done or Cancelled; Failure is raised
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
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import imageio.v3 as iio
import numpy as np

from .backends import objects_factor
from .export import to_uint8
from .errors import GuidanceUnavailable, InputError, NonFiniteGradient, WorkerFailed, failure
from .machine import return_free_memory
from .request import Request, RequestError, check_work
from .settings import setting
from .workers import (FINAL_EVENTS, WORKER_DIED, WORKER_HUNG, WORKER_PROTOCOL, WORKER_START, StepEvents, WorkerPool,
                      decode_image, generate_job)

RUN_TTL_S = 3600           # folders older than this that no active run owns are swept
STOP_FILE = ".stop"        # in a run's folder: its work (in this process or a worker) stops
ADMIT_TTL_S = 3600         # an admitted request that started but never finished frees its place after this
QUEUED_TTL_S = 300         # … one that never started (its client left the queue) after this; if it does start
                           # later, its handler takes a place anew
RESULT_PREVIEW_RES = 256
STOP_WAIT_S = 2.0          # after Stop, the longest a run waits for its worker jobs' last events
WORKER_BACKENDS = ("exact", "tiny-sd")   # the backends a generation may run in a worker process (small to load)


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
    steps_done: int | None = None         # over every job, when jobs run side by side

    @property
    def fraction(self) -> tuple[int, int]:
        """(done, total) steps over every job."""
        done = self.job * self.steps + self.step if self.steps_done is None else self.steps_done
        return done, self.jobs * self.steps


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
class Picture:
    """A generation's result as soon as its loop has ended, shown while its
    videos and mesh are made: the final render (uint8 [H,W,3]), the viewer PLY
    and run.json's data so far."""

    request: Request
    image: np.ndarray
    viewer: Path
    summary: dict

    @property
    def status(self) -> str:
        s = self.summary
        limited = (f" · **stopped by the time limit** after {s['steps_done']}/{s['steps']} steps"
                   if s.get("stopped_by") == "time limit" else "")
        return (f"**Distilled** in {s['timings_s']['distill']:.1f} s · {self.request.label()} · {s['n_splats']} "
                f"splats{limited} · making the videos and the mesh …")


@dataclass
class Artefact:
    """One more file of a generation, as soon as it is written (render_mp4, noise_mp4, glb)."""

    key: str
    path: Path


@dataclass
class Tick:
    """Nothing new (a heartbeat, so a consumer can notice a cancel promptly)."""


@dataclass
class Item:
    """One finished run of a seed comparison."""

    request: Request
    gif: Path                 # orbit loop
    near: dict | None         # nearest reference (exact prior): nearest, nearest_family, nearest_psnr, psnr
    seconds: float
    n_splats: int
    fingerprint: str = ""     # hash of the final scene's parameters (``pipeline.scene_fingerprint``)
    limited_at: int | None = None   # the step the time limit stopped it at (None: it ran every step)

    @property
    def caption(self) -> str:
        return caption(self.request, self.near)


def caption(request: Request, near: dict | None) -> str:
    """Short, so a gallery tile shows it whole: "cfd · seed 3 · pink duck 27.1 dB"
    (``near``: a dict with the nearest variant and its PSNR, e.g. run.json's summary)."""
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
        near = (f" · nearest variant: **{s['nearest']}** ({s['nearest_family']}, {s['nearest_psnr']:.1f} dB at "
                f"{s['psnr_res']} px)" if "nearest" in s else "")
        limited = (f" · **stopped by the time limit** after {s['steps_done']}/{s['steps']} steps"
                   if s.get("stopped_by") == "time limit" else "")
        missing = [name for key, name in (("render_mp4", "orbit video"), ("noise_mp4", "noise video"), ("glb", "GLB"))
                   if f"{key}_error" in s]
        skipped = f" · could not make the {', '.join(missing)} (run.json says why)" if missing else ""
        return (f"**Done** in {s['timings_s']['total']:.1f} s · {self.request.label()} · {s['n_splats']} splats"
                f"{limited}{near}{skipped}")

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
    """A finished seed comparison (its runs came as Items): ``done`` of its
    ``runs`` runs finished before the request's time limit."""

    seconds: float
    done: int
    runs: int

    @property
    def status(self) -> str:
        limited = ("" if self.done == self.runs else
                   f" · **the time limit ended the comparison**: the other {self.runs - self.done} run(s) did not start")
        return (f"**Done** · {self.done} runs in {self.seconds:.0f} s{limited} — click a result, then *Use seed …* "
                "to take it to Generate")


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
        self._step_events = StepEvents()

    def cancel(self) -> None:
        """Ask the work to stop at its next step, in this process and in workers
        (``STOP_FILE`` in the run's folder)."""
        self.stop.set()
        try:
            (self.folder / STOP_FILE).touch()
        except OSError:
            pass

    def step_callback(self, info) -> bool:
        """``distill`` callback: forward progress (and the preview) when due
        (``workers.StepEvents``); True = stop."""
        if self._step_events.due(info):
            img = to_uint8(info.preview) if info.preview is not None else None
            self.events.put(Step(info.step, info.steps, info.t, info.n_splats, img, self.job, self.jobs))
        return self.stop.is_set()

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
        self.cancel()

        def wait_and_clean():
            if self.thread is not None:
                self.thread.join()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.runner._forget(self)
            return_free_memory()

        if self.thread is not None and self.thread.is_alive():
            threading.Thread(target=wait_and_clean, name="cfd-cleanup", daemon=True).start()
        else:
            wait_and_clean()


# ------------------------------------------------------------------ the runner

RUNS_FOLDER = "cfd-runs"    # the runner's own subfolder of CFD_RUNS_DIR: the only one it serves and sweeps
RUNS_MARKER = ".cfd-runs"   # the file that says a RUNS_FOLDER is ours


class SessionBusy(RequestError):
    """A session asked for a second request while its first is queued or running."""


class ClientBusy(RequestError):
    """A client address asked for more requests than it may have queued or running."""


@dataclass(eq=False)
class Ticket:
    """One admitted request's place (``Runner.admit``), freed by ``Runner.release``."""

    session: str | None
    client: str | None
    since: float              # time.monotonic() when admitted
    claimed: bool = False     # its handler has started (``Runner.claim``)


def runs_folder(parent: Path | str) -> Path:
    """``parent``/cfd-runs, created with its marker file; InputError if a folder of
    that name exists without the marker (not ours: never served, never swept)."""
    folder = Path(parent).resolve() / RUNS_FOLDER
    marker = folder / RUNS_MARKER
    if folder.exists() and not marker.is_file():
        raise InputError(f"{folder} exists but was not made by cfd (no {RUNS_MARKER} marker file), so the app will "
                         "not serve or clean it. Fix: point CFD_RUNS_DIR at another folder, or remove that one.")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("cfd's run folders: served by the app, run-* folders removed an hour after their run\n")
    return folder


class Runner:
    """Owns the active runs: their folders under ``root`` (``runs_folder`` of
    CFD_RUNS_DIR), Stop per session, the sweep."""

    def __init__(self, root: Path | str | None = None, ttl_s: float = RUN_TTL_S, workers: int | None = None,
                 max_work: float | None = None, time_limit_s: float | None = None,
                 max_per_client: int | None = None):
        """``max_work``: most work one request may ask for, in default runs
        (``request.work_units``; None: $CFD_MAX_WORK); ``time_limit_s``:
        wall-clock seconds one request may distil (a comparison's runs all
        together) before it stops and keeps what it has (None:
        $CFD_RUN_LIMIT_S); ``max_per_client``: requests one client address may
        have queued or running (None: $CFD_MAX_PER_CLIENT)."""
        self.root = runs_folder(root or os.environ.get("CFD_RUNS_DIR") or Path(tempfile.gettempdir()) / "cfd-app")
        self.ttl_s = ttl_s
        self.max_work = setting("CFD_MAX_WORK") if max_work is None else max_work
        self.time_limit_s = setting("CFD_RUN_LIMIT_S") if time_limit_s is None else time_limit_s
        self.workers = WorkerPool(default_workers() if workers is None else workers)
        self.max_per_client = setting("CFD_MAX_PER_CLIENT") if max_per_client is None else max_per_client
        self._runs: dict[str, set[Run]] = {}
        self._tickets: set[Ticket] = set()   # the admitted requests, queued or running
        self._lock = threading.Lock()

    # -- admission: what one request may ask for; one request per session, a few per client address

    def admit(self, request: Request, runs: int = 1, session: str | None = None,
              client: str | None = None) -> "Ticket":
        """Refuse (RequestError, at once: before the request waits in a queue)
        work beyond ``max_work`` (``request.check_work``, counting the objects
        the exact prior weighs), a second request of ``session`` while its first
        is queued or running, and more than ``max_per_client`` requests of
        ``client`` (an address); else hold a place for them until
        ``release(ticket)`` (a place never released is freed after
        ``QUEUED_TTL_S`` if its request never started, ``ADMIT_TTL_S`` if it did)."""
        check_work(request, runs, self.max_work, objects_factor(request))
        with self._lock:
            now = self._prune()
            if session and any(t.session == session for t in self._tickets):
                raise SessionBusy("this session already has a request queued or running: wait for it to finish, "
                                  "or press Stop, then try again")
            if client and sum(t.client == client for t in self._tickets) >= self.max_per_client:
                raise ClientBusy(f"your address already has {self.max_per_client} request(s) queued or running, "
                                 "the most this app allows: wait for one to finish, then try again")
            ticket = Ticket(session, client, now)
            self._tickets.add(ticket)
        return ticket

    def busy(self) -> bool:
        """Whether any request is admitted (queued or running)."""
        with self._lock:
            self._prune()
            return bool(self._tickets)

    def _prune(self) -> float:
        """Drop the places held past their time (``admit``), under the lock; returns now."""
        now = time.monotonic()
        self._tickets = {t for t in self._tickets if now - t.since < (ADMIT_TTL_S if t.claimed else QUEUED_TTL_S)}
        return now

    def claim(self, session: str | None) -> "Ticket | None":
        """The ticket the validator admitted for ``session``'s request, now taken
        by its handler (None if there is none: admit the request then)."""
        with self._lock:
            ticket = next((t for t in self._tickets if session and t.session == session and not t.claimed), None)
            if ticket is not None:
                ticket.claimed = True
            return ticket

    def release(self, ticket: "Ticket | None") -> None:
        """Free the place ``ticket`` holds (its request finished, failed or was
        stopped); a ticket already freed frees nothing, so a late release never
        frees the place of the session's next request."""
        with self._lock:
            self._tickets.discard(ticket)

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
        """Ask every run of ``session`` to stop and free its places (``admit``);
        returns how many runs. None stops nothing."""
        if not session:
            return 0
        with self._lock:
            self._tickets = {t for t in self._tickets if t.session != session}
        runs = self.runs(session)
        for run in runs:
            run.cancel()
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

    def generate(self, request: Request, guidance, session: str | None = None, previews: bool = True) -> Iterator:
        """One generation (``pipeline.generate``: distil and export) of a prepared
        request: Step (with live previews if ``previews``), Stage, Picture (as
        soon as the loop ends), Artefact and Tick events, then Done (files named
        for download) or Cancelled. On a CPU with worker processes it runs in
        one of them with a torch thread per worker (off the server's
        interpreter; bit for bit what it gives in this process), else in a
        thread of this process."""
        run = self.open(session)
        job = {"job": 0, "kind": "generate", "values": request.values(), "exports": asdict(request.exports),
               "previews": previews, "preview_res": RESULT_PREVIEW_RES, "out_dir": str(run.folder / "result"),
               "hold": str(run.folder / "shown"), "stop_file": str(run.folder / STOP_FILE),
               "time_limit_s": self.time_limit_s}
        steps, picture = [0], []

        def on_event(event: dict) -> None:
            kind = event["event"]
            if kind == "step":
                steps[0] = event["step"]
                preview = decode_image(event["preview"]) if "preview" in event else None
                run.emit(Step(event["step"], event["steps"], event["t"], event["n_splats"], preview))
            elif kind == "stage":
                run.emit(Stage(event["stage"], event["done"], event["total"]))
            elif kind == "picture":
                files = event["files"]
                picture.append(Picture(request, iio.imread(files["preview_png"]), Path(files["viewer_ply"]),
                                       event["summary"]))
                run.emit(picture[0])
            elif kind == "artefact":
                run.emit(Artefact(event["key"], Path(event["path"])))

        def work(run: Run) -> dict | None:
            if not self._workers_take(request, guidance):
                return generate_job(job, on_event, guidance)
            final = self._in_workers(run, [({**job, "threads": self.workers.size}, on_event)])[0]
            return None if final is None else final["result"]

        try:
            run.start(work)
            result = yield from self._events(run, request)
            if result is None or result["cancelled"]:
                yield Cancelled(steps[0], request.steps)
                return
            files = {}
            for key, path in result["files"].items():
                path = Path(path)
                if key not in ("viewer_ply", "preview_png"):  # downloads carry the run's name
                    path = path.rename(path.with_name(f"cfd_{request.method}_seed{request.seed}_{path.name}"))
                files[key] = path
            yield Done(request, files, result["summary"], picture[0].image)
        finally:
            run.finish()

    def _workers_take(self, request: Request, guidance) -> bool:
        """Whether ``request``'s runs go to the worker processes: on a CPU, with
        worker processes (CFD_WORKERS > 1), for a backend a worker loads in
        moments (the exact prior, tiny-sd)."""
        return self.workers.size > 1 and request.backend in WORKER_BACKENDS \
            and str(getattr(guidance, "device", "cpu")) == "cpu"

    def compare(self, base: Request, methods: list[str], n_seeds: int, guidance,
                session: str | None = None) -> Iterator:
        """``base`` for seeds seed … seed + n_seeds − 1 with each method: Step
        events, an Item per finished run (orbit GIF, nearest variant), then
        Compared or Cancelled. On the exact prior on a CPU the runs go side by
        side to the worker processes (``self.workers``), one per usable core, each run
        exactly what it gives alone; elsewhere one after another in a thread."""
        from .pipeline import compare_job

        jobs = [replace(base, method=m, seed=base.seed + k) for m in methods for k in range(n_seeds)]
        run = self.open(session)
        run.jobs = len(jobs)
        started = time.perf_counter()
        side_by_side = len(jobs) > 1 and base.backend == "exact" and self._workers_take(base, guidance)

        deadline = time.time() + self.time_limit_s   # one limit for the whole request, across processes

        def in_turn(run: Run):
            items = []
            for i, job in enumerate(jobs):
                if run.stop.is_set():
                    return None
                if time.time() >= deadline:   # the request's time is up: what finished is kept
                    break
                run.job = i
                result = compare_job(job.config(), guidance, run.folder / _gif_name(job), run.step_callback,
                                     run.stop.is_set, time_limit_s=deadline - time.time())
                if result is None:
                    return None
                items.append(_item(job, result))
                run.emit(items[-1])
            return items

        try:
            run.start(lambda run: self._side_by_side(run, jobs, deadline) if side_by_side else in_turn(run))
            items = yield from self._events(run, base)
            if items is None:
                yield Cancelled(run.job * base.steps, len(jobs) * base.steps)
                return
            yield Compared(time.perf_counter() - started, len(items), len(jobs))
        finally:
            run.finish()

    def _side_by_side(self, run: Run, jobs: list[Request], deadline: float | None = None) -> list[Item] | None:
        """``jobs`` in the worker processes; their events forwarded to ``run``; the
        Items in job order (a job that never started, its ``deadline`` passed, has
        none), or None once stopped. A failed job (a worker that died or hung
        included) stops the others. ``deadline``: time.time() by which every job's
        loop stops and keeps what it has."""
        steps = [0] * len(jobs)
        items: list[Item | None] = [None] * len(jobs)

        def handler(i: int, job: Request):
            def on_event(event: dict) -> None:
                if event["event"] == "step":
                    steps[i] = event["step"]
                    run.emit(Step(event["step"], event["steps"], event["t"], event["n_splats"], None, i, len(jobs),
                                  sum(steps)))
                elif event["event"] == "done" and event["result"] is not None:
                    items[i] = _item(job, event["result"])
                    run.emit(items[i])
            return on_event

        self._in_workers(run, [({"job": i, "values": job.values(), "gif": str(run.folder / _gif_name(job)),
                                          "stop_file": str(run.folder / STOP_FILE),
                                          "time_limit_s": self.time_limit_s, "deadline": deadline},
                                         handler(i, job)) for i, job in enumerate(jobs)])
        return None if run.stop.is_set() else [item for item in items if item is not None]

    def _in_workers(self, run: Run, jobs: list[tuple[dict, Callable[[dict], None]]]) -> list[dict | None]:
        """Each (job, on_event) in the worker processes, every event of the job
        (progress, then its done or error) to its ``on_event``; returns their
        final done events in order. A failed job stops the others
        (``run.cancel``), and the first failure is raised (``_raised``).
        After Stop this returns within STOP_WAIT_S, even with a hung worker (its
        job's final event None): the pool answers a stopped run's queued jobs at
        once and kills a worker that goes on past its stop grace."""
        finals: list[dict | None] = [None] * len(jobs)
        left = threading.Semaphore(0)

        def handler(i: int, on_event: Callable[[dict], None]):
            def on_any(event: dict) -> None:
                on_event(event)
                if event["event"] in FINAL_EVENTS:
                    if event["event"] == "error":
                        run.cancel()
                    finals[i] = event
                    left.release()
            return on_any

        for i, (job, on_event) in enumerate(jobs):
            self.workers.submit(job, handler(i, on_event))
        answered, stopped_at = 0, None
        while answered < len(jobs):
            if left.acquire(timeout=0.2):
                answered += 1
            elif run.stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > STOP_WAIT_S:
                    break
        failed = next((final for final in finals if final is not None and final["event"] == "error"), None)
        if failed is not None:
            raise _raised(failed)
        return finals


def default_workers() -> int:
    """Worker processes for side-by-side runs: $CFD_WORKERS, else the cores this
    process may run on (affinity, cgroup CPU quota), at most 8
    (``cfd.machine.default_worker_count``; 1 = every run in the app's own process)."""
    return setting("CFD_WORKERS")


def _gif_name(job: Request) -> str:
    return f"{job.method}-seed{job.seed}.gif"


def _item(job: Request, result: dict) -> Item:
    return Item(job, Path(result["gif"]), result["near"], result["seconds"], result["n_splats"],
                result["fingerprint"], result["steps_done"] if result["stopped_by"] else None)


_RAISED = {"RequestError": RequestError, "SettingError": InputError, "InputError": InputError,
           "GuidanceUnavailable": GuidanceUnavailable, "NonFiniteGradient": NonFiniteGradient,
           "MemoryError": MemoryError, "OutOfMemoryError": MemoryError,
           **{kind: WorkerFailed for kind in (WORKER_DIED, WORKER_HUNG, WORKER_PROTOCOL, WORKER_START)}}


def _raised(event: dict) -> BaseException:
    """The exception a worker's error event stands for (a bug's traceback goes to the log)."""
    kind = _RAISED.get(event["type"])
    if kind is not None:
        return kind(event["message"])
    if event.get("errno"):   # e.g. the disk filled up under a worker's files
        return OSError(event["errno"], event["message"])
    print(event.get("traceback") or "", file=sys.stderr)
    return RuntimeError(f"{event['type']}: {event['message']}")


def compare_table(items: list[Item]) -> str:
    """Markdown table of a comparison and, on the exact prior, its diversity: per
    method how many different variants (and families) its seeds reached, and
    how sharp they were."""
    if not items:
        return ""
    res = next((it.near["psnr_res"] for it in items if it.near), None)
    psnr_head = f"PSNR at {res} px (dB)" if res else "PSNR (dB)"
    lines = [f"| method | seed | nearest variant | family | {psnr_head} | splats | seconds |",
             "|---|---|---|---|---|---|---|"]
    reached: dict[str, list[dict]] = {}
    for it in items:
        near = it.near or {}
        cells = (near.get("nearest", "–"), near.get("nearest_family", "–"),
                 f"{near['nearest_psnr']:.1f}" if near else "–")
        limited = "" if it.limited_at is None else f" (time limit: step {it.limited_at}/{it.request.steps})"
        lines.append(f"| {it.request.method} | {it.request.seed} | {' | '.join(cells)} | {it.n_splats} | "
                     f"{it.seconds:.1f}{limited} |")
        if near:
            reached.setdefault(it.request.method, []).append(near)
    if reached:
        def story(method: str, nears: list[dict]) -> str:
            variants, families = {n["nearest"] for n in nears}, {n["nearest_family"] for n in nears}
            psnr = sum(n["nearest_psnr"] for n in nears) / len(nears)
            return (f"**{method}** found {len(variants)} different variant(s) of {len(families)} famil"
                    f"{'y' if len(families) == 1 else 'ies'} over {len(nears)} seed(s), {psnr:.1f} dB on average")
        prompt = items[0].request.prompt
        lines += ["", "**Diversity** — " + (f'for "{prompt}": ' if prompt else "")
                  + "; ".join(story(m, v) for m, v in reached.items())
                  + ". Different variants are different objects; PSNR says how sharply each seed reached its own."]
    return "\n".join(lines)
