"""``python -m cfd batch PROMPTS.txt --seeds 0-7 --methods cfd,sds --out DIR``:
many prompts × seeds × methods, on one process or spread over processes, GPUs
and machines by ``torchrun`` / ``accelerate launch`` (accelerate's
``PartialState`` places the processes; gloo on CPU, NCCL on GPUs).

    DIR/<prompt-slug>/<method>-seed<k>/   one job: pipeline.generate's artefacts,
                                          preview.png and run.json (or error.json)
    DIR/index.json, DIR/index.html        every job, written by the main process

- Jobs: one per line of PROMPTS.txt (blank lines and ``#`` comments ignored)
  × seed × method, in that order. Every option, default and refusal is the
  request layer's (``cfd.request``): batch takes generate's options.
- Sharing: the main process lists the pending jobs and broadcasts the list;
  process r of w takes the jobs at positions p with ``owner(p, w) == r``, a
  serpentine round-robin (0 1 … w−1 w−1 … 1 0 …). Every process gets ⌈n/w⌉
  or ⌊n/w⌋ jobs, as with accelerate's ``split_between_processes``, but a mix
  of every prompt and every method instead of a contiguous block: costs vary
  with the method (its noise strategy) and with the scene a run grows
  (densification, the GLB), and a block puts whole prompts on one process.
  A plain ``jobs[r::w]`` would hand each process a single method whenever
  there are as many methods as processes; the serpentine does not.
- Atomic and resumable: ``pipeline.generate`` stages each job in a hidden
  folder and renames it into place; a failure is recorded the same way as a
  folder holding only ``error.json``. A rerun skips jobs whose run.json is
  complete and retries everything else (failed jobs included); hidden staging
  folders left by a killed run are removed when the next run starts.
- Isolation: an exception in one job (a prompt the exact prior does not know,
  CUDA out of memory …) is recorded and the others go on; missing weights or
  a bad option stop the batch before any job. The main process exits with the
  number of failed jobs (capped at 100; under a launcher, the launcher's own
  status is non-zero instead, the count is in index.json and the last line).
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import shutil
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .files import atomic_path
from .pipeline import HIDDEN_LEFTOVER, hidden_sibling, write_json
from .cli_options import add_generate_arguments, request_from_args
from .request import Problems, RequestError, parse_methods, parse_seeds
from .settings import setting

INDEX_JSON, INDEX_HTML, ERROR_JSON, RUN_JSON = "index.json", "index.html", "error.json", "run.json"
PER_JOB = ("prompt", "seed", "method")          # what a job sets; every other option is the batch's
MAX_EXIT = 100
POLL_FOLDERS = 32        # job folders the progress bar reads per second


@dataclass(frozen=True)
class Job:
    prompt: str
    slug: str
    seed: int
    method: str

    @property
    def path(self) -> str:
        """The job's folder, relative to the batch folder."""
        return f"{self.slug}/{self.method}-seed{self.seed}"


# ------------------------------------------------------------------ planning

def read_prompts(path) -> list[str]:
    """The prompts of a text file: one per line, blank lines and ``#`` comments
    ignored, whitespace collapsed, duplicates dropped (first kept)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestError(f"cannot read the prompts file {path}: {exc}") from None
    lines = (" ".join(line.split()) for line in text.splitlines())
    prompts = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not prompts:
        raise RequestError(f"{path}: no prompts (one per line; blank lines and # comments are ignored)")
    return prompts


def slugify(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


def plan(prompts: list[str], seeds: list[int], methods: list[str]) -> list[Job]:
    """prompts × seeds × methods in that order; prompts whose slugs collide get
    a short hash of the prompt appended (deterministic)."""
    slugs = [slugify(p) for p in prompts]
    slugs = [s if slugs.count(s) == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:6]}"
             for s, p in zip(slugs, prompts)]
    return [Job(p, s, seed, m) for p, s in zip(prompts, slugs) for seed in seeds for m in methods]


def owner(position: int, world: int) -> int:
    """The process that runs the job at ``position`` of the pending list
    (serpentine round-robin: 0 1 … w−1 w−1 … 1 0 0 1 …)."""
    lap, offset = divmod(position, world)
    return offset if lap % 2 == 0 else world - 1 - offset


# ------------------------------------------------------------------ job folders on disk

def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def completed(folder: Path) -> dict | None:
    """run.json of a complete, uncancelled run whose files are all there; else None."""
    run = read_json(folder / RUN_JSON)
    if not run or run.get("cancelled") or run.get("steps_done") != run.get("steps"):
        return None
    if not all((folder / name).is_file() for name in run.get("files", {}).values()):
        return None
    return run


def differences(run: dict, expected: dict) -> dict:
    """{name: (in run.json, expected)} for the request values that differ."""
    return {k: (run.get(k), v) for k, v in expected.items() if run.get(k) != v}


def clear(folder: Path) -> None:
    """Remove what a job folder holds (an earlier failure or a stray folder) in
    one rename, so no half-deleted folder is ever visible."""
    if folder.exists():
        old = hidden_sibling(folder, "old")
        folder.replace(old)
        shutil.rmtree(old, ignore_errors=True)


def record_failure(folder: Path, data: dict) -> None:
    """Publish ``folder`` holding only error.json, atomically (staging + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = hidden_sibling(folder, "error")
    staging.mkdir()
    write_json(data, staging / ERROR_JSON)
    clear(folder)
    staging.replace(folder)


def sweep(out: Path) -> int:
    """Remove the hidden staging folders and temporary files that killed runs
    left in ``out`` (only call it while no job runs)."""
    removed = 0
    for parent in (out, *(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))):
        for item in parent.iterdir():
            if not HIDDEN_LEFTOVER.match(item.name):
                continue
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed += 1
    return removed


