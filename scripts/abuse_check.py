"""The public Space's reliability run: ``python app.py`` on loopback, driven by
gradio_client, under abuse, load and injected faults.

    python scripts/abuse_check.py --json outputs/abuse.json                  # 16 sessions × 5 min
    python scripts/abuse_check.py --sessions 4 --minutes 1 --json /tmp/a.json  # a short one

Everything stays on this machine (127.0.0.1), bounded in count and time, and
stops by itself; exit status 1 if a check fails. The report (JSON) holds:

1. **Abuse**: a maximal /generate and /compare refused with the budget message;
   one request per session and ``CFD_MAX_PER_CLIENT`` per address; the REST
   route (``POST /gradio_api/run/generate``) closed; a run past the request's
   time limit keeps its result; a decoy folder beside the runs folder untouched.
2. **Load**: ``--sessions`` client sessions (three to an address, as
   ``X-Forwarded-For`` says, which the app trusts here) loop Generate / Compare /
   Generate-then-cancel with small requests for ``--minutes``; every finished
   request's files are read back (PLY, MP4, GIF, JSON), every refusal must carry
   the budget or busy message; p50/p95 of the time from submit to result.
3. **Faults**, while the load runs: a stale lock in the C++ kernel's build folder
   (the app must build it at start-up anyway, without a request waiting); a
   Compare worker killed with SIGKILL mid-run; the runs folder, a small tmpfs,
   filled up and then freed; a client killed mid-run (its run must end and its
   address's place be freed); the REST route; a request just under the budget
   with ``densify_every=1``.
4. **Nothing lost, nothing leaked**: after the load, no worker process left (the
   app's and, after it exits, any), nothing left in the app's temp folder (its
   own TMPDIR), the runs folder holding only published results, the app's RSS
   within 20 % of its warmed-up start, a default request as quick as at the start.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # cfd, when run as a script
LIMIT_S = 30            # CFD_RUN_LIMIT_S: one request's wall-clock limit in this run
MAXIMAL = dict(steps=3000, views=8, res=128)
SMALL = dict(steps=40, res=32, views=2)
BUSY = ("already has a request", "your address already has", "allows 24×", "Queue is full")
TMPFS_MB = 48
OUTCOMES = ("done", "refused", "cancelled", "failed_as_injected", "failed", "broken")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: relative path → (size, mtime ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append((int(stat.parent.name), (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                            .decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            pass
    return out


def workers_alive() -> list[int]:
    """Pids of every live ``cfd.workers`` process on this machine."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"cfd.workers" in cmd.read_bytes() and "Z" not in (cmd.parent / "stat").read_text().rsplit(")", 1)[1][:3]:
                pids.append(int(cmd.parent.name))
        except OSError:
            pass
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample_rss(pid: int, curve: list, threads: list[threading.Thread], every_s: float = 5.0) -> None:
    """Append (seconds, RSS MB) of ``pid`` to ``curve`` until ``threads`` end."""
    t0 = time.monotonic()
    while any(t.is_alive() for t in threads):
        curve.append((time.monotonic() - t0, rss_mb(pid)))
        time.sleep(every_s)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def readable(paths) -> tuple[bool, str]:
    """Whether every file opens as what its name says (PLY, MP4, GIF/PNG, JSON)."""
    import imageio.v3 as iio

    from cfd.gaussians import load_ply

    for path in map(Path, paths):
        try:
            if path.suffix == ".ply":
                assert len(load_ply(path)) > 0
            elif path.suffix in (".mp4", ".gif", ".png"):
                assert iio.imread(path, index=0).size > 0
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".glb":
                assert path.stat().st_size > 0
        except Exception as exc:  # noqa: BLE001 - the report says which file and why
            return False, f"{path.name}: {type(exc).__name__}: {exc}"
    return True, ""


