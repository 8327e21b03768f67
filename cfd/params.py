"""Every request parameter in one place: its name, label and help, its range,
and each backend's default (the schema the app, the CLI and batch share; the
request layer, ``cfd.request``, parses and checks values against it).

    defaults("tiny-sd")        # every parameter's default on a backend
    help_text("steps")         # what it does, its range and its per-backend defaults
    base_config("sd")          # a backend's DistillConfig before a request's values

Nothing here imports gradio.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .distill import METHODS, DistillConfig
from .errors import RequestError
from .guidance.exact_prior import DEFAULT_EXACT_GUIDANCE_SCALE
from .guidance.stable_diffusion import DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT
from .guidance.tiny_sd import TINY_SD_GUIDANCE_SCALE, TINY_SD_RES, TINY_SD_STEPS, TINY_SD_VIEWS, tiny_sd_config
from .settings import setting

BACKENDS = ("exact", "tiny-sd", "sd")
BACKEND_NAMES = {"exact": "the exact prior", "tiny-sd": "tiny-sd (a miniature SD trained on the bundled objects)",
                 "sd": "Stable Diffusion"}
SD_BACKENDS = ("tiny-sd", "sd")   # Stable Diffusion's code path (text encoder, VAE, UNet)
METHOD_LABELS = {"cfd": "CFD (ODE)", "cfd-sde": "CFD-SDE", "sds": "SDS (baseline)",
                 "iid": "i.i.d. noise (ablation)", "fixed2d": "fixed 2D noise (ablation)"}



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
# chosen on tiny-sd (docs/tiny-sd.md): its default run is the SD path end to end on a CPU
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
        return tiny_sd_config(**kwargs)
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
    Param("gamma", "γ (CFD-SDE noise refresh per step)", "CFD-SDE only; a constant γ per step instead of the "
          "schedule", float),
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
        return f"{param.help} ({ranges}; empty: the authors' schedule over the run's progress, every backend)"
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
