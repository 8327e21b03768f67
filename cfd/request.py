"""The request layer below the app and the CLI: one place for every parameter's
range, every backend's defaults, the validation messages, and the path from
plain keyword values to (guidance, ``DistillConfig``, export settings).

    request  = parse_request({"prompt": "a rubber duck", "seed": 3})   # or request_from_args(args)
    guidance = prepare(request)          # cached backend; refuses what it cannot follow
    config   = request.config()          # the DistillConfig of the run
    exports  = request.exports           # ExportSettings: videos, GLB (pipeline.generate keywords)

Every parameter is optional: a missing or None value takes its backend's
default (``defaults(backend)``), so ``{"backend": "sd"}`` alone is a complete
Stable Diffusion request. Out-of-range values are refused (``RequestError``
listing every problem with its valid range), never clamped. The app
(``app.py``), ``python -m cfd generate`` (``cfd.cli``) and later batch jobs all
go through here, so they cannot disagree on a range or a default.
Nothing here imports gradio.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .distill import METHODS, DistillConfig
from .errors import InputError
from .settings import setting
from .guidance.base import GuidanceUnavailable
from .guidance.exact_prior import DEFAULT_EXACT_GUIDANCE_SCALE
from .guidance.stable_diffusion import DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT
from .guidance.tiny_sd import (TINY_SD_GUIDANCE_SCALE, TINY_SD_MAX_PROMPT_BYTES, TINY_SD_RES, TINY_SD_STEPS,
                              TINY_SD_VIEWS)

BACKENDS = ("exact", "tiny-sd", "sd")
BACKEND_NAMES = {"exact": "the exact prior", "tiny-sd": "tiny-sd (a miniature SD trained on the bundled objects)",
                 "sd": "Stable Diffusion"}
SD_BACKENDS = ("tiny-sd", "sd")   # Stable Diffusion's code path (text encoder, VAE, UNet)
METHOD_LABELS = {"cfd": "CFD (ODE)", "cfd-sde": "CFD-SDE", "sds": "SDS (baseline)",
                 "iid": "i.i.d. noise (ablation)", "fixed2d": "fixed 2D noise (ablation)"}


class RequestError(InputError):
    """A request parameter is out of range or malformed; the message says which and why."""


class Problems:
    """Collects what is wrong with a request so that one RequestError names it all."""

    def __init__(self):
        self.found: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def add(self, message: str) -> None:
        self.found.append(message)

    def check(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, or None with its RequestError noted."""
        try:
            return fn(*args, **kwargs)
        except RequestError as exc:
            self.add(str(exc))
            return None

    def raise_any(self) -> None:
        if self.found:
            raise RequestError("; ".join(self.found))


# ------------------------------------------------------------------ defaults: tune them here

@dataclass(frozen=True)
class BackendDefaults:
    """The values a request on one backend takes when it leaves them out."""

    prompt: str
    negative_prompt: str
    guidance_scale: float
    steps: int
    res: int
    views: int                 # views per step (the exact prior's posterior is joint over them)


EXACT_DEFAULTS = BackendDefaults(prompt="a toy", negative_prompt="", guidance_scale=DEFAULT_EXACT_GUIDANCE_SCALE,
                                 steps=200, res=64, views=4)
EXACT_CUDA_RES = 128           # the exact prior's default resolution where a GPU runs it
SD_DEFAULTS = BackendDefaults(prompt="a DSLR photo of a corgi wearing a red beret",
                              negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=DEFAULT_GUIDANCE_SCALE,
                              steps=1000, res=512, views=1)
# measured on tiny-sd (README "tiny-sd"): its default run is the SD path end to end on a CPU
TINY_SD_DEFAULTS = BackendDefaults(prompt="a rubber duck", negative_prompt="", guidance_scale=TINY_SD_GUIDANCE_SCALE,
                                   steps=TINY_SD_STEPS, res=TINY_SD_RES, views=TINY_SD_VIEWS)
BACKEND_DEFAULTS = {"exact": EXACT_DEFAULTS, "tiny-sd": TINY_SD_DEFAULTS, "sd": SD_DEFAULTS}
# the rest (t schedule, γ schedule, densification, learning rates) come from the backend's
# base DistillConfig; gamma and densify_every default to None: "the base config's", which
# for SD follow the run's length (the authors' γ knots, densify every 10 % of the run)
ADVANCED_DEFAULTS = {"lr_scale": 1.0, "gamma": None, "densify_every": None}