class Load:
    """The client sessions and what happened to each of their requests."""

    def __init__(self, url: str, downloads: Path, sessions: int, seconds: float, seed: int = 0):
        self.url, self.downloads, self.sessions, self.seconds = url, downloads, sessions, seconds
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.end = time.monotonic() + seconds
        self.fault: str | None = None    # the fault being injected now (its failures are expected)
        self.workers_seen: set[int] = set()

    def client(self, address: str):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.downloads),
                      headers={"X-Forwarded-For": address})

    def record(self, **entry) -> dict:
        if entry["outcome"] == "failed" and self.fault == "disk full" and "disk is full" in entry.get("message", ""):
            entry["outcome"] = "failed_as_injected"
        with self.lock:
            self.records.append(entry)
        return entry

    def session(self, k: int) -> None:
        client = self.client(f"198.51.100.{k % max(1, self.sessions // 3)}")   # three sessions to an address
        rng = random.Random(k)
        while time.monotonic() < self.end:
            kind = rng.choices(["generate", "compare", "cancel"], [6, 2, 2])[0]
            answer = self.request(client, kind, seed=rng.randrange(1000), cancel_after=rng.uniform(1, 6))
            time.sleep(rng.uniform(2, 5) if answer["outcome"] == "refused" else rng.uniform(0, 1))  # as people do
        client.close()

    def request(self, client, kind: str, seed: int, cancel_after: float = 3.0, **extra) -> dict:
        t0 = time.monotonic()
        try:
            if kind == "compare":
                job = client.submit(prompt="a cactus", seed=seed, n_seeds=2, methods=["cfd", "sds"],
                                    **{**SMALL, **extra}, api_name="/compare")
            else:
                job = client.submit(prompt="a rocket", seed=seed, **{**SMALL, **extra}, api_name="/generate")
            if kind == "cancel":
                time.sleep(cancel_after)
                job.cancel()
                try:
                    job.result(timeout=120)
                except Exception:  # noqa: BLE001 - a cancelled job may end either way
                    pass
                return self.record(kind=kind, outcome="cancelled", seconds=time.monotonic() - t0)
            out = job.result(timeout=900)
        except Exception as exc:  # noqa: BLE001 - classified below
            message = str(exc)
            outcome = "refused" if any(b in message for b in BUSY) else "failed"
            return self.record(kind=kind, outcome=outcome, message=message[:300], seconds=time.monotonic() - t0)
        seconds = time.monotonic() - t0
        if kind == "compare":
            gallery, _, status = out
            files = [item["image"] if isinstance(item, dict) else item[0] for item in gallery or []]
            files = [f["path"] if isinstance(f, dict) else f for f in files]
            ok, why = readable(files)
            return self.record(kind=kind, outcome="done" if ok and len(files) == 4 else "broken", seconds=seconds,
                               files=len(files), message=why or status[:200])
        viewer, render, noise, summary, downloads, status = out
        if summary and summary.get("cancelled"):
            return self.record(kind=kind, outcome="cancelled", seconds=seconds)
        files = [viewer, render, noise, *(downloads or [])]
        ok, why = readable([f for f in files if f])
        complete = all(files[:3]) and len(downloads or []) >= 4
        return self.record(kind=kind, outcome="done" if ok and complete else "broken", seconds=seconds,
                           files=len(files), message=why or status[:200])

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.session, args=(k,), daemon=True) for k in range(self.sessions)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        return threads


def rest_route(url: str) -> dict:
    """POST to the REST route that skips the queue: it must not start a run."""
    import httpx

    response = httpx.post(f"{url}gradio_api/run/generate", json={"data": [None] * 14}, timeout=30)
    return {"status": response.status_code, "closed": response.status_code >= 400, "body": response.text[:200]}


