"""Worker processes for runs that share out over CPU cores (a seed comparison).

One CPU run is many small tensor operations driven from Python, so two runs in
two threads of one process mostly wait for each other (the GIL); two processes
with one torch thread each use two cores. A ``WorkerPool`` keeps up to ``size``
worker processes (``python -m cfd.workers``), started on first use and kept for
later jobs, each with its own cached guidance (``cfd.backends``), warmed up for a
given request when it starts.

Protocol (JSON lines): the pool writes one job per line to a worker's stdin,
``{"job": id, "values": request values, "gif": path, "stop_file": path,
"time_limit_s": seconds or None}``; the
worker answers on stdout with ``{"job": id, "event": "step", "step", "steps", "t",
"n_splats"}`` lines, then one ``{"event": "done", "result": {...}}`` (see
``pipeline.compare_job``) or ``{"event": "error", "type", "message", "traceback"}``;
its first line, once warmed up, is ``{"event": "ready"}``.
A job stops at its next step once its ``stop_file`` exists, so Stop needs no
shared memory. A worker runs with one torch thread, so a job's result is bit for
bit what the same request gives alone with the runs' default of one thread.
Nothing here imports gradio.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

EventHandler = Callable[[dict], None]


class WorkerPool:
    """Up to ``size`` worker processes sharing one job queue."""

    def __init__(self, size: int):
        self.size, self.warm_values = max(1, int(size)), None
        self._jobs: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ready = threading.Semaphore(0)

    def start(self, warm_values: dict | None = None) -> None:
        """Start the workers now (they also start on the first ``submit``), each
        warming up for the request ``warm_values`` (plain values) if given."""
        with self._lock:
            if not self._threads:
                self.warm_values = warm_values
            while len(self._threads) < self.size and not self._closed:
                thread = threading.Thread(target=self._serve, name=f"cfd-worker-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has started and warmed up (False on timeout)."""
        self.start()
        acquired = [self._ready.acquire(timeout=timeout) for _ in range(self.size)]
        for ok in acquired:
            if ok:
                self._ready.release()
        return all(acquired)

    def submit(self, job: dict, on_event: EventHandler) -> None:
        """Queue ``job`` (``values``, ``gif``, ``stop_file``); ``on_event(event)`` gets its
        step events and then exactly one ``done`` or ``error`` event, from a pool thread."""
        self.start()
        self._jobs.put((job, on_event))

    def close(self) -> None:
        """Stop taking jobs and end the worker processes."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for proc in list(self._procs):
            if proc.poll() is None:
                proc.kill()

    def _spawn(self) -> subprocess.Popen | None:
        """A new worker process, once it says it is ready (None if it died first)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen([sys.executable, "-m", "cfd.workers", json.dumps(self.warm_values)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self._procs.append(proc)
        return proc if proc.stdout.readline() else None   # its {"event": "ready"} once warmed up

    def _serve(self) -> None:
        proc = self._spawn()
        self._ready.release()
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, on_event = item
            if proc is None or proc.poll() is not None:
                proc = self._spawn()
            try:
                if proc is None:
                    raise OSError("the worker process ended before it was ready")
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
                for line in proc.stdout:
                    event = json.loads(line)
                    on_event(event)
                    if event["event"] in ("done", "error"):
                        break
                else:
                    raise OSError(f"the worker process ended (exit status {proc.wait()})")
            except (OSError, ValueError) as exc:  # a dead worker: report the job, start a new one next time
                on_event({"job": job.get("job"), "event": "error", "type": "WorkerDied",
                          "message": f"a worker process failed ({exc})", "traceback": ""})
                proc = None


def main(argv: list[str] | None = None) -> None:
    """The worker process: jobs from stdin, events to stdout (anything else the
    run prints goes to stderr)."""
    import torch

    from . import backends
    from . import request as rq
    from .pipeline import compare_job

    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout
    sys.stdout = sys.stderr
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
    for line in sys.stdin:
        job = json.loads(line)
        stop_file = Path(job["stop_file"])

        def step(info) -> bool:
            send({"job": job["job"], "event": "step", "step": info.step, "steps": info.steps, "t": info.t,
                  "n_splats": info.n_splats})
            return stop_file.exists()

        try:
            request = rq.parse_request(job["values"])
            # one thread beside the other workers: the scene is the same at any thread count
            config = replace(request.config(), cpu_threads=1)
            result = compare_job(config, backends.prepare(request), Path(job["gif"]), step, stop_file.exists,
                                 time_limit_s=job.get("time_limit_s"))
            send({"job": job["job"], "event": "done", "result": result})
        except Exception as exc:  # noqa: BLE001 - handed to the pool, which re-raises it for the consumer
            send({"job": job["job"], "event": "error", "type": type(exc).__name__, "message": str(exc),
                  "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