# the exports of a run (app and CLI alike)
VIDEO_FRAMES, VIDEO_RES, GLB_RES = 48, 256, 96
PREVIEW_RES = 128
PREVIEW_EVERY = {"exact": 10, "tiny-sd": 10, "sd": 50}     # steps between live previews in the app


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def base_config(backend: str, steps: int | None = None) -> DistillConfig:
    """The backend's DistillConfig (of a ``steps``-long run) before a request's
    values: t and γ schedules, densification, learning rates …"""
    kwargs = {} if steps is None else {"steps": steps}
    if backend == "sd":
        return DistillConfig.for_stable_diffusion(**kwargs)
    if backend == "tiny-sd":
        return DistillConfig.for_tiny_sd(**kwargs)
    return DistillConfig(**kwargs)


def defaults(backend: str = "exact", cuda: bool | None = None) -> dict[str, Any]:
    """Every parameter's default on ``backend`` (``cuda``: whether a GPU runs it;
    None = this machine)."""
    if backend not in BACKENDS:
        raise RequestError(f"backend must be one of {', '.join(map(repr, BACKENDS))} (got {backend!r})")
    d = asdict(BACKEND_DEFAULTS[backend])
    if backend == "exact" and (cuda_available() if cuda is None else cuda):
        d["res"] = EXACT_CUDA_RES
    base = base_config(backend)
    return {**d, "backend": backend, "method": "cfd", "seed": 0, "t_start": int(base.t_knots[0][1]),
            "t_end": int(base.t_knots[-1][1]), **ADVANCED_DEFAULTS}


# ------------------------------------------------------------------ ranges

SEED_RANGE = (0, 2**31 - 1)
STEPS_RANGE = (10, 3000)
CFG_RANGE = (1.0, 100.0)
VIEWS_RANGE = (1, 8)
RES_RANGE = {"exact": (16, 128, 8), "tiny-sd": (TINY_SD_RES, TINY_SD_RES, TINY_SD_RES),  # trained at 64 px only
             "sd": (64, 1024, 64)}   # min, max, multiple of
T_RANGE = (1, 999)
LR_SCALE_RANGE = (0.05, 20.0)
GAMMA_RANGE = (1e-6, 0.5)
DENSIFY_RANGE = (0, 1000)
MAX_PROMPT_CHARS = 300
MAX_PROMPT_TOKENS = 75          # CLIP reads 77 tokens including its start and end tokens
MAX_SEED_LIST = 10_000          # seeds in one batch (``parse_seeds``)
EXPORT_RANGES = {"video_frames": (1, 480), "video_res": (16, 1024), "glb_resolution": (16, 256),
                 "ply_sh_degree": (0, 3)}
EXPORT_FLAGS = {"video_frames": ("--video-frames", "frames of render.mp4 and noise.mp4"),
                "video_res": ("--video-res", "pixels (square) of the orbit videos"),
                "glb_resolution": ("--glb-res", "marching-cubes grid points along the GLB's longest side"),
                "ply_sh_degree": ("--ply-sh-degree", "scene.ply's SH degree: 3 writes the 48-coefficient layout "
                                                     "(zeros above the run's own) that some splat viewers require")}


def res_choices(backend: str) -> list[int]:
    lo, hi, multiple = RES_RANGE[backend]
    return list(range(lo, hi + 1, multiple))


def max_seeds() -> int:
    """Most seeds in one seed comparison (env CFD_MAX_SEEDS, default 4)."""
    return setting("CFD_MAX_SEEDS")


