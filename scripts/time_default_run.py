"""Wall time of the app's default run and default seed comparison through its
API (gradio_client), with the breakdown from run.json:
`.venv/bin/python scripts/time_default_run.py [N [M]]`.

Starts the app on a free local port (exact prior, no SD weights), waits for its
start-up warm-up (the exact prior's reference renders, request.warm_up, and the
Compare worker processes), calls /generate with no parameters (every value its
backend's default) N times (default 2), then /compare with no parameters (4
seeds × cfd and sds, with their GIFs) M times (default 0), and prints one JSON
line per call. The client runs in a process of its own, as a user's does.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def serve(n: int, m: int) -> None:
    """Start the app here, wait for its warm-up, then time it from a client in
    another process (as a user's browser is: the client's polling threads must
    not share this process's interpreter with the run)."""
    runs = Path(tempfile.mkdtemp(prefix="cfd-time-"))
    os.environ.setdefault("CFD_RUNS_DIR", str(runs))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.demo.launch(**{**app.launch_kwargs(), "server_name": "127.0.0.1", "server_port": port,
                                   "prevent_thread_lock": True, "quiet": True})
    t0 = time.perf_counter()
    for thread in threading.enumerate():
        if thread.name == "cfd-warm-up":
            thread.join()
    app.RUNNER.workers.wait_ready()
    print(json.dumps({"warm_up_s_after_launch": round(time.perf_counter() - t0, 2)}), flush=True)
    try:
        subprocess.run([sys.executable, __file__, "--client", url, str(n), str(m), str(runs / "downloads")],
                       check=True)
    finally:
        app.demo.close()
        app.RUNNER.workers.close()


def client(url: str, n: int, m: int, downloads: str) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=downloads)
    try:
        for i in range(n):
            t0 = time.perf_counter()
            *_, summary, _, _ = client.predict(api_name="/generate")
            wall = time.perf_counter() - t0
            print(json.dumps({"run": i, "api_wall_s": round(wall, 2), "timings_s": summary["timings_s"],
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        serve(*(int(a) for a in sys.argv[1:3]))
