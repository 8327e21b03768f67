"""The request layer below the app and the CLI: plain keyword values in, a
validated ``Request`` out, and from it the run's ``DistillConfig`` and export
settings (the parameters themselves, their ranges and defaults: ``cfd.params``;
the models: ``cfd.backends``).

    request  = parse_request({"prompt": "a rubber duck", "seed": 3})
    guidance = backends.prepare(request)  # cached backend; refuses what it cannot follow
    config   = request.config()           # the DistillConfig of the run
    exports  = request.exports            # ExportSettings: videos, GLB, PLY layout (pipeline.generate keywords)

Every parameter is optional: a missing or None value takes its backend's
default (``params.defaults(backend)``), so ``{"backend": "sd"}`` alone is a
complete Stable Diffusion request. Out-of-range values are refused
(``RequestError`` listing every problem with its valid range), never clamped.
The app (``app.py``), ``python -m cfd generate`` (``cfd.cli``) and batch jobs all
go through here, so they cannot disagree on a range or a default.
Nothing here imports gradio.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from .distill import METHODS, DistillConfig
from .errors import RequestError
from .guidance.tiny_sd import TINY_SD_MAX_PROMPT_BYTES
from .params import (BACKEND_NAMES, BACKENDS, CFG_RANGE, DENSIFY_RANGE, EXPORT_RANGES, GAMMA_RANGE, GLB_RES,
                     LR_SCALE_RANGE, MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS, MAX_SEED_LIST, PARAM_NAMES, PREVIEW_EVERY,
                     PREVIEW_RES, RES_RANGE, SD_BACKENDS, SEED_RANGE, STEPS_RANGE, T_RANGE, VIDEO_FRAMES, VIDEO_RES,
                     VIEWS_RANGE, EXTRA_NAMES, _fmt, base_config, defaults, max_seeds)

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

    def lower_res(self) -> int:
        """The resolution to suggest after running out of memory: half this one,
        within the backend's range."""
        return max(RES_RANGE[self.backend][0], self.res // 2)

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


def splat_ceiling(config: DistillConfig) -> int:
    """The most splats a run of ``config`` can hold: a densification round grows
    each chosen splat into two, so it at most doubles the count, and it runs at
    steps s < densify_until × steps with (s + 1) % densify_every = 0; never past
    ``max_splats``."""
    if not config.densify_every:
        return config.init_splats
    rounds = math.ceil(config.densify_until * config.steps) // config.densify_every
    return min(config.max_splats, config.init_splats * 2 ** min(rounds, 64))


def splat_factor(request: Request) -> float:
    """How many times the splats of its backend's default run a run of
    ``request`` may grow to (``splat_ceiling``), at least 1."""
    default = splat_ceiling(parse_request({"backend": request.backend}).config())
    return max(1.0, splat_ceiling(request.config()) / default)


def work_units(request: Request, runs: int = 1, objects_factor: float = 1.0) -> float:
    """The work of ``runs`` runs of ``request`` in default runs of its backend
    (on this machine: ``params.defaults``): steps × views × res² × runs, times
    ``splat_factor`` (a step's render and backward are linear in the splats), times
    ``objects_factor`` (the exact prior: how many more objects a step weighs
    than the default's, ``backends.objects_factor``), over the same product of
    the defaults. A default generation is 1; the default seed comparison (4
    seeds × CFD and SDS) is 8."""
    d = defaults(request.backend)
    return (runs * request.steps * request.views * request.res ** 2 * splat_factor(request)
            * max(1.0, objects_factor) / (d["steps"] * d["views"] * d["res"] ** 2))


class OverBudget(RequestError):
    """A request asks for more work than the app allows (``check_work``)."""


def check_work(request: Request, runs: int, budget: float, objects_factor: float = 1.0) -> None:
    """OverBudget when ``runs`` runs of ``request`` ask for more than ``budget``
    default runs of work (``work_units``), naming the budget and how to stay in it."""
    work = work_units(request, runs, objects_factor)
    if work > budget:
        extra = (f" × up to {splat_ceiling(request.config())} splats" if splat_factor(request) > 1 else "") + \
            (f" × {objects_factor:.3g}× the objects weighed per step" if objects_factor > 1 else "")
        raise OverBudget(
            f"this request asks for {work:.3g}× the work of a default run ({runs} run(s) × {request.steps} steps × "
            f"{request.views} views × {request.res}² pixels{extra}) and this app allows {budget:g}× per request. "
            "Fix: fewer steps or views, a lower resolution, fewer seeds or methods, densifying less often (a larger "
            "densify_every, or 0), or CFG 1 on the exact prior.")