@dataclass(frozen=True)
class Param:
    """One request parameter: its CLI/UI name, label and help (range and defaults
    are filled in from this module)."""

    name: str
    label: str
    help: str
    kind: type = int                 # int | float | str
    choices: tuple = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PARAMS = (  # the order of /generate's keyword parameters
    Param("prompt", "Prompt", "what to make; on the exact prior, objects it knows or a theme", str),
    Param("seed", "Seed", "drives the noise, the views and the initial splats"),
    Param("steps", "Steps", "optimisation steps"),
    Param("guidance_scale", "CFG (guidance scale)", "classifier-free guidance s in ε_u + s(ε_c − ε_u)", float),
    Param("method", "Method", "cfd (ODE), cfd-sde, sds, or the ablations iid, fixed2d", str, METHODS),
    Param("backend", "Backend", "exact: the embedded exact prior; tiny-sd: a miniature Stable Diffusion trained "
                                "on the bundled objects (CPU); sd: Stable Diffusion", str, BACKENDS),
    Param("negative_prompt", "Negative prompt", "what to steer away from", str),
    Param("res", "Resolution (px)", "render size fed to the guidance"),
    Param("views", "Views per step", "views rendered per step (the exact prior denoises them jointly)"),
    Param("t_start", "t start", "CFD anneals t from t start down to t end (the backend's schedule, rescaled); "
                                "SDS draws t in [t end, t start] if you change either, else in its own [20, 980]"),
    Param("t_end", "t end", "the last (smallest) timestep"),
    Param("lr_scale", "Learning-rate scale", "multiplies every Adam learning rate", float),
    Param("gamma", "γ (CFD-SDE noise refresh per step)", "CFD-SDE only; a constant γ per step", float),
    Param("densify_every", "Densify/prune every N steps", "0 = a fixed splat count"),
)
PARAM_NAMES = tuple(p.name for p in PARAMS)
EXTRA_NAMES = ("scenes", "model")    # CLI only: reference PLYs for the exact prior; SD model


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def range_text(name: str, backend: str = "exact") -> str:
    """The valid values of ``name`` on ``backend``, as the messages and help say them."""
    if name == "res":
        lo, hi, multiple = RES_RANGE[backend]
        return f"{lo}" if lo == hi else f"a multiple of {multiple} in {lo}–{hi}"
    ranges = {"seed": SEED_RANGE, "steps": STEPS_RANGE, "guidance_scale": CFG_RANGE, "views": VIEWS_RANGE,
              "t_start": T_RANGE, "t_end": T_RANGE, "lr_scale": LR_SCALE_RANGE, "gamma": GAMMA_RANGE,
              "densify_every": DENSIFY_RANGE}
    if name in ranges:
        lo, hi = ranges[name]
        return f"{_fmt(lo)}–{_fmt(hi)}" if name != "gamma" else f"{lo:g}–{hi:g}"
    if name in ("prompt", "negative_prompt"):
        return f"up to {MAX_PROMPT_CHARS} characters"
    return ", ".join(next(p.choices for p in PARAMS if p.name == name))


def help_text(name: str) -> str:
    """Help for ``name``: what it does, its range and its per-backend defaults."""
    param = next(p for p in PARAMS if p.name == name)
    per_backend = {b: defaults(b, cuda=False) for b in BACKENDS}
    ranges = range_text(name, "exact")
    if name == "res":
        ranges = ", ".join(f"{b}: {range_text('res', b)}" for b in BACKENDS)
    if param.choices:
        ranges = "one of " + ranges
    if name == "backend":
        return f"{param.help} ({ranges}; default 'exact')"
    if name == "gamma":
        return f"{param.help} ({ranges}; empty: the backend's schedule, exact and tiny-sd " \
               f"{DistillConfig().gamma:g}, sd the authors' knots)"
    if name == "densify_every":
        return f"{param.help} ({ranges}; empty: the backend's, exact and tiny-sd 0 = off (a fixed " \
               f"{DistillConfig().init_splats} splats), sd every 10 % of the run)"
    values = {b: d[name] for b, d in per_backend.items()}
    if len(set(map(repr, values.values()))) == 1:
        value = values["exact"]
        default = f"default {value!r}" if isinstance(value, str) else f"default {value}"
    else:
        default = "default: " + ", ".join(f"{b} {v!r}" for b, v in values.items())
        if name == "res":
            default += f" (exact on a GPU: {EXACT_CUDA_RES})"
    return f"{param.help} ({ranges}; {default})"


# ------------------------------------------------------------------ the request

@dataclass(frozen=True)
class ExportSettings:
    """What ``pipeline.generate`` exports besides the PLYs (its keyword arguments)."""

    video_frames: int = VIDEO_FRAMES
    video_res: int = VIDEO_RES
    glb_resolution: int = GLB_RES
    ply_sh_degree: int = 0     # at least the run's own degree

    def pipeline_kwargs(self) -> dict:
        return asdict(self)