def abuse_checks(load: Load, url: str) -> dict:
    """The refusals a public Space needs, each with its message and timing."""
    from gradio_client import Client

    checks = {}
    a, b, c, d = (load.client(address) for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.3"))

    def refused(call) -> tuple[bool, str, float]:
        t0 = time.perf_counter()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the refusal is what is measured
            return True, str(exc), time.perf_counter() - t0
        return False, "", time.perf_counter() - t0

    ok, msg, s = refused(lambda: a.predict(**MAXIMAL, api_name="/generate"))
    checks["maximal_generate"] = {"passed": ok and "allows 24×" in msg, "seconds": round(s, 3), "message": msg}
    ok, msg, s = refused(lambda: a.predict(**MAXIMAL, n_seeds=4, methods=["cfd", "cfd-sde", "sds", "iid", "fixed2d"],
                                          api_name="/compare"))
    checks["maximal_compare"] = {"passed": ok and "allows 24×" in msg, "seconds": round(s, 3), "message": msg}
    ok, msg, s = refused(lambda: a.predict(steps=180, densify_every=1, api_name="/generate"))   # 22.5 units
    checks["dense_over_budget"] = {"passed": not ok, "note": "180 steps × densify_every=1 is 22.5 units: admitted"}
    ok, msg, s = refused(lambda: a.predict(steps=200, densify_every=1, api_name="/generate"))
    checks["dense_refused"] = {"passed": ok and "50000 splats" in msg, "message": msg}
    checks["rest_route"] = {**rest_route(url)}
    checks["rest_route"]["passed"] = checks["rest_route"]["closed"]

    t0 = time.perf_counter()
    long_a = a.submit(prompt="a toy", seed=1, steps=3000, api_name="/generate")          # runs into the limit
    time.sleep(2)
    queued_c = c.submit(prompt="a cactus", seed=3, steps=100, api_name="/generate")      # waits in the queue
    time.sleep(1)
    second = {}
    for name, client in (("a", a), ("c", c)):
        ok, msg, s = refused(lambda: client.predict(prompt="a toy", steps=10, api_name="/generate"))
        second[name] = {"refused": ok and "already has a request" in msg, "seconds": round(s, 3)}
    checks["one_request_per_session"] = {"passed": all(v["refused"] for v in second.values()), **second}
    d_job = d.submit(prompt="a toy", steps=10, api_name="/generate")   # c's address: its second place
    ok, msg, s = refused(lambda: Client(load.url, verbose=False, headers={"X-Forwarded-For": "203.0.113.3"})
                         .predict(prompt="a toy", steps=10, api_name="/generate"))
    checks["per_address"] = {"passed": ok and "your address already has 2" in msg, "message": msg}
    *_, summary_a, files_a, status_a = long_a.result(timeout=600)
    checks["time_limit"] = {"stopped_by": summary_a.get("stopped_by"), "steps_done": summary_a.get("steps_done"),
                            "seconds": round(time.perf_counter() - t0, 1), "files": len(files_a or []),
                            "passed": summary_a.get("stopped_by") == "time limit" and len(files_a or []) >= 4}
    for job in (queued_c, d_job):
        job.result(timeout=600)
    checks["queued_answered"] = {"passed": True, "seconds_from_start": round(time.perf_counter() - t0, 1)}
    for client in (a, b, c, d):
        client.close()
    return checks


def client_killed(load: Load) -> dict:
    """A client killed mid-run (no other request waiting, so its run is running):
    the run ends and both of its address's places come back."""
    script = ("import sys, time; from gradio_client import Client; c = Client(sys.argv[1], verbose=False, "
              "headers={'X-Forwarded-For': '192.0.2.201'}); c.submit(prompt='a toy', steps=2000, "
              "api_name='/generate'); time.sleep(600)")
    gone = subprocess.Popen([sys.executable, "-c", script, load.url])
    time.sleep(15)
    gone.kill()
    gone.wait()
    pair = [load.client("192.0.2.201") for _ in range(2)]   # two at once: the killed client's place must be free
    results = [None, None]
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, load.request(pair[k], "generate", seed=k)))
               for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in pair:
        client.close()
    answers = [r["outcome"] for r in results]
    return {"next_requests": answers, "passed": answers == ["done", "done"]}


def worker_killed(load: Load, client, server: subprocess.Popen) -> dict:
    """A Compare worker killed with SIGKILL mid-run: the comparison fails with
    the reason, and the next one runs on a fresh worker."""
    job = client.submit(prompt="a cactus", seed=7, n_seeds=2, methods=["cfd", "sds"], steps=400, res=32, views=2,
                        api_name="/compare")
    killed = []
    for _ in range(1800):
        workers = [pid for pid, cmd in children(server.pid) if "cfd.workers" in cmd]
        if workers and job.status().code.name in ("PROCESSING", "ITERATING", "PROGRESS"):   # running
            time.sleep(3)
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            break
        time.sleep(0.5)
    try:
        job.result(timeout=900)
        message = "it finished"
    except Exception as exc:  # noqa: BLE001 - the failure's message is the point
        message = str(exc)
    after = load.request(client, "compare", seed=8)
    return {"killed": killed, "message": message[:300], "next_compare": after["outcome"],
            "passed": bool(killed) and "worker" in message.lower() and after["outcome"] == "done"}


