"""Gradio app / Hugging Face Space for cfd: text-to-3D by Consistent Flow Distillation.

UI only: every computation goes through cfd's public API (``cfd.distill``,
``cfd.pipeline``, ``cfd.guidance``, ``cfd.scenes``). Runs with ``python app.py``
(honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT) and as a Space.

Environment:
    CFD_RUNS_DIR      root of the per-request temp folders (default <tmp>/cfd-app)
    CFD_CONCURRENCY   runs at once across the one queue (default 1)
    CFD_MAX_SEEDS     most seeds in the seed comparison (default 4)
    CFD_MODEL         Stable Diffusion model: hub id or local diffusers folder
    CFD_GPU_DURATION  ZeroGPU seconds requested per call (default 300)

API (``gradio_client``): ``/generate`` with keyword parameters prompt, seed,
steps, guidance_scale, method, backend (+ negative_prompt, scene_set, res,
t_start, t_end, lr_scale, gamma), returning (viewer PLY, render mp4, noise
mp4, run summary, downloads, preview, status); ``/compare`` runs several seeds.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import torch

from cfd.distill import METHODS, DistillConfig, distill, preview
from cfd.guidance import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT, GuidanceUnavailable,
                          StableDiffusionGuidance, check_sd_weights)
from cfd.guidance.exact_prior import ExactPrior
from cfd.pipeline import generate as run_pipeline
from cfd.pipeline import nearest_reference
from cfd.scenes import list_scene_sets

try:  # ZeroGPU on Hugging Face Spaces; a no-op elsewhere
    import spaces

    gpu = spaces.GPU(duration=int(os.environ.get("CFD_GPU_DURATION", "300")))
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

ROOT = Path(__file__).resolve().parent
EXAMPLES_FILE = ROOT / "assets" / "examples.json"

# ------------------------------------------------------------------ settings and limits

BACKENDS = ("exact", "sd")
METHOD_LABELS = {"cfd": "CFD (ODE)", "cfd-sde": "CFD-SDE", "sds": "SDS (baseline)",
                 "iid": "i.i.d. noise (ablation)", "fixed2d": "fixed 2D noise (ablation)"}
MAX_PROMPT_CHARS = 300
MAX_PROMPT_TOKENS = 75          # CLIP reads 77 tokens including its start and end tokens
SEED_RANGE = (0, 2**31 - 1)
STEPS_RANGE = (10, 3000)
CFG_RANGE = (1.0, 100.0)
RES_RANGE = {"exact": (16, 128, 8), "sd": (64, 1024, 64)}   # min, max, multiple of
T_START_RANGE = (2, 999)
LR_SCALE_RANGE = (0.05, 20.0)
GAMMA_RANGE = (1e-6, 0.5)
MAX_SEEDS = int(os.environ.get("CFD_MAX_SEEDS", "4"))
CONCURRENCY = int(os.environ.get("CFD_CONCURRENCY", "1"))
RUN_TTL_S = 3600                # stale run folders (e.g. after a crash) older than this are swept

DEFAULTS = {
    "exact": {"steps": 200, "res": 32, "t_end": 20},
    "sd": {"steps": 1000, "res": 512, "t_end": 300},
}
DEFAULT_CFG = DEFAULT_GUIDANCE_SCALE
DEFAULT_NEGATIVE = DEFAULT_NEGATIVE_PROMPT
VIDEO_FRAMES, VIDEO_RES, GLB_RES = 48, 256, 96
PREVIEW_EVERY, PREVIEW_RES = 10, 128


def runs_root() -> Path:
    """The dedicated root of the per-request temp folders (the only path served)."""
    root = Path(os.environ.get("CFD_RUNS_DIR") or Path(tempfile.gettempdir()) / "cfd-app").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sweep_runs(root: Path, ttl_s: float = RUN_TTL_S) -> None:
    """Remove run folders left behind (by a crash or a kill) older than ``ttl_s``."""
    now = time.time()
    for path in root.glob("run-*"):
        try:
            if now - path.stat().st_mtime > ttl_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


# ------------------------------------------------------------------ validation

class BadInput(ValueError):
    """A request parameter is out of range or malformed; the message says which and why."""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _number(name: str, value, lo: float, hi: float, *, integer: bool, unit: str = "") -> float | int:
    kind = "an integer" if integer else "a number"
    valid = f"{name} must be {kind} between {_fmt(lo)} and {_fmt(hi)}{unit}"
    if isinstance(value, bool) or value is None:
        raise BadInput(f"{valid} (got {value!r})")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise BadInput(f"{valid}; got the non-numeric value {value!r}") from None
    if not isinstance(value, (int, float)):
        raise BadInput(f"{valid} (got {type(value).__name__} {value!r})")
    if not math.isfinite(value):
        raise BadInput(f"{valid} (got {value!r})")
    if integer:
        if float(value) != int(value):
            raise BadInput(f"{valid}; got the fractional value {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise BadInput(f"{valid} (got {value!r})")
    return value


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise BadInput(f"{name} must be one of {', '.join(repr(c) for c in choices)} (got {value!r})")
    return value


def clip_token_estimate(text: str) -> int:
    """Rough CLIP BPE token count (words and punctuation marks, long words
    counting per ~6 characters); errs on the generous side of the real tokenizer."""
    return sum(max(1, math.ceil(len(w) / 6)) if w[0].isalnum() else 1
               for w in re.findall(r"\w+|[^\w\s]", text))


def _prompt(name: str, text, required: bool) -> str:
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise BadInput(f"{name} must be text (got {type(text).__name__})")
    text = " ".join(text.split())
    if not required:
        return text
    if not text:
        raise BadInput(f"The {name} is empty: Stable Diffusion needs a text prompt (1–{MAX_PROMPT_CHARS} "
                       "characters). Describe one object, e.g. 'a DSLR photo of a corgi wearing a beret'.")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInput(f"The {name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS} "
                       f"(CLIP reads at most 77 tokens). Shorten it.")
    if (n := clip_token_estimate(text)) > MAX_PROMPT_TOKENS:
        raise BadInput(f"The {name} is about {n} CLIP tokens; Stable Diffusion's text encoder reads at most "
                       f"{MAX_PROMPT_TOKENS} (77 with its start/end tokens), the rest would be cut off. "
                       "Shorten it.")
    return text


@dataclass(frozen=True)
class Request:
    """A validated generation request."""

    prompt: str
    negative_prompt: str
    backend: str
    scene_set: str
    method: str
    seed: int
    steps: int
    guidance_scale: float
    res: int
    t_start: int
    t_end: int
    lr_scale: float
    gamma: float

    def config(self) -> DistillConfig:
        """The DistillConfig of this request (SD defaults for the SD backend)."""
        overrides = dict(method=self.method, seed=self.seed, steps=self.steps, res=self.res, gamma=self.gamma,
                         prompt=self.prompt, negative_prompt=self.negative_prompt,
                         guidance_scale=self.guidance_scale,
                         t_knots=((0.0, self.t_start), (1.0, self.t_end)), preview_every=PREVIEW_EVERY,
                         preview_res=PREVIEW_RES)
        if self.method == "sds":  # SDS draws t uniformly in the same range
            overrides["t_range"] = (self.t_end, self.t_start)
        base = DistillConfig.for_stable_diffusion() if self.backend == "sd" else DistillConfig()
        if self.lr_scale != 1.0:
            for key in ("lr_means", "lr_means_final", "lr_log_scales", "lr_quats", "lr_opacity", "lr_sh"):
                overrides[key] = getattr(base, key) * self.lr_scale
        return replace(base, **overrides)


def scene_set_ids() -> list[str]:
    return [s.id for s in list_scene_sets()]


def validate(prompt, negative_prompt, backend, scene_set, method, seed, steps, guidance_scale, res,
             t_start, t_end, lr_scale, gamma) -> Request:
    """Parse and check every parameter; BadInput lists every problem with its valid range.
    Nothing is clamped."""
    problems: list[str] = []

    def check(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            problems.append(str(exc))
            return None

    backend = check(_choice, "backend", backend, BACKENDS)
    method = check(_choice, "method", method, METHODS)
    sets = scene_set_ids()
    if backend == "exact":
        scene_set = check(_choice, "scene_set", scene_set or (sets[0] if sets else None), sets)
    seed = check(_number, "seed", seed, *SEED_RANGE, integer=True)
    steps = check(_number, "steps", steps, *STEPS_RANGE, integer=True)
    guidance_scale = check(_number, "guidance_scale (CFG)", guidance_scale, *CFG_RANGE, integer=False)
    lo, hi, multiple = RES_RANGE.get(backend or "exact")
    backend_name = "Stable Diffusion" if backend == "sd" else "the exact prior"
    res = check(_number, "res", res, lo, hi, integer=True, unit=f" for {backend_name}")
    if res is not None and res % multiple:
        problems.append(f"res must be a multiple of {multiple} between {lo} and {hi} for {backend_name} "
                        f"(got {res})")
    t_start = check(_number, "t_start", t_start, *T_START_RANGE, integer=True)
    t_end = check(_number, "t_end", t_end, 0, T_START_RANGE[1] - 1, integer=True,
                  unit=" (0 = the backend's default)")
    if t_end == 0 and backend is not None:
        t_end = DEFAULTS[backend]["t_end"]
    if t_start is not None and t_end is not None and not t_end < t_start:
        problems.append(f"t_end ({t_end}) must be below t_start ({t_start}): t anneals from t_start down to t_end")
    lr_scale = check(_number, "lr_scale", lr_scale, *LR_SCALE_RANGE, integer=False)
    gamma = check(_number, "gamma", gamma, *GAMMA_RANGE, integer=False)
    on_sd = backend == "sd"
    prompt = check(_prompt, "prompt", prompt, on_sd)
    negative_prompt = check(_prompt, "negative prompt", negative_prompt, False)
    if on_sd and negative_prompt is not None and len(negative_prompt) > MAX_PROMPT_CHARS:
        problems.append(f"The negative prompt is {len(negative_prompt)} characters long; the limit is "
                        f"{MAX_PROMPT_CHARS}.")
    if problems:
        raise BadInput("; ".join(problems))
    return Request(prompt, negative_prompt, backend, scene_set if backend == "exact" else "", method, seed, steps,
                   float(guidance_scale), res, t_start, t_end, float(lr_scale), float(gamma))


# ------------------------------------------------------------------ guidance backends

_SD_LOCK = threading.Lock()          # one SD run at a time: the model (and its prompt) is shared


def backend_lock(backend: str):
    """The lock a run of ``backend`` holds while it lasts (SD's shared model), or none."""
    return _SD_LOCK if backend == "sd" else contextlib.nullcontext()
_SD_CACHE: dict[str, StableDiffusionGuidance] = {}
_PRIOR_CACHE: dict[str, ExactPrior] = {}   # per scene set


def sd_status() -> str | None:
    """None if Stable Diffusion is usable, else the message with the fix."""
    try:
        return check_sd_weights()
    except Exception as exc:  # noqa: BLE001 - a broken cache must not take the app down
        return f"Stable Diffusion weights could not be checked ({type(exc).__name__}: {exc})."


def require_sd() -> None:
    """gr.Error with the fix when Stable Diffusion weights are missing."""
    problem = sd_status()
    if problem:
        raise gr.Error(f"{problem}\nThe exact prior (backend 'exact') works without weights.",
                       title="Stable Diffusion unavailable", print_exception=False)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_guidance(req: Request):
    """The guidance of a validated request (raises gr.Error when SD is unusable).
    For SD the caller must hold ``_SD_LOCK`` while the run lasts."""
    if req.backend == "exact":  # one prior per set: its memoised reference renders serve every run
        if req.scene_set not in _PRIOR_CACHE:
            _PRIOR_CACHE[req.scene_set] = ExactPrior.from_scene_set(req.scene_set).to(_device())
        return _PRIOR_CACHE[req.scene_set]
    require_sd()
    model = os.environ.get("CFD_MODEL") or "default"
    try:
        if model not in _SD_CACHE:
            _SD_CACHE[model] = StableDiffusionGuidance.from_pretrained()
    except GuidanceUnavailable as exc:
        raise gr.Error(f"{exc}\nThe exact prior (backend 'exact') works without weights.",
                       title="Stable Diffusion unavailable", print_exception=False) from None
    return _SD_CACHE[model]


# ------------------------------------------------------------------ runs in a worker thread

_ACTIVE: dict[str, set["Run"]] = {}    # session hash → its running runs (for the Stop button)
_ACTIVE_LOCK = threading.Lock()


class Run:
    """One request's work in a worker thread: it reports steps, previews and export
    progress through a queue, and stops at the next step once ``stop`` is set
    (by the Stop button, or when gradio closes the handler on cancel)."""

    def __init__(self, session: str | None):
        self.session = session or "anonymous"
        self.stop = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        with _ACTIVE_LOCK:
            _ACTIVE.setdefault(self.session, set()).add(self)

    def step_callback(self, info) -> bool:
        """``distill`` callback: forward progress (and the preview); True = stop."""
        img = None
        if info.preview is not None:
            img = (info.preview.clamp(0, 1).mul(255).round().byte().cpu().numpy())
        self.events.put(("step", info.step, info.steps, info.t, info.n_splats, img))
        return self.stop.is_set()

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        self.events.put(("stage", stage, done, total))

    def start(self, work) -> None:
        def main():
            try:
                self.events.put(("done", work(self)))
            except BaseException as exc:  # noqa: BLE001 - handed to the handler thread
                self.events.put(("error", exc))

        self.thread = threading.Thread(target=main, name="cfd-run", daemon=True)
        self.thread.start()

    def stream(self, heartbeat_s: float = 0.5):
        """Events until ("done", result) or ("error", exc); ("tick",) when idle, so
        the handler yields often and gradio can close it promptly on cancel."""
        while True:
            try:
                event = self.events.get(timeout=heartbeat_s)
            except queue.Empty:
                yield ("tick",)
                continue
            yield event
            if event[0] in ("done", "error"):
                return

    def finish(self, cleanup=None) -> None:
        """Stop the worker; once it has ended, run ``cleanup`` (in the background,
        so a cancel returns at once)."""
        self.stop.set()
        with _ACTIVE_LOCK:
            runs = _ACTIVE.get(self.session)
            if runs is not None:
                runs.discard(self)
                if not runs:
                    _ACTIVE.pop(self.session, None)

        def wait_and_clean():
            if self.thread is not None:
                self.thread.join()
            if cleanup is not None:
                cleanup()

        if self.thread is not None and self.thread.is_alive():
            threading.Thread(target=wait_and_clean, name="cfd-cleanup", daemon=True).start()
        else:
            wait_and_clean()


def stop_session(session: str | None) -> int:
    """Ask every run of ``session`` to stop; returns how many were running."""
    with _ACTIVE_LOCK:
        runs = list(_ACTIVE.get(session or "anonymous", ()))
    for run in runs:
        run.stop.set()
    return len(runs)


def _friendly_error(exc: BaseException, req: Request | None) -> gr.Error:
    """A gr.Error with a clear message for anything a run raised."""
    if isinstance(exc, gr.Error):
        return exc
    text = str(exc)
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower() \
        or "can't allocate memory" in text.lower()
    if oom:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        res = req.res if req else None
        lo = RES_RANGE[req.backend][0] if req else 16
        lower = max(lo, (res or 2 * lo) // 2)
        return gr.Error(f"Out of memory at res={res}. Try a lower resolution (e.g. res={lower}) or fewer "
                        "seeds; nothing was saved.", title="Out of memory", print_exception=False)
    if isinstance(exc, (BadInput, GuidanceUnavailable, ValueError)):
        return gr.Error(text, print_exception=False)
    traceback.print_exception(exc, file=sys.stderr)
    return gr.Error(f"The run failed ({type(exc).__name__}: {text}); nothing was saved.")


def _status_line(step, steps, t, n_splats, started) -> str:
    return f"**Running** · step {step}/{steps} · t = {t} · {n_splats} splats · {time.perf_counter() - started:.0f} s"


STAGE_NAMES = {"render_video": "Rendering the orbit video", "noise_video": "Rendering the noise video",
               "glb": "Meshing the GLB"}


# ------------------------------------------------------------------ handlers

def _request(prompt, negative_prompt, backend, scene_set, method, seed, steps, guidance_scale, res,
             t_start, t_end, lr_scale, gamma) -> Request:
    try:
        return validate(prompt, negative_prompt, backend, scene_set, method, seed, steps, guidance_scale, res,
                        t_start, t_end, lr_scale, gamma)
    except BadInput as exc:
        raise gr.Error(str(exc), title="Invalid input", print_exception=False) from None


def _download_name(req: Request, name: str) -> str:
    return f"cfd_{req.method}_seed{req.seed}_{name}"


@gpu
def generate(prompt: str = "", seed: int = 0, steps: int = DEFAULTS["exact"]["steps"],
             guidance_scale: float = DEFAULT_CFG, method: str = "cfd", backend: str = "exact",
             negative_prompt: str = DEFAULT_NEGATIVE, scene_set: str = "", res: int = DEFAULTS["exact"]["res"],
             t_start: int = 980, t_end: int = 0, lr_scale: float = 1.0, gamma: float = 1e-4,
             progress=gr.Progress(), request: gr.Request = None):
    """Distil one 3D splat scene and yield (viewer PLY, render video, noise video,
    summary, downloads, preview, status); intermediate yields carry the live preview."""
    req = _request(prompt, negative_prompt, backend, scene_set, method, seed, steps, guidance_scale, res,
                   t_start, t_end, lr_scale, gamma)
    if req.backend == "sd":
        require_sd()  # fail fast, before any folder exists
    root = runs_root()
    sweep_runs(root)
    run_dir = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir()
    run = Run(getattr(request, "session_hash", None))
    skip = tuple(gr.skip() for _ in range(7))
    started = time.perf_counter()

    def work(run: Run):
        with backend_lock(req.backend):
            guidance = make_guidance(req)
            return run_pipeline(guidance, req.config(), run_dir / "result", callback=run.step_callback,
                                should_stop=run.stop.is_set, stage_progress=run.stage_progress,
                                video_frames=VIDEO_FRAMES, video_res=VIDEO_RES, glb_resolution=GLB_RES,
                                metadata={"prompt": req.prompt, "negative_prompt": req.negative_prompt,
                                          "backend": req.backend, "scene_set": req.scene_set or None,
                                          "guidance_scale": req.guidance_scale if req.backend == "sd" else None})

    try:
        progress(0, desc="Starting")
        run.start(work)
        yield (*skip[:6], "**Starting** …")
        for event in run.stream():
            kind = event[0]
            if kind == "step":
                _, step, steps_, t, n_splats, img = event
                progress((step, steps_), desc=f"Distilling (t = {t})")
                if img is not None:
                    yield (*skip[:5], img, _status_line(step, steps_, t, n_splats, started))
            elif kind == "stage":
                _, stage, done, total = event
                progress((done, total), desc=STAGE_NAMES.get(stage, stage))
                if done <= 1:
                    yield (*skip[:6], f"**{STAGE_NAMES.get(stage, stage)}** …")
            elif kind == "tick":
                yield skip
            elif kind == "error":
                raise _friendly_error(event[1], req)
            elif kind == "done":
                result = event[1]
        if result["cancelled"]:
            yield (None, None, None, {"cancelled": True, "steps_done": result["summary"]["steps_done"]},
                   None, gr.skip(), "**Cancelled** — the run was stopped; its temp files were removed.")
            return
        files = result["files"]
        downloads = []
        for key in ("scene_ply", "glb", "render_mp4", "noise_mp4", "run_json"):
            if key in files:
                target = files[key].with_name(_download_name(req, files[key].name))
                files[key].rename(target)
                files[key] = target
                downloads.append(str(target))
        summary = result["summary"]
        img = preview(result["scene"], 256).clamp(0, 1).mul(255).round().byte().numpy()
        near = f" · nearest reference: **{summary['nearest']}** ({summary['nearest_psnr']:.1f} dB)" \
            if "nearest" in summary else ""
        status = (f"**Done** in {summary['timings_s']['total']:.1f} s · {req.method} · seed {req.seed} · "
                  f"{summary['n_splats']} splats{near}")
        yield (str(files["viewer_ply"]), str(files["render_mp4"]), str(files["noise_mp4"]), summary, downloads,
               img, status)
    finally:
        # runs after gradio has copied the last outputs into its cache, on cancel (close) and on error
        run.finish(cleanup=lambda: shutil.rmtree(run_dir, ignore_errors=True))


@gpu
def compare(prompt: str = "", seed: int = 0, steps: int = DEFAULTS["exact"]["steps"],
            guidance_scale: float = DEFAULT_CFG, methods: list[str] | None = None, backend: str = "exact",
            n_seeds: int = MAX_SEEDS, negative_prompt: str = DEFAULT_NEGATIVE, scene_set: str = "",
            res: int = DEFAULTS["exact"]["res"], t_start: int = 980, t_end: int = 0, lr_scale: float = 1.0,
            gamma: float = 1e-4, progress=gr.Progress(), request: gr.Request = None):
    """The same prompt for seeds seed … seed+n_seeds−1 with each method in
    ``methods``: yields (gallery of final renders, table, status) as runs finish."""
    methods = ["cfd", "sds"] if methods is None else methods
    if isinstance(methods, str):
        methods = [methods]
    try:
        if not isinstance(methods, (list, tuple)) or not methods:
            raise BadInput(f"methods must be a non-empty list of {', '.join(METHODS)} (got {methods!r})")
        for m in methods:
            _choice("methods", m, METHODS)
        n_seeds = _number("n_seeds", n_seeds, 1, MAX_SEEDS, integer=True)
    except BadInput as exc:
        raise gr.Error(str(exc), title="Invalid input", print_exception=False) from None
    base = _request(prompt, negative_prompt, backend, scene_set, methods[0], seed, steps, guidance_scale, res,
                    t_start, t_end, lr_scale, gamma)
    if base.backend == "sd":
        require_sd()
    if base.seed + n_seeds - 1 > SEED_RANGE[1]:
        raise gr.Error(f"seed + n_seeds − 1 must stay ≤ {SEED_RANGE[1]}", title="Invalid input")
    jobs = [replace(base, method=m, seed=base.seed + k) for m in dict.fromkeys(methods) for k in range(n_seeds)]
    run = Run(getattr(request, "session_hash", None))
    started = time.perf_counter()

    def work(run: Run):
        with backend_lock(base.backend):
            guidance = make_guidance(base)
            for i, job in enumerate(jobs):
                t0 = time.perf_counter()
                scene = distill(guidance, replace(job.config(), preview_every=0), callback=run.step_callback)
                if run.stop.is_set():
                    return None
                img = preview(scene, 192).clamp(0, 1).mul(255).round().byte().numpy()
                near = nearest_reference(scene, guidance)
                run.events.put(("result", i, job, img, near, time.perf_counter() - t0))
            return True

    gallery, rows = [], []
    try:
        run.start(work)
        yield gr.skip(), gr.skip(), f"**Starting** {len(jobs)} runs …"
        for event in run.stream():
            kind = event[0]
            if kind == "step":
                _, step, steps_, t, n_splats, _img = event
                done = len(rows)
                progress((done * steps_ + step, len(jobs) * steps_),
                         desc=f"Run {done + 1}/{len(jobs)}: {jobs[done].method} seed {jobs[done].seed}")
            elif kind == "result":
                _, i, job, img, near, secs = event
                label = METHOD_LABELS.get(job.method, job.method).split(" (")[0]
                caption = f"{label} · seed {job.seed}"
                if near:
                    caption += f" → {near['nearest']} ({near['nearest_psnr']:.1f} dB)"
                gallery.append((img, caption))
                rows.append((job, near, secs))
                yield gallery, _compare_table(rows), f"**Running** · {len(rows)}/{len(jobs)} done"
            elif kind == "tick":
                yield gr.skip(), gr.skip(), gr.skip()
            elif kind == "error":
                raise _friendly_error(event[1], base)
            elif kind == "done":
                if event[1] is None:
                    yield gallery, _compare_table(rows), "**Cancelled**"
                    return
        yield gallery, _compare_table(rows), f"**Done** · {len(jobs)} runs in {time.perf_counter() - started:.0f} s"
    finally:
        run.finish()


def _compare_table(rows) -> str:
    if not rows:
        return ""
    lines = ["| method | seed | nearest reference | PSNR (dB) | seconds |", "|---|---|---|---|---|"]
    for job, near, secs in rows:
        lines.append(f"| {job.method} | {job.seed} | {near['nearest'] if near else '–'} | "
                     f"{near['nearest_psnr']:.1f} |" if near else f"| {job.method} | {job.seed} | – | – |")
        lines[-1] += f" {secs:.1f} |"
    by_method: dict[str, list] = {}
    for job, near, _ in rows:
        if near:
            by_method.setdefault(job.method, []).append(near["nearest"])
    if by_method:
        lines.append("")
        lines.append("Diversity: " + "; ".join(
            f"**{m}** reached {len(set(v))} distinct object(s) over {len(v)} seed(s)" for m, v in by_method.items()))
    return "\n".join(lines)


def stop(request: gr.Request = None):
    """The Stop button: ask this session's runs to stop (gradio also cancels the events)."""
    n = stop_session(getattr(request, "session_hash", None))
    return "**Cancelled** — the run was stopped; its temp files are being removed." if n else gr.skip()


# ------------------------------------------------------------------ UI

def _load_examples() -> dict:
    try:
        return json.loads(EXAMPLES_FILE.read_text())
    except (OSError, ValueError):
        return {"exact": [], "sd": []}


def unchecked(component):
    """``component`` with its value handed to the handler as sent (no bounds or
    choices check in gradio's preprocess), so out-of-range API values get our
    message naming the parameter and its valid range instead of gradio's generic
    one. (An instance override: subclasses would make gradio write an app.pyi.)"""
    component.preprocess = lambda payload: payload
    return component


INTRO = """# Consistent Flow Distillation — text to 3D Gaussian splats
Each step renders the splats from a random view, noises the render with a **noise field stuck to the
object's surface** and an annealed timestep, and pulls it towards the diffusion model's denoised image:
every seed follows the probability-flow ODE to its own sharp object (CFD), where SDS averages modes.
"""


def build_demo() -> gr.Blocks:
    sets = list_scene_sets()
    first_set = sets[0].id if sets else ""
    sd_problem = sd_status()
    examples = _load_examples()
    root = runs_root()
    sweep_runs(root)

    with gr.Blocks(title="cfd — Consistent Flow Distillation", delete_cache=(600, 3600)) as demo:
        gr.Markdown(INTRO)
        if sd_problem:
            backend_note = ("**Backend: exact prior** (embedded, no weights) — Stable Diffusion is not available "
                            f"here.\n\n<details><summary>Why, and how to enable it</summary>\n\n"
                            f"{sd_problem}\n\n</details>")
        else:
            backend_note = "**Backends:** Stable Diffusion weights found; the exact prior is also available."
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                gr.Markdown(backend_note, elem_id="backend-note")
                backend = gr.Radio([("Exact prior (embedded, no weights)", "exact"), ("Stable Diffusion", "sd")],
                                value="exact", label="Backend", interactive=sd_problem is None,
                                info=None if sd_problem is None else
                                "Stable Diffusion needs weights (see above); using the exact prior.")
                scene_set = gr.Dropdown([(f"{s.name} ({', '.join(s.names)})", s.id) for s in sets],
                                     value=first_set, label="Scene set (exact prior)",
                                     info="The exact prior's data: renders of these bundled objects.")
                prompt = gr.Textbox(value=sets[0].prompt if sets else "", label="Prompt", lines=2,
                                    max_lines=4, info="Used by Stable Diffusion; the exact prior only records it.")
                negative_prompt = gr.Textbox(value=DEFAULT_NEGATIVE, label="Negative prompt", lines=1,
                                             info="Stable Diffusion only.")
                method = gr.Radio([(METHOD_LABELS[m], m) for m in METHODS], value="cfd", label="Method")
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=0, minimum=SEED_RANGE[0],
                                  maximum=SEED_RANGE[1], info=f"{SEED_RANGE[0]}–{SEED_RANGE[1]}")
                    steps = gr.Slider(*STEPS_RANGE, value=DEFAULTS["exact"]["steps"], step=10, label="Steps",
                                      elem_id="steps")
                with gr.Row():
                    guidance_scale = gr.Slider(*CFG_RANGE, value=DEFAULT_CFG, step=0.5, label="CFG (guidance scale)",
                                            info="Stable Diffusion only; ignored by the exact prior.")
                    lo, hi, mult = RES_RANGE["exact"]
                    res = gr.Slider(lo, hi, value=DEFAULTS["exact"]["res"], step=mult, label="Resolution (px)",
                                 info="Render size fed to the guidance.")
                with gr.Accordion("Advanced", open=False):
                    t_start = gr.Slider(*T_START_RANGE, value=980, step=1, label="t start",
                                     info="CFD anneals t from t start down to t end; SDS draws t in [t end, t start].")
                    t_end = gr.Slider(0, T_START_RANGE[1] - 1, value=0, step=1, label="t end",
                                   info="0 = the backend's default (20 for the exact prior, 300 for SD).")
                    lr_scale = gr.Slider(*LR_SCALE_RANGE, value=1.0, step=0.05, label="Learning-rate scale",
                                      info="Multiplies every Adam learning rate.")
                    gamma = gr.Number(value=1e-4, label="γ (CFD-SDE noise refresh per step)",
                                   info=f"{GAMMA_RANGE[0]:g}–{GAMMA_RANGE[1]:g}; CFD-SDE only.")
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                status = gr.Markdown("Ready.", label="Status", elem_id="status")

            with gr.Column(scale=3, min_width=420):
                with gr.Tabs():
                    with gr.Tab("Result", id="result"):
                        with gr.Row():
                            live = gr.Image(label="Live preview", type="numpy", height=360, interactive=False,
                                            elem_id="preview")
                            model3d = gr.Model3D(label="Splats (drag to orbit, scroll to zoom)", height=360,
                                                 clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="model3d")
                        with gr.Row():
                            render_video = gr.Video(label="Orbit render", autoplay=True, loop=True, height=260,
                                                    interactive=False, elem_id="render-video")
                            noise_video = gr.Video(label="Render | the run's noise: CFD's turns with the object, "
                                                         "SDS's flickers",
                                                   autoplay=True, loop=True, height=260, interactive=False,
                                                   elem_id="noise-video")
                        downloads = gr.File(label="Downloads (PLY, GLB, MP4, run.json)", file_count="multiple",
                                            interactive=False, elem_id="downloads")
                        summary = gr.JSON(label="Run summary", open=False, elem_id="summary")
                    with gr.Tab("Seed comparison", id="compare"):
                        gr.Markdown("The same prompt and settings for several seeds, per method: CFD lands on "
                                    "different sharp objects, SDS tends to the same blurry average.")
                        with gr.Row():
                            n_seeds = gr.Slider(1, MAX_SEEDS, value=min(4, MAX_SEEDS), step=1, label="Seeds",
                                             info="seed, seed+1, …")
                            methods = gr.CheckboxGroup([(METHOD_LABELS[m], m) for m in METHODS], value=["cfd", "sds"],
                                                    label="Methods", info="One row per method.")
                        compare_btn = gr.Button("Compare seeds", variant="primary", elem_id="compare-btn")
                        gallery = gr.Gallery(label="Final renders", columns=min(4, MAX_SEEDS), height="auto",
                                             object_fit="contain", elem_id="compare-gallery")
                        compare_table = gr.Markdown(label="Comparison table", elem_id="compare-table")
                        compare_status = gr.Markdown(label="Comparison status", elem_id="compare-status")

        if examples.get("exact") and sets:
            by_id = {s.id: s for s in sets}
            rows = [[by_id[e["scene_set"]].prompt, "exact", e["scene_set"], e.get("method", "cfd"),
                     e.get("seed", 0), DEFAULTS["exact"]["steps"], DEFAULTS["exact"]["res"]]
                    for e in examples["exact"] if e.get("scene_set") in by_id]
            gr.Examples(rows, [prompt, backend, scene_set, method, seed, steps, res],
                        label="Examples: bundled scene sets (exact prior, no weights, CPU-quick)",
                        elem_id="examples-exact")
        if examples.get("sd") and sd_problem is None:
            d = DEFAULTS["sd"]
            rows = [[e["prompt"], "sd", e.get("method", "cfd"), e.get("seed", 0), d["steps"], d["res"]]
                    for e in examples["sd"]]
            gr.Examples(rows, [prompt, backend, method, seed, steps, res],
                        label="Examples: Stable Diffusion prompts", elem_id="examples-sd")

        for component in (backend, scene_set, method, seed, steps, guidance_scale, res, t_start, t_end, lr_scale,
                          gamma, n_seeds, methods):
            unchecked(component)

        # --- events
        def on_backend(choice):
            b = choice if choice in BACKENDS else "exact"
            lo, hi, mult = RES_RANGE[b]
            d = DEFAULTS[b]
            return (gr.update(minimum=lo, maximum=hi, step=mult, value=d["res"]), gr.update(value=d["steps"]),
                    gr.update(visible=b == "exact"))

        backend.change(on_backend, backend, [res, steps, scene_set], api_visibility="private", queue=False)

        def on_scene_set(set_id):
            for s in sets:
                if s.id == set_id:
                    return s.prompt
            return gr.skip()

        scene_set.input(on_scene_set, scene_set, prompt, api_visibility="private", queue=False)

        common = dict(concurrency_id="distill", concurrency_limit=CONCURRENCY)
        gen_event = run_btn.click(
            generate,
            inputs=[prompt, seed, steps, guidance_scale, method, backend, negative_prompt, scene_set, res,
                    t_start, t_end, lr_scale, gamma],
            outputs=[model3d, render_video, noise_video, summary, downloads, live, status],
            api_name="generate", show_progress="minimal", show_progress_on=[status, model3d], **common)
        cmp_event = compare_btn.click(
            compare,
            inputs=[prompt, seed, steps, guidance_scale, methods, backend, n_seeds, negative_prompt, scene_set,
                    res, t_start, t_end, lr_scale, gamma],
            outputs=[gallery, compare_table, compare_status],
            api_name="compare", show_progress="minimal", show_progress_on=[compare_status], **common)
        stop_btn.click(stop, None, status, cancels=[gen_event, cmp_event], queue=False, api_visibility="private")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=int(os.environ.get("CFD_QUEUE_SIZE", "32")))
    return demo


def launch_kwargs() -> dict:
    """Launch settings: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured; only
    the run folders' root is served."""
    kwargs = {"allowed_paths": [str(runs_root())], "show_error": True}
    if os.environ.get("GRADIO_SERVER_NAME"):
        kwargs["server_name"] = os.environ["GRADIO_SERVER_NAME"]
    if os.environ.get("GRADIO_SERVER_PORT"):
        kwargs["server_port"] = int(os.environ["GRADIO_SERVER_PORT"])
    return kwargs


demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