def parse_exports(values: Mapping[str, Any] | None = None, **kwargs) -> ExportSettings:
    """ExportSettings from plain values (video_frames, video_res, glb_resolution;
    None = the default); RequestError names every value out of range."""
    values = {k: v for k, v in {**(values or {}), **kwargs}.items() if v is not None}
    problems, out = Problems(), {}
    for name, (lo, hi) in EXPORT_RANGES.items():
        if name in values:
            out[name] = problems.check(_number, name, values[name], lo, hi, integer=True)
    unknown = sorted(set(values) - set(EXPORT_RANGES))
    if unknown:
        problems.add(f"unknown export setting(s) {', '.join(unknown)}; known: {', '.join(EXPORT_RANGES)}")
    problems.raise_any()
    return ExportSettings(**out)


@dataclass(frozen=True)
class Request:
    """A validated generation request (``parse_request`` builds it)."""

    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    method: str
    backend: str
    negative_prompt: str
    res: int
    views: int
    t_start: int
    t_end: int
    lr_scale: float
    gamma: float | None              # None: the backend's γ schedule
    densify_every: int | None        # None: the backend's (exact: off; SD: every 10 % of the run)
    scenes: tuple[str, ...] = ()     # exact prior over these PLYs instead of the bundled objects
    model: str | None = None         # SD: hub id or local folder (None: $CFD_MODEL or the default)
    exports: ExportSettings = field(default_factory=ExportSettings)

    def values(self) -> dict[str, Any]:
        """The request as plain keyword values (``parse_request`` of them gives it back)."""
        out = {name: getattr(self, name) for name in PARAM_NAMES}
        if self.scenes:
            out["scenes"] = list(self.scenes)
        if self.model is not None:
            out["model"] = self.model
        return out

    def config(self, **overrides) -> DistillConfig:
        """The DistillConfig of this request on its backend's base config;
        ``overrides`` (e.g. preview_every) are applied last."""
        base = base_config(self.backend, self.steps)
        values = dict(method=self.method, seed=self.seed, steps=self.steps, res=self.res, prompt=self.prompt,
                      negative_prompt=self.negative_prompt, guidance_scale=self.guidance_scale,
                      batch_views=self.views, t_knots=rescale_knots(base.t_knots, self.t_start, self.t_end),
                      preview_every=0)
        if self.gamma is not None:
            values["gamma"] = self.gamma
        if self.densify_every is not None:
            values["densify_every"] = self.densify_every
        d = defaults(self.backend)
        if self.method == "sds" and (self.t_start, self.t_end) != (d["t_start"], d["t_end"]):
            values["t_range"] = (self.t_end, self.t_start)   # SDS: t uniform in the range the user set
        # else SDS keeps its own range (base.t_range, [20, 980] as DreamFusion and threestudio draw)
        if self.lr_scale != 1.0:
            for key in ("lr_means", "lr_means_final", "lr_log_scales", "lr_quats", "lr_opacity", "lr_sh"):
                values[key] = getattr(base, key) * self.lr_scale
        return replace(base, **{**values, **overrides})

    def app_config(self) -> DistillConfig:
        """``config()`` with the app's live previews."""
        return self.config(preview_every=PREVIEW_EVERY[self.backend], preview_res=PREVIEW_RES)

    def with_values(self, **changes) -> "Request":
        """This request with ``changes`` (plain values, validated again by
        ``parse_request``) and the same export settings."""
        return replace(parse_request(self.values(), **changes), exports=self.exports)

    def metadata(self) -> dict[str, Any]:
        """What run.json records of the request (``pipeline.generate(metadata=…)``)."""
        return self.values()

    def label(self) -> str:
        """Short human name, e.g. "cfd · seed 3"."""
        return f"{self.method} · seed {self.seed}"


def rescale_knots(knots, t_start: int, t_end: int) -> tuple:
    """``knots`` ((progress, t), …) mapped affinely so they run from ``t_start``
    to ``t_end``: the backend's schedule keeps its shape (SD's authors' four
    knots); unchanged when the ends are the knots' own."""
    first, last = knots[0][1], knots[-1][1]
    if (t_start, t_end) == (first, last):
        return tuple(tuple(k) for k in knots)
    if first == last:
        return ((0.0, t_start), (1.0, t_end))
    scale = (t_start - t_end) / (first - last)
    return tuple((p, int(round(t_end + (t - last) * scale))) for p, t in knots)