# ------------------------------------------------------------------ one job

def run_job(job: Job, base, out: Path, where: dict, preview_res: int) -> dict:
    """Run ``job`` (``base``: the batch's Request) into its folder; returns
    {"status": "ok"|"failed", "seconds", "error"?, "run"?}. Only missing
    guidance (GuidanceUnavailable) propagates: every job would fail the same way."""
    from .guidance.base import GuidanceUnavailable
    from .pipeline import generate
    from .backends import prepare

    folder = out / job.path
    earlier = read_json(folder / ERROR_JSON) or {}
    start = time.perf_counter()
    try:
        request = base.with_values(prompt=job.prompt, seed=job.seed, method=job.method)
        guidance = prepare(request)  # cached: loaded once per process; refuses prompts it cannot follow
        clear(folder)                # an earlier failure of this job: retried
        metadata = {**request.metadata(), "exports": request.exports.pipeline_kwargs(), "batch": where}
        result = generate(guidance, request.config(), folder, metadata=metadata,
                          preview_res=preview_res, **request.exports.pipeline_kwargs())
        return {"status": "ok", "seconds": time.perf_counter() - start, "run": result["summary"]}
    except GuidanceUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one job's failure is recorded, the others go on
        error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=-8)
    seconds = time.perf_counter() - start
    _free_cuda()  # out here, where the traceback (and the tensors its frames hold) is gone
    record_failure(folder, {"status": "failed", "prompt": job.prompt, "seed": job.seed, "method": job.method,
                            "error": error, "traceback": trace, "seconds": round(seconds, 3),
                            "attempts": int(earlier.get("attempts", 0)) + 1, "batch": where})
    return {"status": "failed", "seconds": seconds, "error": error}


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # after an OOM, the next job starts from a clean cache


# ------------------------------------------------------------------ index

def index_entry(job: Job, out: Path, ran: bool) -> dict:
    folder = out / job.path
    entry = {"prompt": job.prompt, "seed": job.seed, "method": job.method, "path": job.path, "ran": ran}
    run = completed(folder)
    if run is not None:
        files = run.get("files", {})
        return {**entry, "status": "ok", "seconds": run.get("timings_s", {}).get("total"),
                "nearest": run.get("nearest"), "nearest_psnr": run.get("nearest_psnr"),
                "n_splats": run.get("n_splats"), "batch": run.get("batch"),
                "files": {k: f"{job.path}/{v}" for k, v in files.items()},
                "preview": f"{job.path}/{files['preview_png']}" if "preview_png" in files else None}
    error = read_json(folder / ERROR_JSON)
    if error is not None:
        return {**entry, "status": "failed", "seconds": error.get("seconds"), "error": error.get("error"),
                "attempts": error.get("attempts"), "batch": error.get("batch"), "files": {"error_json":
                f"{job.path}/{ERROR_JSON}"}}
    return {**entry, "status": "missing"}


def write_index(out: Path, jobs: list[Job], ran: set[int], config: dict) -> dict:
    entries = [index_entry(job, out, i in ran) for i, job in enumerate(jobs)]
    count = {s: sum(e["status"] == s for e in entries) for s in ("ok", "failed", "missing")}
    summary = {"jobs": len(entries), **count, "ran": sum(e["ran"] for e in entries),
               "skipped": sum(not e["ran"] for e in entries)}
    index = {"config": config, "summary": summary, "jobs": entries}
    write_json(index, out / INDEX_JSON)
    with atomic_path(out / INDEX_HTML) as tmp:
        tmp.write_text(contact_sheet(index), encoding="utf-8")
    return index


