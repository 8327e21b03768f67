"""Wall time of the app's default run through its API (gradio_client), with the
breakdown from run.json: `.venv/bin/python scripts/time_default_run.py [N]`.

Starts the app on a free local port (exact prior, no SD weights), calls
/generate with no parameters (every value its backend's default) N times (the
first includes building the prior and rendering its 64 training views) and
prints one JSON line per run.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(n: int = 2) -> None:
    runs = Path(tempfile.mkdtemp(prefix="cfd-time-"))
    os.environ.setdefault("CFD_RUNS_DIR", str(runs))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.demo.launch(**{**app.launch_kwargs(), "server_name": "127.0.0.1", "server_port": port,
                                   "prevent_thread_lock": True, "quiet": True})
    client = Client(url, verbose=False, download_files=str(runs / "downloads"))
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
    finally:
        client.close()
        app.demo.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