# ------------------------------------------------------------------ validation

def _number(name: str, value, lo: float, hi: float, *, integer: bool, unit: str = "") -> float | int:
    kind = "an integer" if integer else "a number"
    valid = f"{name} must be {kind} between {_fmt(lo)} and {_fmt(hi)}{unit}"
    if isinstance(value, bool):
        raise RequestError(f"{valid} (got {value!r})")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RequestError(f"{valid}; got the non-numeric value {value!r}") from None
    if not isinstance(value, (int, float)):
        raise RequestError(f"{valid} (got {type(value).__name__} {value!r})")
    if not math.isfinite(value):
        raise RequestError(f"{valid} (got {value!r})")
    if integer:
        if float(value) != int(value):
            raise RequestError(f"{valid}; got the fractional value {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise RequestError(f"{valid} (got {value!r})")
    return value


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise RequestError(f"{name} must be one of {', '.join(repr(c) for c in choices)} (got {value!r})")
    return value


def clip_token_estimate(text: str) -> int:
    """Rough CLIP BPE token count (words and punctuation marks, long words
    counting per ~6 characters); errs on the generous side of the real tokenizer."""
    return sum(max(1, math.ceil(len(w) / 6)) if w[0].isalnum() else 1
               for w in re.findall(r"\w+|[^\w\s]", text))


def _text(name: str, text, backend: str, required: bool) -> str:
    if not isinstance(text, str):
        raise RequestError(f"The {name} must be text (got {type(text).__name__})")
    text = " ".join(text.split())
    if required and not text:
        example = "'a rubber duck'" if backend == "tiny-sd" else "'a DSLR photo of a corgi wearing a beret'"
        raise RequestError(f"The {name} is empty: {BACKEND_NAMES[backend]} needs a text prompt (1–"
                           f"{MAX_PROMPT_CHARS} characters). Describe one object, e.g. {example}.")
    if len(text) > MAX_PROMPT_CHARS:
        raise RequestError(f"The {name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}"
                           + (" (CLIP reads at most 77 tokens)" if backend == "sd" else "") + ". Shorten it.")
    if backend == "sd" and (n := clip_token_estimate(text)) > MAX_PROMPT_TOKENS:
        raise RequestError(f"The {name} is about {n} CLIP tokens; Stable Diffusion's text encoder reads at most "
                           f"{MAX_PROMPT_TOKENS} (77 with its start/end tokens), the rest would be cut off. "
                           "Shorten it.")
    if backend == "tiny-sd" and (n := len(text.encode())) > TINY_SD_MAX_PROMPT_BYTES:
        raise RequestError(f"The {name} is {n} bytes long; tiny-sd reads {TINY_SD_MAX_PROMPT_BYTES} at most (its "
                           "tokenizer has one token per byte and the view suffix needs the rest of its 75). "
                           "Shorten it, e.g. 'a rubber duck'.")
    return text


def parse_request(values: Mapping[str, Any] | None = None, **kwargs) -> Request:
    """A ``Request`` from plain keyword values (``values`` and/or ``kwargs``);
    missing or None values take the backend's default. RequestError lists
    every problem with its valid range; nothing is clamped."""
    values = {**(values or {}), **kwargs}
    unknown = sorted(set(values) - set(PARAM_NAMES) - set(EXTRA_NAMES))
    if unknown:
        raise RequestError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAM_NAMES)}")
    given = {k: v for k, v in values.items() if v is not None}
    problems = Problems()
    check = problems.check
    backend = check(_choice, "backend", given.get("backend", "exact"), BACKENDS)
    d = defaults(backend or "exact")
    v = {**d, **given}
    out: dict[str, Any] = {"backend": backend}
    out["method"] = check(_choice, "method", v["method"], METHODS)
    out["seed"] = check(_number, "seed", v["seed"], *SEED_RANGE, integer=True)
    out["steps"] = check(_number, "steps", v["steps"], *STEPS_RANGE, integer=True)
    out["guidance_scale"] = check(_number, "guidance_scale (CFG)", v["guidance_scale"], *CFG_RANGE, integer=False)
    out["views"] = check(_number, "views (per step)", v["views"], *VIEWS_RANGE, integer=True)
    lo, hi, multiple = RES_RANGE[backend or "exact"]
    name = BACKEND_NAMES[backend or "exact"]
    res = check(_number, "res", v["res"], lo, hi, integer=True, unit=f" for {name}")
    if lo == hi and res is None:
        problems.found[-1] = f"res must be {lo} for {name}, the size it was trained at (got {v['res']!r})"
    elif res is not None and res % multiple:
        problems.add(f"res must be a multiple of {multiple} between {lo} and {hi} for {name} (got {res})")
    out["res"] = res
    out["t_start"] = check(_number, "t_start", v["t_start"], *T_RANGE, integer=True)
    out["t_end"] = check(_number, "t_end", v["t_end"], *T_RANGE, integer=True)
    if out["t_start"] is not None and out["t_end"] is not None and not out["t_end"] < out["t_start"]:
        problems.add(f"t_end ({out['t_end']}) must be below t_start ({out['t_start']}): "
                        "t anneals from t_start down to t_end")
    out["lr_scale"] = float(check(_number, "lr_scale", v["lr_scale"], *LR_SCALE_RANGE, integer=False) or 0)
    out["gamma"] = None if v["gamma"] is None else check(_number, "gamma", v["gamma"], *GAMMA_RANGE, integer=False)
    out["densify_every"] = None if v["densify_every"] is None else \
        check(_number, "densify_every", v["densify_every"], *DENSIFY_RANGE, integer=True)
    out["prompt"] = check(_text, "prompt", v["prompt"], backend, backend in SD_BACKENDS)
    out["negative_prompt"] = check(_text, "negative prompt", v["negative_prompt"], backend, False)
    scenes = given.get("scenes") or ()
    if scenes and backend != "exact":
        problems.add("scenes (reference PLYs) are for the exact prior (backend 'exact') only")
    model = given.get("model")
    if model is not None and backend != "sd":
        problems.add("model is for Stable Diffusion (backend 'sd') only")
    problems.raise_any()
    out["guidance_scale"] = float(out["guidance_scale"])
    return Request(**out, scenes=tuple(str(p) for p in scenes), model=None if model is None else str(model))