def _caption(e: dict) -> str:
    if e["status"] == "ok":
        near = f"{e['nearest']} · {e['nearest_psnr']:.1f} dB<br>" if e.get("nearest") else ""
        seconds = f"{e['seconds']:.1f} s" if e.get("seconds") is not None else ""
        return f"{near}{seconds}"
    return f"<span class=err>{html.escape(e['status'])}: {html.escape(e.get('error') or '')}</span>"


def contact_sheet(index: dict) -> str:
    """index.html: one section per prompt, a row per method, seeds side by side;
    relative links only, so it opens from file:// without a server."""
    jobs = index["jobs"]
    s = index["summary"]
    parts = [f"<!doctype html><meta charset=utf-8><title>cfd batch</title><style>{_CSS}</style>",
             f"<h1>cfd batch</h1><p>{s['jobs']} jobs: {s['ok']} ok, {s['failed']} failed, {s['missing']} missing "
             f"&middot; backend {html.escape(str(index['config'].get('backend')))} &middot; "
             f"<a href={INDEX_JSON}>{INDEX_JSON}</a></p>"]
    for prompt in dict.fromkeys(e["prompt"] for e in jobs):
        mine = [e for e in jobs if e["prompt"] == prompt]
        seeds = list(dict.fromkeys(e["seed"] for e in mine))
        parts.append(f"<h2>{html.escape(prompt)}</h2><table><tr><th></th>"
                     + "".join(f"<th>seed {seed}</th>" for seed in seeds) + "</tr>")
        for method in dict.fromkeys(e["method"] for e in mine):
            cells = []
            for seed in seeds:
                e = next(e for e in mine if e["method"] == method and e["seed"] == seed)
                link = html.escape(e["files"].get("render_mp4", e["path"]) if e.get("files") else e["path"])
                img = (f"<a href='{link}'><img src='{html.escape(e['preview'])}' alt='{html.escape(e['path'])}'></a>"
                       if e.get("preview") else "<div class=none></div>")
                cells.append(f"<td>{img}<br>{_caption(e)}</td>")
            parts.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


_CSS = ("body{font-family:sans-serif;margin:1em 2em}td,th{vertical-align:top;padding:4px;font-size:13px}"
        "img,.none{width:160px;height:160px;border:1px solid #ccc}.none{background:#eee}.err{color:#b00}")


# ------------------------------------------------------------------ the command

def pending_jobs(out: Path, jobs: list[Job], options: dict) -> list[int] | str:
    """Positions of the jobs to run (all but the complete ones), or, when a
    complete job was made with other options than this batch's, the message
    that refuses to mix them in one folder."""
    pending, conflicts = [], []
    for i, job in enumerate(jobs):
        run = completed(out / job.path)
        if run is None:
            pending.append(i)
            continue
        diff = differences(run, {**options, "prompt": job.prompt, "seed": job.seed, "method": job.method})
        if diff:
            conflicts.append(f"{job.path} ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())})")
    if conflicts:
        return (f"{out} already holds {len(conflicts)} job(s) made with other options, e.g. {conflicts[0]}; "
                "rerun with the same options to resume, or choose another --out")
    return pending


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("prompts", type=Path, help="text file: one prompt per line (blank lines and # comments "
                                                   "ignored)")
    parser.add_argument("--seeds", default="0", help="e.g. 0-7, 0,3,5 or 0-3,10 (default 0)")
    parser.add_argument("--methods", default="cfd", help="comma-separated, e.g. cfd,sds (default cfd)")
    add_generate_arguments(parser, exclude=PER_JOB)
    parser.add_argument("--out", type=Path, default=Path("outputs/batch"), help="batch folder (shared by every "
                        "process and machine)")
    return parser


def _error_stamp(folder: Path):
    try:
        st = (folder / ERROR_JSON).stat()
        return st.st_ino, st.st_mtime_ns
    except OSError:
        return None


class _Progress:
    """The main process's overall bar: counts the pending jobs that reached a
    new final state on disk (a complete run.json, or an error.json other than
    the one there at the start), whichever process ran them; a thread polls.
    On a terminal a tqdm bar; in a log file a line per change."""

    def __init__(self, out: Path, jobs: list[Job], pending: list[int]):
        from tqdm import tqdm

        self.folders = {out / jobs[i].path: _error_stamp(out / jobs[i].path) for i in pending}
        self.bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="batch", unit="job",
                        file=sys.stderr, dynamic_ncols=True, disable=None)  # None: off when not a terminal
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while True:
            stopping = self.stop.is_set()
            done = self.finished(POLL_FOLDERS if not stopping else len(self.folders))
            for folder in done:
                del self.folders[folder]
            if done:
                self.bar.update(len(done))
                if self.bar.disable:
                    self.bar.n += len(done)
                    print(f"batch: {self.bar.n}/{self.bar.total} jobs done", file=sys.stderr, flush=True)
            if stopping:
                return
            self.stop.wait(1.0)

    def finished(self, limit: int) -> list[Path]:
        """The next ``limit`` pending folders (round robin: a constant number of reads
        per poll, however many jobs) that reached a final state."""
        folders = list(self.folders)[:limit]
        for folder in folders:   # the checked ones go to the back of the line
            self.folders[folder] = self.folders.pop(folder)
        return [f for f in folders if completed(f) is not None or _error_stamp(f) not in (None, self.folders[f])]

    def write(self, line: str):
        self.bar.write(line, file=sys.stderr)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.bar.close()


