"""The models behind the requests: each backend's guidance, built once per
process and cached (one lock per model, so a slow load blocks only its own
requests), checked against the request it serves, warmed up ahead of the
first run.

    guidance = prepare(request)     # RequestError / GuidanceUnavailable before any work
"""
from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import Any

from .guidance.base import GuidanceUnavailable
from .params import cuda_available
from .request import Request, RequestError, parse_request

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


def bundled_objects() -> str:
    """What prompts can name among the bundled objects (families, variants,
    themes: ``Vocabulary.describe``), read from the scene sets' metadata
    without loading a scene."""
    return _vocabulary(()).describe()


@functools.cache
def _vocabulary(scenes: tuple[str, ...]):
    """The exact prior's vocabulary over ``scenes`` (PLY paths: their names) or
    the bundled objects, from metadata alone."""
    from .scenes import find_scene_sets, vocabulary
    from .vocabulary import Vocabulary

    return Vocabulary.from_names([Path(p).stem for p in scenes]) if scenes else vocabulary(find_scene_sets())


def objects_weighed(request: Request) -> int:
    """How many objects' references a step of ``request`` weighs on the exact
    prior (``ExactCondition.support``: the prompt's objects at CFG 1, every
    object otherwise); 1 on the other backends. No scene is loaded."""
    if request.backend != "exact":
        return 1
    vocabulary = _vocabulary(tuple(request.scenes))
    if request.guidance_scale != 1 or not request.prompt:
        return len(vocabulary)
    return max(1, len(vocabulary.select(request.prompt)))


def objects_factor(request: Request) -> float:
    """``objects_weighed`` over the backend's default request's (for the work
    budget, ``request.work_units``)."""
    return objects_weighed(request) / objects_weighed(parse_request({"backend": request.backend}))


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
    from .guidance.tiny_sd import TINY_SD_CAMERA_SCALE, TINY_SD_DIR

    if (problem := tiny_sd_problem()) is not None:
        raise GuidanceUnavailable(f"{problem}\n{SD_HINT}")
    def build():
        guidance = StableDiffusionGuidance.from_pretrained(TINY_SD_DIR, dtype=torch.float32, name="tiny-sd",
                                                           camera_scale=TINY_SD_CAMERA_SCALE)
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


RESULT_INPUTS = ("cfd", "assets/models", "assets/scenes")   # what a run's result depends on, beside torch


@functools.cache
def results_fingerprint() -> str:
    """16 hex digits that change whenever the result of a request could: a hash
    of this package's code (Python and C++), the bundled models and objects, and
    torch's version (e.g. the key of a cache of the examples' results). Computed
    once per process."""
    import hashlib

    import torch

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.blake2b(torch.__version__.encode(), digest_size=8)
    files = sorted(p for part in RESULT_INPUTS for p in (root / part).rglob("*")
                   if p.is_file() and p.suffix not in (".pyc",) and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