def parse_methods(methods) -> list[str]:
    """A non-empty list of methods from a list or a comma-separated string
    (duplicates dropped, order kept); RequestError otherwise."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, (list, tuple)) or not methods:
        raise RequestError(f"methods must be a non-empty list of {', '.join(map(repr, METHODS))} (got {methods!r})")
    problems = Problems()
    for m in methods:
        problems.check(_choice, "methods", m, METHODS)
    problems.raise_any()
    return list(dict.fromkeys(methods))


def parse_seeds(text: str) -> list[int]:
    """Seeds from text like "0-7", "0,3,5" or "0-3,10" (order kept, duplicates
    dropped), each in the seed range; RequestError otherwise."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        bounds = part.split("-") if "-" in part[1:] else [part]
        try:
            lo, hi = (int(bounds[0]), int(bounds[-1])) if len(bounds) <= 2 else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None or lo > hi:
            raise RequestError(f"seeds must look like 0-7, 0,3,5 or 0-3,10 (got {text!r})")
        for bound in (lo, hi):
            _number("seed", bound, *SEED_RANGE, integer=True)
        if hi - lo + 1 > MAX_SEED_LIST:
            raise RequestError(f"at most {MAX_SEED_LIST} seeds (got {part!r})")
        seeds.extend(range(lo, hi + 1))
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) > MAX_SEED_LIST:
        raise RequestError(f"at most {MAX_SEED_LIST} seeds (got {len(seeds)})")
    return seeds