def disk_full(load: Load, client, runs_parent: Path) -> dict:
    """The runs folder's file system filled up: requests are refused with a
    message that says so (the load's too, while it lasts); once it is freed,
    runs succeed again."""
    filler = runs_parent / "filler"
    load.fault = "disk full"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={TMPFS_MB}"], capture_output=True)
    full = [load.request(client, "generate", seed=9) for _ in range(2)]
    filler.unlink()
    load.fault = None
    after = load.request(client, "generate", seed=10)
    return {"while_full": [(r["outcome"], r.get("message", "")[:160]) for r in full], "after": after["outcome"],
            "passed": all(r["outcome"] == "failed_as_injected" for r in full) and after["outcome"] == "done"}


def faults(load: Load, server: subprocess.Popen, runs_parent: Path) -> dict:
    """The faults injected while the load runs, one after another."""
    client = load.client("192.0.2.200")
    out = {"worker_killed": worker_killed(load, client, server), "disk_full": disk_full(load, client, runs_parent)}
    out["rest_route_under_load"] = rest_route(load.url)
    out["rest_route_under_load"]["passed"] = out["rest_route_under_load"]["closed"]
    dense = load.request(client, "generate", seed=12, steps=180, densify_every=1)
    out["dense_just_under_budget"] = {**{k: dense[k] for k in ("outcome", "seconds")},
                                      "passed": dense["outcome"] == "done"}
    client.close()
    return out


def mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def prepare(work: Path) -> dict:
    """The work folder's parts: the clients' temp folder (gradio_client leaves an
    empty folder in the temp folder per downloaded file: kept apart, so the leak
    check sees the server's own), the runs folder (a small tmpfs shared with a
    user's files, one an old ``run-*`` folder the sweep must not touch) and a
    fresh kernel folder holding a dead builder's leftover locks."""
    (work / "client-tmp").mkdir()
    tempfile.tempdir = str(work / "client-tmp")
    os.environ["TMPDIR"] = tempfile.tempdir   # the killed client's process too
    runs_parent = work / "runs"
    mounted = mount_tmpfs(runs_parent)
    theirs = runs_parent / "run-20000101-000000-0ther0ne"
    theirs.mkdir(parents=True)
    (theirs / "theirs.txt").write_text("not cfd's\n")
    (runs_parent / "notes.txt").write_text("a user's file\n")
    os.utime(theirs, (0, 0))
    from cfd.cpu_kernel import NAME, source_hash

    stale = work / "kernels" / f"{NAME}_{source_hash()}"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")           # torch's FileBaton of a killed build
    (stale / "build.flock").write_text("")
    return {"work": work, "runs_parent": runs_parent, "mounted": mounted, "kernels": work / "kernels",
            "before": listing(runs_parent)}


