"""Worker processes for the app's CPU runs: a generation, and the runs of a
seed comparison side by side.

One CPU run is many small tensor operations driven from Python, so a run in a
thread of the server's process waits for the server's threads (the GIL), and
two runs in two threads mostly wait for each other; in worker processes they
have an interpreter each. A ``WorkerPool`` keeps up to ``size`` worker
processes (``python -m cfd.workers``), started when jobs first need them (or
all at once by ``start``) and kept for later jobs, each with its own cached
guidance (``cfd.backends``), warmed up for ``warm_values`` when it starts.

Protocol (JSON lines): the pool writes one job per line to a worker's stdin;
every job has ``"job": id``, ``"values"`` (request values), ``"stop_file"``,
``"time_limit_s"`` and ``"deadline"`` (time.time() seconds), each None or
absent when unlimited. A comparison's run (``"gif"``: its orbit GIF's path;
``pipeline.compare_job``, one torch thread) answers ``{"job": id, "event":
"step", "step", "steps", "t", "n_splats"}`` lines; a generation (``"kind":
"generate"``, ``generate_job``) also "stage", "picture" and "artefact" events.
Then one ``{"job": id, "event": "done", "result": {...} or None}`` (None:
stopped, with a ``"reason"`` when it never started) or ``{"job": id, "event":
"error", "type", "message", "traceback"}``; a worker's first line, once warmed
up, is ``{"event": "ready"}``. A job's loop runs at most min(time_limit_s,
deadline − now) seconds and stops at its next step once its ``stop_file``
exists, so Stop needs no shared memory; a job whose stop file exists or whose
deadline has passed when it is picked up is answered at once (done, result
None) without any work. A scene does not depend on the number of torch
threads, so a job's result is bit for bit what the same request gives in the
app's own process.

Supervision: every job gets exactly one done or error event. The pool reads a
worker's stdout through a reader thread and a queue, so a worker that sends
nothing for ``answer_timeout_s`` (a job sends an event every step) is killed
and its job reported as ``WorkerHung``; one that exits is ``WorkerDied``; a line
that is not a well-formed event object is ``WorkerProtocolError`` (the worker
is killed); a worker that cannot be started, or is not ready within
``ready_timeout_s``, is ``WorkerStartFailed``. A killed worker is reaped and the
next job gets a new one. A worker still busy ``stop_grace_s`` after its job's
stop file appeared (stuck inside a step) is killed and the job answered as
stopped. Workers never outlive the app: they die with the pool thread that
started them (Linux ``PR_SET_PDEATHSIG``), exit on stdin EOF, and ``close()``
(also run at exit for every open pool) kills and reaps them.

Why not ``concurrent.futures.ProcessPoolExecutor`` (or torch.multiprocessing):
it cannot kill one hung job — a dead worker breaks the whole pool and fails
every pending future (``BrokenProcessPool``) — it has no per-job deadline or
progress stream (steps would need a Manager queue, one more process), and
stopping a job would still need a flag checked between steps, which the stop
file already is. The hand-written pool is a few dozen lines more and lets each
job be supervised on its own. Nothing here imports gradio (nor torch, outside
a worker process).
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from .machine import return_free_memory

EventHandler = Callable[[dict], None]

WORKER_COMMAND = (sys.executable, "-m", "cfd.workers")
READY_TIMEOUT_S = 300.0    # start-up, torch import and warm-up render included
ANSWER_TIMEOUT_S = 120.0   # a busy worker sends a step event every step; silence this long = hung
STOP_GRACE_S = 1.5         # after a job's stop file appears, its worker has this long to answer
POLL_S = 0.2
PARENT_ENV = "CFD_WORKER_PARENT"   # the pool's pid, in a worker's environment

# the type of the error events the pool makes itself
WORKER_DIED, WORKER_HUNG = "WorkerDied", "WorkerHung"
WORKER_PROTOCOL, WORKER_START = "WorkerProtocolError", "WorkerStartFailed"


# ------------------------------------------------------------------ the pool

class WorkerFault(Exception):
    """A worker that died, hung, broke the protocol or did not start (``kind``: the error event's type)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def not_started(job: dict) -> str | None:
    """Why ``job`` must not start (its stop file exists, its deadline passed), or None."""
    stop = job.get("stop_file")
    if stop and os.path.exists(stop):
        return "stopped before it started"
    deadline = job.get("deadline")
    if deadline is not None and time.time() >= deadline:
        return "its deadline passed before it started"
    return None


def time_limit(job: dict) -> float | None:
    """The job's loop limit now: min(time_limit_s, deadline − now), None if neither."""
    limits = [job["time_limit_s"]] if job.get("time_limit_s") is not None else []
    if job.get("deadline") is not None:
        limits.append(max(0.0, job["deadline"] - time.time()))
    return min(limits) if limits else None


_EVENT_FIELDS = {"step": ("step", "steps", "t", "n_splats"), "stage": ("stage", "done", "total"),
                 "picture": ("files", "summary"), "artefact": ("key", "path"), "done": ("result",),
                 "error": ("type", "message")}
FINAL_EVENTS = ("done", "error")   # a job's last event; the others are its progress


def _event(line: str, job_id, pid: int) -> dict:
    """The event on ``line`` of job ``job_id``; WorkerFault (protocol) if it is not one."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict) and event.get("event") in _EVENT_FIELDS and event.get("job") == job_id \
            and all(k in event for k in _EVENT_FIELDS[event["event"]]) \
            and (event["event"] != "done" or event["result"] is None or isinstance(event["result"], dict)):
        return event
    raise WorkerFault(WORKER_PROTOCOL, f"worker process {pid} sent {line.strip()[:200]!r} during job {job_id}, "
                                       "not an event of that job: killed")


def _reap(proc: subprocess.Popen) -> int | None:
    """Kill ``proc`` if it still runs, wait for it, close its pipes; its exit status."""
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        status = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        status = None
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    return status


class _Worker:
    """One worker process; a thread reads its stdout lines into ``lines`` (None at EOF)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pid = proc, proc.pid
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name=f"cfd-worker-out-{proc.pid}", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self.lines.put(None)
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    def send(self, job: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise WorkerFault(WORKER_DIED, f"worker process {self.pid} could not take job {job.get('job')} "
                                           f"({exc}; exit status {_reap(self.proc)})") from None


_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS):
        pool.close()


class WorkerPool:
    """Up to ``size`` supervised worker processes sharing one job queue.

    ``command``: a worker's command line (the warm-up values' JSON is appended);
    ``ready_timeout_s``: the most a new worker may take to say it is ready;
    ``answer_timeout_s``: the longest a busy worker may send nothing;
    ``stop_grace_s``: how long a worker may go on after its job's stop file appeared."""

    def __init__(self, size: int, command: Iterable[str] = WORKER_COMMAND, warm_values: dict | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S, answer_timeout_s: float = ANSWER_TIMEOUT_S,
                 stop_grace_s: float = STOP_GRACE_S):
        self.size, self.warm_values = max(1, int(size)), warm_values
        self.command = list(command)
        self.ready_timeout_s, self.answer_timeout_s, self.stop_grace_s = ready_timeout_s, answer_timeout_s, stop_grace_s
        self._jobs: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen] = []    # the live worker processes
        self._lock = threading.Lock()
        self._closed = False
        self._unanswered = 0                         # jobs submitted and not yet answered
        self._ready = threading.Semaphore(0)
        _POOLS.add(self)

    # -- public

    def start(self, warm_values: dict | None = None) -> None:
        """Start every worker now (else they start as jobs need them), warming
        up for the request ``warm_values`` (plain values) if given."""
        if warm_values is not None:
            self.warm_values = warm_values
        self._grow(self.size)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start every worker and block until each has started and warmed up (or
        failed to); False on timeout."""
        self.start()
        end = None if timeout is None else time.monotonic() + timeout
        acquired = [self._ready.acquire(timeout=None if end is None else max(0.0, end - time.monotonic()))
                    for _ in range(self.size)]
        for ok in acquired:
            if ok:
                self._ready.release()
        return all(acquired)

    def submit(self, job: dict, on_event: EventHandler) -> None:
        """Queue ``job`` (``job``, ``values``, ``gif``, ``stop_file``, optional
        ``time_limit_s`` and ``deadline``); ``on_event(event)`` gets its step
        events and then exactly one ``done`` or ``error`` event, from a pool
        thread (at once, from this thread, if the pool is closed)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._unanswered += 1
                wanted = min(self.size, self._unanswered)
        if closed:
            on_event(_error(job.get("job"), WORKER_DIED, "the worker pool was closed"))
            return
        self._grow(wanted)
        self._jobs.put((job, on_event))

    @property
    def pids(self) -> list[int]:
        """The live worker processes' ids."""
        with self._lock:
            return [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop taking jobs (queued ones are answered with an error), kill and reap every worker."""
        with self._lock:
            self._closed = True
            procs, threads = list(self._procs), list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for proc in procs:
            _reap(proc)
            self._forget(proc)

    # -- pool threads

    def _grow(self, n: int) -> None:
        with self._lock:
            while len(self._threads) < n and not self._closed:
                thread = threading.Thread(target=self._serve, name=f"cfd-worker-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def _discard(self, worker: _Worker | None) -> None:
        if worker is not None:
            _reap(worker.proc)
            self._forget(worker.proc)

    def _spawn(self) -> _Worker:
        """A new worker, once it says it is ready; WorkerFault if it cannot start."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", PARENT_ENV: str(os.getpid())}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with self._lock:   # close() sees every process started
            if self._closed:
                raise WorkerFault(WORKER_DIED, "the worker pool was closed")
            try:
                proc = subprocess.Popen([*self.command, json.dumps(self.warm_values)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                raise WorkerFault(WORKER_START, f"a worker process could not be started ({exc})") from None
            self._procs.append(proc)
        worker = _Worker(proc)
        try:
            line = worker.lines.get(timeout=self.ready_timeout_s)
        except queue.Empty:
            self._discard(worker)
            raise WorkerFault(WORKER_START, f"worker process {proc.pid} was not ready within "
                                            f"{self.ready_timeout_s:g} s: killed") from None
        if line is None:
            status = _reap(proc)
            self._forget(proc)
            raise WorkerFault(WORKER_START, f"worker process {proc.pid} ended before it was ready "
                                            f"(exit status {status})")
        try:
            ready = json.loads(line) == {"event": "ready"}
        except ValueError:
            ready = False
        if not ready:
            self._discard(worker)
            raise WorkerFault(WORKER_START, f"worker process {proc.pid} sent {line.strip()[:200]!r} instead of "
                                            "its ready line: killed")
        return worker

    def _serve(self) -> None:
        worker = None
        try:
            worker = self._spawn()
        except WorkerFault as exc:   # the next job tries again and reports it
            print(f"cfd workers: {exc}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - this thread must live on
            traceback.print_exc()
        finally:
            self._ready.release()
        while True:
            item = self._jobs.get()
            if item is None:
                break
            worker = self._run(worker, *item)
        self._discard(worker)

    def _answer(self, on_event: EventHandler, event: dict) -> None:
        """A job's last event (done or error)."""
        with self._lock:
            self._unanswered -= 1
        _deliver(on_event, event)

    def _run(self, worker: _Worker | None, job: dict, on_event: EventHandler) -> _Worker | None:
        """Run ``job`` on ``worker`` (a new one if None or dead); the worker for the next job."""
        job_id = job.get("job")
        if self._closed:
            self._answer(on_event, _error(job_id, WORKER_DIED, "the worker pool was closed"))
            return worker
        reason = not_started(job)
        if reason:
            self._answer(on_event, {"job": job_id, "event": "done", "result": None, "reason": reason})
            return worker
        try:
            if worker is None or worker.proc.poll() is not None:
                self._discard(worker)
                worker = None
                worker = self._spawn()
            worker.send(job)
            return self._follow(worker, job, on_event)
        except WorkerFault as exc:
            self._discard(worker)
            message = "the worker pool was closed" if self._closed else str(exc)
            self._answer(on_event, _error(job_id, exc.kind, message))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the thread
            self._discard(worker)
            self._answer(on_event, {**_error(job_id, type(exc).__name__, str(exc)),
                                    "traceback": traceback.format_exc()})
            return None

    def _follow(self, worker: _Worker, job: dict, on_event: EventHandler) -> _Worker | None:
        """Forward ``job``'s events until its done or error; WorkerFault if the
        worker dies, hangs or breaks the protocol. None if it was killed on stop."""
        job_id, stop_file = job.get("job"), job.get("stop_file")
        last = checked = time.monotonic()
        stop_seen = None
        while True:
            try:
                line = worker.lines.get(timeout=POLL_S)
            except queue.Empty:
                line = ""
            now = time.monotonic()
            if line is None:
                raise WorkerFault(WORKER_DIED, f"worker process {worker.pid} ended during job {job_id} "
                                               f"(exit status {_reap(worker.proc)})")
            if line:
                last = now
                event = _event(line, job_id, worker.pid)
                if event["event"] not in FINAL_EVENTS:
                    _deliver(on_event, event)
                else:
                    self._answer(on_event, event)
                    return worker
            if now - last > self.answer_timeout_s:
                raise WorkerFault(WORKER_HUNG, f"worker process {worker.pid} sent nothing for "
                                               f"{self.answer_timeout_s:g} s during job {job_id}: killed")
            if stop_file and stop_seen is None and (not line or now - checked >= POLL_S):
                checked = now
                if os.path.exists(stop_file):
                    stop_seen = now
            if stop_seen is not None and now - stop_seen > self.stop_grace_s:
                self._discard(worker)
                self._answer(on_event, {"job": job_id, "event": "done", "result": None,
                                        "reason": f"stopped: worker process {worker.pid} went on "
                                                  f"{self.stop_grace_s:g} s after Stop and was killed"})
                return None


def _error(job_id, kind: str, message: str) -> dict:
    return {"job": job_id, "event": "error", "type": kind, "message": message, "traceback": ""}


def _deliver(on_event: EventHandler, event: dict) -> None:
    try:
        on_event(event)
    except Exception:  # noqa: BLE001 - the consumer's bug must not end a pool thread
        traceback.print_exc()


# ------------------------------------------------------------------ the worker process

def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (Linux), and
    exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def serve(lines: Iterable[str], send: Callable[[dict], None]) -> None:
    """The worker's loop: one job per line of ``lines``, its events to ``send``."""
    from . import backends
    from . import request as rq
    from .pipeline import compare_job

    for line in lines:
        try:
            job = json.loads(line)
            job_id, stop_file = job["job"], Path(job["stop_file"])
        except (ValueError, KeyError, TypeError) as exc:
            send(_error(None, "WorkerProtocolError", f"not a job: {line.strip()[:200]!r} ({exc})"))
            continue
        reason = not_started(job)
        if reason:
            send({"job": job_id, "event": "done", "result": None, "reason": reason})
            continue

        def job_send(event: dict, job_id=job_id) -> None:
            send({"job": job_id, **event})

        def step(info, stop_file=stop_file) -> bool:
            job_send({"event": "step", "step": info.step, "steps": info.steps, "t": info.t, "n_splats": info.n_splats})
            return stop_file.exists()

        try:
            if job.get("kind") == "generate":
                result = generate_job(job, job_send)
            else:
                request = rq.parse_request(job["values"])
                # one thread beside the other workers: the scene is the same at any thread count
                config = replace(request.config(), cpu_threads=1)
                result = compare_job(config, backends.prepare(request), Path(job["gif"]), step, stop_file.exists,
                                     time_limit_s=time_limit(job))
            job_send({"event": "done", "result": result})
        except Exception as exc:  # noqa: BLE001 - handed to the pool, which re-raises it for the consumer
            job_send({"event": "error", "type": type(exc).__name__, "message": str(exc),
                      "errno": getattr(exc, "errno", None), "traceback": traceback.format_exc()})
        return_free_memory()   # between jobs: a worker's RSS stays what one job needs


STEP_EVENTS_EVERY_S = 0.2   # a run's step events without a preview, at most this often


class StepEvents:
    """Whether a ``distill`` step's progress event is due: at most every
    STEP_EVENTS_EVERY_S, but always with a preview and at the last step (each
    event wakes its consumer, whose thread may compete with the run's)."""

    def __init__(self):
        self.last = 0.0

    def due(self, info) -> bool:
        now = time.monotonic()
        if info.preview is not None or info.step == info.steps or now - self.last >= STEP_EVENTS_EVERY_S:
            self.last = now
            return True
        return False


def generate_job(job: dict, send: Callable[[dict], None], guidance=None) -> dict:
    """One generation of the app (``pipeline.generate``), in this process: the
    request ``job["values"]`` with ``job["exports"]``, live previews if
    ``job["previews"]``, ``job["threads"]`` torch threads, into
    ``job["out_dir"]``; it stops at its next step (or export progress) once
    ``job["stop_file"]`` exists. ``guidance``: the request's backend (default
    ``backends.prepare``). Events to ``send`` (without "job"): "step" (at most
    every STEP_EVENTS_EVERY_S, always with a preview and at the last step;
    "preview": ``encode_image``), "stage", "picture" (files, summary) and
    "artefact" (key, path); each file an event names is first linked into
    ``job["hold"]`` (``files.hold``), where it outlives the run's staging folder.
    Returns plain data: cancelled, files (key → path), summary (run.json),
    fingerprint (``pipeline.scene_fingerprint``)."""
    from . import backends
    from . import request as rq
    from .export import to_uint8
    from .files import hold
    from .pipeline import generate, scene_fingerprint

    request = rq.parse_request(job["values"])
    config = request.app_config() if job.get("previews") else request.config()
    config = replace(config, cpu_threads=job.get("threads") or 1)
    stop_file, held = Path(job["stop_file"]), Path(job["hold"])
    events = StepEvents()

    def step(info) -> bool:
        if events.due(info):
            event = {"event": "step", "step": info.step, "steps": info.steps, "t": info.t, "n_splats": info.n_splats}
            if info.preview is not None:
                event["preview"] = encode_image(to_uint8(info.preview))
            send(event)
        return stop_file.exists()

    def on_picture(files: dict, summary: dict) -> None:
        send({"event": "picture", "files": {key: str(hold(path, held)) for key, path in files.items()},
              "summary": summary})

    result = generate(guidance or backends.prepare(request), config, Path(job["out_dir"]), callback=step,
                      should_stop=stop_file.exists, metadata=request.metadata(), time_limit_s=time_limit(job),
                      stage_progress=lambda stage, done, total: send({"event": "stage", "stage": stage,
                                                                      "done": done, "total": total}),
                      on_picture=on_picture, preview_res=job.get("preview_res"),
                      on_artefact=lambda key, path: send({"event": "artefact", "key": key,
                                                          "path": str(hold(path, held))}),
                      **rq.parse_exports(job.get("exports")).pipeline_kwargs())
    return {"cancelled": result["cancelled"], "files": {key: str(path) for key, path in result["files"].items()},
            "summary": json.loads(json.dumps(result["summary"], default=str)),
            "fingerprint": scene_fingerprint(result["scene"])}


def encode_image(image) -> dict:
    """A uint8 [H, W, 3] array as plain data (``decode_image`` reverses it)."""
    import base64

    return {"shape": list(image.shape), "data": base64.b64encode(image.tobytes()).decode("ascii")}


def decode_image(data: dict):
    """``encode_image``'s array again."""
    import base64

    import numpy as np

    return np.frombuffer(base64.b64decode(data["data"]), dtype=np.uint8).reshape(data["shape"])


def main(argv: list[str] | None = None) -> None:
    """The worker process: jobs from stdin, events to stdout (anything else
    written to stdout, by Python or a library, goes to stderr); exits on stdin EOF."""
    if os.environ.get(PARENT_ENV, "").isdigit():
        _die_with_parent(int(os.environ[PARENT_ENV]))
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    import torch

    from . import backends
    from . import request as rq

    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    warm = json.loads(argv[0]) if argv else None
    if warm is not None:
        try:
            backends.warm_up(rq.parse_request(warm))
        except Exception:  # noqa: BLE001 - a job will report the same problem with its own message
            traceback.print_exc()

    def send(event: dict) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    send({"event": "ready"})
    serve(sys.stdin, send)


if __name__ == "__main__":
    main()