def parse_compare(values: Mapping[str, Any] | None = None, **kwargs) -> tuple[Request, list[str], int]:
    """(base request, methods, n_seeds) of a seed comparison: the request's
    values plus ``methods`` (list; default cfd and sds) and ``n_seeds`` (1 …
    ``max_seeds()``; default min(4, that)); seeds run seed … seed + n_seeds − 1."""
    values = {**(values or {}), **kwargs}
    methods = values.pop("methods", None)
    n_seeds = values.pop("n_seeds", None)
    problems = Problems()
    methods = problems.check(parse_methods, ["cfd", "sds"] if methods is None else methods) or []
    limit = max_seeds()
    n_seeds = problems.check(_number, "n_seeds", min(4, limit) if n_seeds is None else n_seeds, 1, limit,
                             integer=True)
    base = problems.check(parse_request, values, method=methods[0] if methods and not problems else None)
    if base is not None and n_seeds is not None and base.seed + n_seeds - 1 > SEED_RANGE[1]:
        problems.add(f"seed + n_seeds − 1 must stay ≤ {SEED_RANGE[1]} (got seed {base.seed} with {n_seeds} "
                     f"seeds); choose a seed ≤ {SEED_RANGE[1] - n_seeds + 1}")
    problems.raise_any()
    return base, methods, n_seeds


# ------------------------------------------------------------------ guidance

_GUIDANCE: dict[tuple, Any] = {}
_GUIDANCE_LOCKS: dict[tuple, threading.Lock] = {}   # one per model: a slow load blocks only its own requests
_GUIDANCE_LOCK = threading.Lock()                   # guards the two dicts
SD_HINT = "The exact prior (backend 'exact') works without weights."


def device() -> str:
    return "cuda" if cuda_available() else "cpu"


def sd_problem(model: str | None = None) -> str | None:
    """None if Stable Diffusion weights are here, else the message with the fix."""
    from .guidance.stable_diffusion import check_sd_weights

    try:
        return check_sd_weights(model)
    except Exception as exc:  # noqa: BLE001 - a broken cache must not take the app down
        return f"Stable Diffusion weights could not be checked ({type(exc).__name__}: {exc})."


def tiny_sd_problem() -> str | None:
    """None if the bundled tiny-sd folder is complete, else the message with the fix."""
    from .guidance.stable_diffusion import check_sd_weights
    from .guidance.tiny_sd import TINY_SD_DIR

    if check_sd_weights(TINY_SD_DIR) is None:
        return None
    return (f"tiny-sd is not available: its folder {TINY_SD_DIR} is missing or incomplete. Fix: restore it "
            "(`git checkout -- assets/models/tiny-sd`) or rebuild it with `python scripts/train_tiny_sd.py` "
            "(about an hour on a CPU).")


def exact_prior(scenes: tuple[str, ...] = ()):
    """The exact prior (multi-view) over ``scenes`` or every bundled object, cached."""
    return _cached(("exact", tuple(scenes), device()), lambda: _build_exact(scenes))


def _build_exact(scenes):
    from .gaussians import load_ply
    from .guidance.exact_prior import ExactPrior

    if scenes:
        paths = [Path(p) for p in scenes]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise RequestError(f"scenes: no such PLY file(s): {', '.join(missing)}")
        prior = ExactPrior([load_ply(p) for p in paths], names=[p.stem for p in paths], multiview=True,
                           name="Exact prior: " + ", ".join(p.stem for p in paths))
    else:
        prior = ExactPrior.bundled(multiview=True)
    return prior.to(device())


def tiny_sd():
    """The bundled tiny-sd (``assets/models/tiny-sd``) through the Stable Diffusion
    guidance, cached; GuidanceUnavailable with the fix if its folder is incomplete."""
    import torch

    from .guidance.stable_diffusion import StableDiffusionGuidance
    from .guidance.tiny_sd import TINY_SD_DIR

    if (problem := tiny_sd_problem()) is not None:
        raise GuidanceUnavailable(f"{problem}\n{SD_HINT}")
    def build():
        guidance = StableDiffusionGuidance.from_pretrained(TINY_SD_DIR, dtype=torch.float32, name="tiny-sd")
        guidance.references = exact_prior()   # what it was trained on: run.json names the nearest variant
        return guidance

    return _cached(("tiny-sd", device()), build)


def _cached(key, build):
    """The model of ``key``, built once even when two requests ask at once; a
    build may ask for another model (tiny-sd's references are the exact prior)."""
    with _GUIDANCE_LOCK:
        lock = _GUIDANCE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _GUIDANCE:
            _GUIDANCE[key] = build()
        return _GUIDANCE[key]