def start_server(work: Path, parts: dict) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free loopback port over the prepared folders; (process, url) once it answers."""
    from gradio_client import Client

    port = free_port()
    (work / "server-tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(work / "server-tmp"), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "CFD_RUNS_DIR": str(parts["runs_parent"]),
           "CFD_RUN_LIMIT_S": str(LIMIT_S), "HF_HUB_OFFLINE": "1", "CFD_MODEL": str(work / "no-sd-weights"),
           "CFD_TRUST_FORWARDED": "1", "CFD_KERNEL_DIR": str(parts["kernels"]),
           "GRADIO_TEMP_DIR": str(work / "gradio"), "CFD_QUEUE_SIZE": "64"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(work / "server.log", "w"))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(480):
        try:
            Client(url, verbose=False).close()
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    return server, url


def default_run(load: Load) -> dict:
    return load.request(load.client("192.0.2.1"), "generate", seed=0, steps=None, res=None, views=None)


def exercise(load: Load, server: subprocess.Popen, parts: dict, started: float, report: dict) -> None:
    """Cold start, abuse, then load with faults; then the app after it, into ``report``."""
    say("server up; the first default run")
    first = default_run(load)
    report["cold_start"] = {"first_default_run_s": round(time.monotonic() - started, 1), "outcome": first["outcome"],
                            "kernel_built": any(parts["kernels"].rglob("*.so"))}
    report["default_run_s_start"] = round(default_run(load)["seconds"], 2)
    say("abuse checks")
    report["abuse"] = abuse_checks(load, load.url)
    say("a client killed mid-run")
    report["abuse"]["client_killed_mid_run"] = client_killed(load)
    warm = load.client("192.0.2.2")   # one request of each kind the load sends: caches and workers warm
    for kind in ("generate", "compare", "cancel"):
        load.request(warm, kind, seed=0)
    warm.close()
    rss_start = rss_mb(server.pid)
    report["server_temp_warm"] = sorted(os.listdir(parts["work"] / "server-tmp"))   # torch's own caches
    say("load and faults")
    load.end = time.monotonic() + load.seconds
    threads = load.run()
    rss_curve: list[tuple[float, float]] = []   # (seconds into the load, MB) every 5 s: a leak grows, a cache settles
    sampler = threading.Thread(target=sample_rss, args=(server.pid, rss_curve, threads), daemon=True)
    sampler.start()
    report["faults"] = faults(load, server, parts["runs_parent"])
    while any(t.is_alive() for t in threads):
        load.workers_seen.update(pid for pid, cmd in children(server.pid) if "cfd.workers" in cmd)
        time.sleep(1)
    done = [r["seconds"] for r in load.records if r["outcome"] == "done"]
    report["load"] = {"requests": len(load.records),
                      **{o: sum(r["outcome"] == o for r in load.records) for o in OUTCOMES},
                      "p50_s": percentile(done, 0.5), "p95_s": percentile(done, 0.95),
                      "unexpected": [r for r in load.records if r["outcome"] in ("failed", "broken")][:10]}
    say("after the load")
    time.sleep(5)
    active = [p.name for p in (parts["runs_parent"] / "cfd-runs").glob("run-*")]
    end = default_run(load)
    rss_end = rss_mb(server.pid)
    load.workers_seen.update(pid for pid, cmd in children(server.pid) if "cfd.workers" in cmd)
    sampler.join()
    thirds = [max(mb for t, mb in rss_curve if k * load.seconds / 3 <= t < (k + 1) * load.seconds / 3 + 5)
              for k in range(3)] if rss_curve else []
    report["after"] = {"rss_mb_start": round(rss_start), "rss_mb_end": round(rss_end),
                       "rss_mb_peak_per_third_of_the_load": [round(mb) for mb in thirds],
                       "rss_within_20pct": rss_end <= 1.2 * rss_start, "default_run_s_end": round(end["seconds"], 2),
                       "default_run_as_quick": end["outcome"] == "done"
                       and end["seconds"] <= 1.5 * report["default_run_s_start"] + 2, "run_folders_left": active}


def leaks(parts: dict, work: Path, workers_seen: set[int], warm_entries: list[str]) -> dict:
    """What the app left after it exited: worker processes, entries in its temp
    folder (its TMPDIR) beyond those it had once warmed up (``warm_entries``:
    e.g. torch's compiler cache folder), files in the runs folder."""
    after = listing(parts["runs_parent"])
    outside = {k: v for k, v in parts["before"].items() if not k.startswith("cfd-runs")}
    return {"workers_seen": sorted(workers_seen), "workers_alive": workers_alive(),
            "server_temp_entries": sorted(set(os.listdir(work / "server-tmp")) - set(warm_entries)),
            "decoy_unchanged": outside == {k: v for k, v in after.items() if not k.startswith("cfd-runs")},
            "runs_folder_entries": [k for k in after if k.startswith("cfd-runs/") and k != "cfd-runs/.cfd-runs"]}


def passed(report: dict) -> bool:
    load, after, left = report["load"], report["after"], report["leaks"]
    return bool(all(v["passed"] for v in report["abuse"].values()) and all(v["passed"] for v in report["faults"].values())
                and load["failed"] == load["broken"] == 0 and load["done"] > 0 and report["tmpfs"]
                and report["cold_start"]["outcome"] == "done" and after["rss_within_20pct"]
                and after["default_run_as_quick"] and not after["run_folders_left"] and not left["workers_alive"]
                and not left["server_temp_entries"] and left["decoy_unchanged"]
                and not left["runs_folder_entries"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, downloads)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cfd-abuse-"))
    parts = prepare(work)
    report = {"sessions": args.sessions, "minutes": args.minutes, "limit_s": LIMIT_S, "tmpfs": parts["mounted"]}
    started = time.monotonic()
    server, url = start_server(work, parts)
    load = Load(url, work / "dl", args.sessions, args.minutes * 60)
    try:
        exercise(load, server, parts, started, report)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        time.sleep(2)
        report["leaks"] = leaks(parts, work, load.workers_seen, report.get("server_temp_warm", []))
        if parts["mounted"]:
            subprocess.run(["umount", str(parts["runs_parent"])], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["passed"] = passed(report)
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
