"""``python -m cfd batch``: planning, sharing, atomic job folders, resume,
isolation of failures, index.json / index.html; one and two processes (torchrun, gloo)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfd.batch import (ERROR_JSON, Job, completed, contact_sheet, owner, pending_jobs, plan, read_prompts,
                       record_failure, slugify, sweep)
from cfd.request import RequestError, parse_seeds

REPO = Path(__file__).resolve().parents[1]


def state_of(folder: Path) -> str:
    """"ok" (complete run.json), "failed" (error.json) or "pending"."""
    if completed(folder) is not None:
        return "ok"
    return "failed" if (folder / ERROR_JSON).is_file() else "pending"
SMALL = ["--steps", "30", "--video-frames", "4", "--video-res", "64", "--glb-res", "32"]


def batch(out: Path, prompts: Path, *args: str, nproc: int = 1, wait: bool = True):
    """Run the batch command in a subprocess (under torchrun when nproc > 1)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "cfd", "batch", str(prompts), *SMALL, *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0


def prompts_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def visible_job_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*/*") if p.is_dir() and not p.name.startswith(".")
                  and not p.parent.name.startswith("."))


def index(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


# ------------------------------------------------------------------ planning (no runs)

def test_prompts_seeds_and_job_order(tmp_path):
    path = prompts_file(tmp_path, "# my prompts", "a rubber duck", "", "  a   toy rocket ", "a rubber duck", "#x")
    assert read_prompts(path) == ["a rubber duck", "a toy rocket"]
    with pytest.raises(RequestError, match="no prompts"):
        read_prompts(prompts_file(tmp_path, "# only a comment", ""))
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    jobs = plan(["a rubber duck", "a toy rocket"], [0, 1], ["cfd", "sds"])
    assert [j.path for j in jobs[:4]] == ["a-rubber-duck/cfd-seed0", "a-rubber-duck/sds-seed0",
                                          "a-rubber-duck/cfd-seed1", "a-rubber-duck/sds-seed1"]
    a, b = plan(["A toy!", "a toy?"], [0], ["cfd"])   # colliding slugs stay apart, deterministically
    assert a.slug != b.slug and a.slug.startswith("a-toy-") and plan(["A toy!", "a toy?"], [0], ["cfd"])[0] == a
    assert slugify("  Ünïcode / only?? ") == "n-code-only" and slugify("!!!") == "prompt"


def test_sharing_is_balanced_and_mixes_methods():
    for n in range(1, 30):
        for world in (1, 2, 3, 8):
            counts = [sum(owner(p, world) == r for p in range(n)) for r in range(world)]
            assert max(counts) - min(counts) <= 1 and sum(counts) == n
    # 2 methods on 2 processes: each process gets both methods (plain jobs[r::2] would not)
    jobs = plan(["a toy"], [0, 1, 2, 3], ["cfd", "sds"])
    for rank in (0, 1):
        assert {j.method for p, j in enumerate(jobs) if owner(p, 2) == rank} == {"cfd", "sds"}


def test_failure_record_is_atomic_and_staging_is_swept(tmp_path):
    folder = tmp_path / "a-toy" / "cfd-seed0"
    record_failure(folder, {"status": "failed", "error": "boom"})
    assert state_of(folder) == "failed" and [p.name for p in folder.iterdir()] == ["error.json"]
    record_failure(folder, {"status": "failed", "error": "again"})  # replaces the earlier record
    assert json.loads((folder / "error.json").read_text())["error"] == "again"
    stale = tmp_path / "a-toy" / ".cfd-seed1.partial-0123abcd"
    stale.mkdir()
    (stale / "scene.ply").write_text("half")
    assert visible_job_folders(tmp_path) == [folder]        # a staging folder is never a visible job folder
    assert sweep(tmp_path) == 1 and not stale.exists() and folder.exists()
    half_index = tmp_path / ".index.4242.partial.html"         # a killed index write (export.atomic_path)
    half_index.write_text("<html")
    (tmp_path / "index.html").write_text("<html></html>")
    assert sweep(tmp_path) == 1 and not half_index.exists() and (tmp_path / "index.html").exists()


def test_resume_refuses_other_options(tmp_path):
    job = Job("a toy", "a-toy", 0, "cfd")
    folder = tmp_path / job.path
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"prompt": "a toy", "seed": 0, "method": "cfd", "steps": 30,
                                                 "steps_done": 30, "cancelled": False, "files": {}}))
    assert pending_jobs(tmp_path, [job, Job("a toy", "a-toy", 1, "cfd")], {"steps": 30}) == [1]
    message = pending_jobs(tmp_path, [job], {"steps": 60})
    assert isinstance(message, str) and "steps: 30 there, 60 now" in message
    # export sizes are options too: a rerun with another --video-res does not mix videos of two sizes
    exports = {"video_frames": 4, "video_res": 64, "glb_resolution": 32, "ply_sh_degree": 0}
    (folder / "run.json").write_text(json.dumps({"prompt": "a toy", "seed": 0, "method": "cfd", "steps": 30,
                                                 "steps_done": 30, "cancelled": False, "files": {},
                                                 "exports": exports}))
    assert pending_jobs(tmp_path, [job], {"steps": 30, "exports": exports}) == []
    message = pending_jobs(tmp_path, [job], {"steps": 30, "exports": {**exports, "video_res": 128}})
    assert isinstance(message, str) and "exports:" in message and "'video_res': 128" in message


def test_the_progress_bar_reads_a_constant_number_of_folders_per_poll(tmp_path, monkeypatch):
    import cfd.batch as batch_module

    jobs = [Job("a toy", "a-toy", seed, "cfd") for seed in range(100)]
    reads = []
    monkeypatch.setattr(batch_module, "completed", lambda folder: reads.append(folder))
    progress = batch_module._Progress(tmp_path, jobs, list(range(100)))
    progress.stop.set()
    progress.thread.join()
    reads.clear()
    assert progress.finished(batch_module.POLL_FOLDERS) == [] and len(reads) == batch_module.POLL_FOLDERS
    second = set(reads[-batch_module.POLL_FOLDERS:])
    progress.finished(batch_module.POLL_FOLDERS)
    assert not second & set(reads[batch_module.POLL_FOLDERS:])   # round robin: the next folders, not the same
    progress.bar.close()


def test_contact_sheet_escapes_and_groups():
    jobs = [{"prompt": "a <b> toy", "seed": s, "method": m, "path": f"a-b-toy/{m}-seed{s}", "status": "ok",
             "seconds": 1.0, "nearest": "rocket", "nearest_psnr": 20.0, "preview": f"a-b-toy/{m}-seed{s}/preview.png",
             "files": {}} for m in ("cfd", "sds") for s in (0, 1)]
    page = contact_sheet({"jobs": jobs, "summary": {"jobs": 4, "ok": 4, "failed": 0, "missing": 0},
                          "config": {"backend": "exact"}})
    assert "a &lt;b&gt; toy" in page and "<b>" not in page.split("<h2>")[1]
    assert page.count("<h2>") == 1 and page.count("<tr><th>cfd</th>") == 1 and page.count("<img") == 4


# ------------------------------------------------------------------ real runs (CPU)

def test_two_processes_share_the_jobs_and_a_rerun_skips_them(tmp_path):
    out, prompts = tmp_path / "out", prompts_file(tmp_path, "a rubber duck", "a toy rocket")
    proc, first = batch(out, prompts, "--seeds", "0-1", nproc=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folders = visible_job_folders(out)
    assert len(folders) == 4
    for folder in folders:
        assert state_of(folder) == "ok"
        names = {p.name for p in folder.iterdir()}
        assert {"scene.ply", "viewer.ply", "render.mp4", "noise.mp4", "scene.glb", "preview.png", "run.json"} <= names
    data = index(out)
    assert data["summary"] == {"jobs": 4, "ok": 4, "failed": 0, "missing": 0, "ran": 4, "skipped": 0}
    assert sorted(j["batch"]["process"] for j in data["jobs"]) == [0, 0, 1, 1]   # each process did 2 jobs
    assert all(j["batch"]["processes"] == 2 and j["nearest"] for j in data["jobs"])
    page = (out / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 4 and all((out / src).is_file() for src in images)
    stamps = {f: (f / "run.json").stat().st_mtime_ns for f in folders}

    proc, rerun = batch(out, prompts, "--seeds", "0-1", nproc=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert index(out)["summary"]["skipped"] == 4 and index(out)["summary"]["ok"] == 4
    assert {f: (f / "run.json").stat().st_mtime_ns for f in folders} == stamps
    assert rerun < 0.6 * first, (rerun, first)


def test_a_killed_batch_completes_the_rest_on_rerun(tmp_path):
    out, prompts = tmp_path / "out", prompts_file(tmp_path, "a rubber duck", "a toy rocket")
    proc = batch(out, prompts, "--seeds", "0-1", wait=False)
    deadline = time.time() + 240
    try:
        while not list(out.glob("*/*/run.json")):
            assert proc.poll() is None and time.time() < deadline, "the batch ended before its first job"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    folders = visible_job_folders(out)
    assert 1 <= len(folders) < 4 and not (out / "index.json").exists()
    assert all(state_of(f) == "ok" for f in folders)   # nothing half-written is visible
    stamps = {f: (f / "run.json").stat().st_mtime_ns for f in folders}

    proc, _ = batch(out, prompts, "--seeds", "0-1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = index(out)["summary"]
    assert summary["ok"] == 4 and summary["ran"] == 4 - len(folders) and summary["skipped"] == len(folders)
    assert {f: (f / "run.json").stat().st_mtime_ns for f in folders} == stamps
    assert not list(out.rglob(".*"))   # the killed run's staging folder was swept


def test_a_bad_prompt_fails_alone_and_is_retried(tmp_path):
    out, prompts = tmp_path / "out", prompts_file(tmp_path, "a rubber duck", "a corgi")
    proc, _ = batch(out, prompts, "--seeds", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr      # the exit status counts the failed jobs
    jobs = {j["prompt"]: j for j in index(out)["jobs"]}
    assert jobs["a rubber duck"]["status"] == "ok"
    assert jobs["a corgi"]["status"] == "failed" and "does not know 'a corgi'" in jobs["a corgi"]["error"]
    error = json.loads((out / "a-corgi" / "cfd-seed0" / "error.json").read_text())
    assert error["attempts"] == 1 and error["error"].startswith("RequestError")
    assert "failed: RequestError" in (out / "index.html").read_text()

    proc, _ = batch(out, prompts, "--seeds", "0")   # a rerun retries the failure, skips the success
    assert proc.returncode == 1
    data = index(out)
    assert data["summary"]["skipped"] == 1 and data["summary"]["ran"] == 1
    assert json.loads((out / "a-corgi" / "cfd-seed0" / "error.json").read_text())["attempts"] == 2


def test_bad_options_are_refused_before_any_job(tmp_path):
    proc, _ = batch(tmp_path / "out", prompts_file(tmp_path, "a toy"), "--seeds", "0", "--steps", "5",
                    "--methods", "cfd,nope")
    assert proc.returncode == 2
    assert "steps must be an integer between 10 and 3000" in proc.stderr and "methods must be one of" in proc.stderr
    assert not (tmp_path / "out").exists()

