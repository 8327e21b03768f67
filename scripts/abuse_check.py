"""The public-Space abuse run: ``python app.py`` on loopback, driven by gradio_client.

    python scripts/abuse_check.py --json outputs/abuse.json

Checks (each reported with its numbers; exit status 1 if one fails):
1. a maximal /generate (3000 steps × 8 views × 128 px) and a maximal /compare
   (the same × 4 seeds × 5 methods) are refused with the budget message, and
   how long each refusal took;
2. a run past its wall-clock limit (CFD_RUN_LIMIT_S, set low here) stops and
   keeps its result (files, ``stopped_by``);
3. two sessions each hold at most one request: a second request of either is
   refused while its first is queued or running;
4. a normal request of a third session is answered while all this goes on;
5. nothing outside the runs' own folder is read, written or deleted: a decoy
   folder beside it (with an old ``run-*`` folder the sweep must not touch) is
   listed before and after.
Bounded: loopback only, a handful of requests, a few minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 8
MAXIMAL = dict(steps=3000, views=8, res=128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: relative path → (size, mtime ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def refused(call) -> tuple[bool, str, float]:
    """(refused, message, seconds) of one call expected to be refused."""
    t0 = time.perf_counter()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the refusal is what is measured
        return True, str(exc), time.perf_counter() - t0
    return False, "", time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="cfd-abuse-"))
    decoy = work / "shared"                       # CFD_RUNS_DIR: a shared folder with other people's files
    (decoy / "run-20000101-000000-0ther0ne").mkdir(parents=True)
    (decoy / "run-20000101-000000-0ther0ne" / "theirs.txt").write_text("not cfd's\n")
    (decoy / "notes.txt").write_text("a user's file\n")
    os.utime(decoy / "run-20000101-000000-0ther0ne", (0, 0))
    before = listing(decoy)
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "CFD_RUNS_DIR": str(decoy), "CFD_RUN_LIMIT_S": str(LIMIT_S), "HF_HUB_OFFLINE": "1",
           "CFD_MODEL": str(work / "no-sd-weights")}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(work / "server.log", "w"))
    url, checks = f"http://127.0.0.1:{port}/", {}
    try:
        for _ in range(240):
            try:
                a = Client(url, verbose=False, download_files=str(work / "dl"))
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        b, c = (Client(url, verbose=False, download_files=str(work / "dl")) for _ in range(2))

        ok, msg, s = refused(lambda: a.predict(**MAXIMAL, api_name="/generate"))
        checks["maximal_generate"] = {"refused": ok and "allows 24×" in msg, "seconds": round(s, 3), "message": msg}
        ok, msg, s = refused(lambda: a.predict(**MAXIMAL, n_seeds=4, methods=["cfd", "cfd-sde", "sds", "iid",
                                                                              "fixed2d"], api_name="/compare"))
        checks["maximal_compare"] = {"refused": ok and "allows 24×" in msg, "seconds": round(s, 3), "message": msg}

        t0 = time.perf_counter()
        long_a = a.submit(prompt="a toy", seed=1, steps=3000, api_name="/generate")       # runs, hits the limit
        normal_c = c.submit(prompt="a rocket", seed=2, api_name="/generate")             # a normal request
        time.sleep(2)
        queued_b = b.submit(prompt="a cactus", seed=3, steps=100, api_name="/generate")   # waits in the queue
        time.sleep(1)
        second = {}
        for name, client in (("a", a), ("b", b)):
            ok, msg, s = refused(lambda: client.predict(prompt="a toy", steps=10, api_name="/generate"))
            second[name] = {"refused": ok and "already has a request" in msg, "seconds": round(s, 3)}
        checks["one_request_per_session"] = second

        *_, summary_a, _, status_a = long_a.result(timeout=600)
        files_a = [f for f in long_a.outputs()[-1][4] or []]
        checks["time_limit"] = {"stopped_by": summary_a.get("stopped_by"), "steps_done": summary_a.get("steps_done"),
                                "seconds": round(time.perf_counter() - t0, 1), "files": len(files_a),
                                "status": status_a, "kept": summary_a.get("stopped_by") == "time limit"
                                and not summary_a.get("cancelled") and len(files_a) >= 4}
        *_, summary_c, _, status_c = normal_c.result(timeout=600)
        checks["normal_request_answered"] = {"done": status_c.startswith("**Done**"),
                                             "seconds_from_start": round(time.perf_counter() - t0, 1),
                                             "nearest": summary_c.get("nearest")}
        *_, summary_b, _, status_b = queued_b.result(timeout=600)
        checks["queued_request_answered"] = {"done": status_b.startswith("**Done**"),
                                             "seconds_from_start": round(time.perf_counter() - t0, 1)}
        for client in (a, b, c):
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    after = listing(decoy)
    outside = {k: v for k, v in before.items() if not k.startswith("cfd-runs")}
    outside_after = {k: v for k, v in after.items() if not k.startswith("cfd-runs")}
    checks["decoy_untouched"] = {"unchanged": outside == outside_after, "entries": len(outside)}
    passed = all([checks["maximal_generate"]["refused"], checks["maximal_compare"]["refused"],
                  all(v["refused"] for v in checks["one_request_per_session"].values()),
                  checks["time_limit"]["kept"], checks["normal_request_answered"]["done"],
                  checks["queued_request_answered"]["done"], checks["decoy_untouched"]["unchanged"]])
    result = {"passed": passed, "limit_s": LIMIT_S, "checks": checks}
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