def guidance_for(request: Request, allow_download: bool = False):
    """The (cached, read-only) guidance of ``request``. Raises GuidanceUnavailable
    with the fix when SD weights are missing (``allow_download``: let a hub id be
    fetched instead, as the CLI does)."""
    if request.backend == "exact":
        return exact_prior(request.scenes)
    if request.backend == "tiny-sd":
        return tiny_sd()
    from .guidance.stable_diffusion import StableDiffusionGuidance, hub_offline, resolve_model

    model = resolve_model(request.model)
    loaded = _GUIDANCE.get(("sd", model))
    if loaded is not None:  # no disk check per request once the model is in memory
        return loaded
    problem = sd_problem(model)
    if problem:
        if not (allow_download and not hub_offline()):
            raise GuidanceUnavailable(f"{problem}\n{SD_HINT}")
        print("Stable Diffusion weights are not on this machine; trying the Hugging Face Hub "
              "(set HF_HUB_OFFLINE=1 to fail at once, or CFD_MODEL=/path/to/folder) …", file=sys.stderr)
    try:
        return _cached(("sd", model), lambda: StableDiffusionGuidance.from_pretrained(model))
    except GuidanceUnavailable as exc:
        raise GuidanceUnavailable(f"{exc}\n{SD_HINT}") from None


def prepare(request: Request, allow_download: bool = False):
    """The guidance of ``request``, after checking that it can follow the request's
    prompts (the exact prior refuses a prompt naming no object it knows, with the
    list of what it knows): RequestError / GuidanceUnavailable before any work."""
    guidance = guidance_for(request, allow_download)
    try:
        guidance.condition(request.prompt, request.negative_prompt, request.guidance_scale)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return guidance


def warm_up(request: Request | None = None) -> None:
    """Render ahead what the first run of ``request`` (default: the default
    request) would render once per process: the exact prior's references of the
    objects its condition weighs from every training view of its pool, and every
    object from the PSNR views; and import what the exports need
    (``export.preload``). For a server to call in the background at start."""
    import torch

    from .cameras import pool_cameras
    from .distill import run_threads
    from .export import preload

    preload()
    request = request or parse_request()
    if request.backend != "exact":
        return
    prior, config = exact_prior(request.scenes), request.config()
    size = config.res // prior.latent_factor
    cond = prior.condition(config.prompt, config.negative_prompt, config.guidance_scale)
    with run_threads(prior, config), torch.no_grad():
        if config.cameras.pool:
            prior.reference_images(pool_cameras(config.res, config.res, config.cameras), size, size,
                                   cond.support(len(prior.scenes)))
        prior.scene_psnr(prior.scenes[0], config.res)


# ------------------------------------------------------------------ the CLI's options

def add_generate_arguments(parser: argparse.ArgumentParser, exclude=()) -> argparse.ArgumentParser:
    """The generate options (every request parameter but those named in
    ``exclude``, plus --scenes, --model and the export sizes), each defaulting
    to None = the backend's default; types, choices and ranges are checked by
    ``parse_request`` / ``parse_exports``, not argparse, so the CLI and the app
    say the same."""
    for p in PARAMS:
        if p.name in exclude:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": help_text(p.name).replace("%", "%%")}  # argparse formats help
        if p.kind is not str or p.choices:
            kwargs["metavar"] = p.name.upper()
        parser.add_argument(p.flag, **kwargs)   # values stay text: parse_request checks them
    parser.add_argument("--scenes", nargs="*", default=None, metavar="PLY",
                        help="exact prior over these splat PLYs instead of the bundled objects")
    parser.add_argument("--model", default=None,
                        help="SD hub id or local folder (default: $CFD_MODEL or SD-2.1-base)")
    defaults_ = ExportSettings()
    for name, (flag, text) in EXPORT_FLAGS.items():
        lo, hi = EXPORT_RANGES[name]
        parser.add_argument(flag, dest=name, default=None, metavar="N",
                            help=f"{text} ({lo}–{hi}; default {getattr(defaults_, name)})")
    return parser


def request_from_args(args: argparse.Namespace, **overrides) -> Request:
    """The Request of parsed ``add_generate_arguments`` options (its export
    settings included); ``overrides`` replace options."""
    values = {name: getattr(args, name, None) for name in (*PARAM_NAMES, *EXTRA_NAMES)}
    problems = Problems()
    exports = problems.check(parse_exports, {name: getattr(args, name, None) for name in EXPORT_RANGES})
    request = problems.check(parse_request, values, **overrides)
    problems.raise_any()
    return replace(request, exports=exports)
