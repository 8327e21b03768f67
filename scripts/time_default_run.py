"""Wall time of the app's default run and default seed comparison through its
API (gradio_client), with the breakdown from run.json:
`.venv/bin/python scripts/time_default_run.py [N [M]] [--cold]`.

Warm (the default): starts the app on a free local port (exact prior, no SD
weights), waits for its start-up warm-up (the exact prior's reference renders,
request.warm_up, and the worker processes), calls /generate with no parameters
(every value its backend's default) N times (default 2), then /compare with no
parameters (4 seeds × cfd and sds, with their GIFs) M times (default 0), and
prints one JSON line per call: the time to the first picture (the output with
the final render's viewer PLY and status) and to the last artefact (the call's
end), each from the request. The client runs in a process of its own, as a
user's does.

--cold: runs `python app.py` as a user does (its C++ kernels already built, as
`make` leaves them) and times, from that command, the server's first answer and
the first default /generate sent at once: its first picture and its end (no
request waits on a build: the app builds before it listens).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(n: int, m: int) -> None:
    """Start the app here, wait for its warm-up, then time it from a client in
    another process (as a user's browser is: the client's polling threads must
    not share this process's interpreter with the run)."""
    runs = Path(tempfile.mkdtemp(prefix="cfd-time-"))
    os.environ.setdefault("CFD_RUNS_DIR", str(runs))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CFD_EXAMPLE_CACHE", "0")   # nothing made ahead competes with the timed runs
    import app

    _, url, _ = app.demo.launch(**{**app.launch_kwargs(), "server_name": "127.0.0.1", "server_port": free_port(),
                                   "prevent_thread_lock": True, "quiet": True})
    t0 = time.perf_counter()
    app.wait_warm(app.RUNNER)
    app.RUNNER.workers.wait_ready()   # (a Compare's workers, also where a Generate runs in this process)
    print(json.dumps({"warm_up_s_after_launch": round(time.perf_counter() - t0, 2)}), flush=True)
    try:
        subprocess.run([sys.executable, __file__, "--client", url, str(n), str(m), str(runs / "downloads")],
                       check=True)
    finally:
        app.demo.close()
        app.RUNNER.workers.close()


def timed_generate(client) -> dict:
    """One default /generate: seconds to its first picture and to its end, and its run.json summary."""
    t0 = time.perf_counter()
    job = client.submit(api_name="/generate")
    first_picture = None
    for out in job:   # each output as it comes
        status = out[5] if isinstance(out[5], str) else ""
        if first_picture is None and status.startswith(("**Distilled**", "**Done**")):
            first_picture = time.perf_counter() - t0
    *_, summary, _, _ = job.result()
    return {"first_picture_s": round(first_picture, 2), "api_wall_s": round(time.perf_counter() - t0, 2),
            "summary": summary}


def client(url: str, n: int, m: int, downloads: str) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=downloads)
    try:
        for i in range(n):
            run = timed_generate(client)
            summary = run.pop("summary")
            print(json.dumps({"run": i, **run, "timings_s": summary["timings_s"],
                              "request": {k: summary[k] for k in ("prompt", "steps", "res", "views",
                                                                  "guidance_scale")},
                              "nearest": summary.get("nearest"), "nearest_psnr": summary.get("nearest_psnr"),
                              "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}), flush=True)
        for i in range(m):
            t0 = time.perf_counter()
            gallery, table, status = client.predict(api_name="/compare")
            print(json.dumps({"compare": i, "api_wall_s": round(time.perf_counter() - t0, 2), "runs": len(gallery),
                              "status": status, "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)
            print(table, flush=True)
    finally:
        client.close()


def cold() -> None:
    """`python app.py` from nothing running: seconds to the server's first answer,
    and to the first picture and the end of a default /generate sent at once."""
    from gradio_client import Client

    runs = Path(tempfile.mkdtemp(prefix="cfd-cold-"))
    port = free_port()
    env = {**os.environ, "CFD_RUNS_DIR": str(runs), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_EXAMPLES_CACHE": str(runs / "examples")}   # an empty example cache, as a new Space has
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"app.py exited with status {server.returncode}")
                time.sleep(0.1)
        up = time.perf_counter() - t0
        c = Client(url, verbose=False, download_files=str(runs / "downloads"))
        run = timed_generate(c)
        c.close()
        print(json.dumps({"cold_start": True, "server_answers_s": round(up, 2),
                          "first_picture_s": round(up + run["first_picture_s"], 2),
                          "first_run_done_s": round(time.perf_counter() - t0, 2),
                          "timings_s": run["summary"]["timings_s"], "load_avg_1min": round(os.getloadavg()[0], 2),
                          "cpus": os.cpu_count()}), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif "--cold" in sys.argv[1:]:
        cold()
    else:
        serve(*(int(a) for a in sys.argv[1:3]))