def _parse(args: argparse.Namespace):
    """(prompts, seeds, methods, the batch's Request) of the command line;
    RequestError lists every problem."""
    problems = Problems()
    prompts, seeds, methods = (problems.check(parse, value) for parse, value in (
        (read_prompts, args.prompts), (parse_seeds, args.seeds), (parse_methods, args.methods)))
    # the batch's options on the backend's default prompt (the jobs' prompts are checked per job)
    base = problems.check(request_from_args, args, method=methods[0] if methods else None,
                          seed=seeds[0] if seeds else None)
    problems.raise_any()
    return prompts, seeds, methods, base


def _main_plan(out: Path, jobs: list, base) -> list[int] | str:
    """The main process's plan: the output folder made and swept (before the plan
    is broadcast, so no process is writing yet), then ``pending_jobs``."""
    out.mkdir(parents=True, exist_ok=True)
    sweep(out)
    options = {**base.values(), "scenes": list(base.scenes) or None, "model": base.model,
               "exports": base.exports.pipeline_kwargs()}
    return pending_jobs(out, jobs, options)


def _outcome(result: dict) -> str:
    """One job's log line after its path: ok (with its nearest variant) or FAILED (with why)."""
    if result["status"] != "ok":
        return f"FAILED after {result['seconds']:.1f} s: {result['error']}"
    run = result["run"]
    near = f", nearest {run['nearest']} {run['nearest_psnr']:.1f} dB" if run.get("nearest") else ""
    return f"ok in {result['seconds']:.1f} s{near}"


def main(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from .backends import guidance_for

    # everything that can be refused is refused (all at once) before a process group forms
    prompts, seeds, methods, base = _parse(args)
    jobs = plan(prompts, seeds, methods)
    out = args.out.resolve()

    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda, timeout=timedelta(hours=setting("CFD_BATCH_TIMEOUT_H")))  # sets this process's GPU
    rank, world = state.process_index, state.num_processes
    if not cuda and world > 1:
        torch.set_num_threads(1)  # processes share the cores (the loop runs single-threaded anyway)
    where = {"process": rank, "processes": world, "host": socket.gethostname(),
             "device": str(state.device) if cuda else "cpu"}
    plan_or_error = _main_plan(out, jobs, base) if state.is_main_process else None
    pending = broadcast_object_list([plan_or_error])[0]  # one list for every process, even on a lagging disk
    if isinstance(pending, str):
        raise RequestError(pending)
    mine = [i for p, i in enumerate(pending) if owner(p, world) == rank]
    progress = _Progress(out, jobs, pending) if state.is_main_process else None
    tag = f"[{rank}/{world} {where['host']}]"

    def log(line: str):
        if progress:
            progress.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    log(f"{tag} {len(mine)} of {len(pending)} pending jobs ({len(jobs) - len(pending)} of {len(jobs)} done "
        f"before) on {where['device']}")
    try:
        with state.main_process_first():  # a download (SD) happens once, in the main process
            if mine:
                guidance_for(base, allow_download=True)
        preview_res = min(256, base.exports.video_res)
        for n, i in enumerate(mine, 1):
            result = run_job(jobs[i], base, out, where, preview_res)
            log(f"{tag} {n}/{len(mine)} {jobs[i].path}: {_outcome(result)}")
        state.wait_for_everyone()
        state.destroy_process_group()  # the index is written from disk: no collective after this
    finally:
        if progress:
            progress.close()
    if not state.is_main_process:
        return 0
    config = {"prompts_file": str(args.prompts), "prompts": prompts, "seeds": seeds, "methods": methods,
              "backend": base.backend, "options": {k: v for k, v in base.values().items() if k not in PER_JOB},
              "exports": base.exports.pipeline_kwargs(), "processes": world}
    summary = write_index(out, jobs, set(pending), config)["summary"]
    print(f"{summary['ok']} ok, {summary['failed']} failed, {summary['missing']} missing of {summary['jobs']} jobs "
          f"({summary['ran']} run now, {summary['skipped']} skipped as done) → {out / INDEX_HTML}", file=sys.stderr)
    return min(summary["failed"] + summary["missing"], MAX_EXIT)
