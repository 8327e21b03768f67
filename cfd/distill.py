"""The distillation loop: CFD (probability-flow ODE and its SDE variant), SDS and
the ablations, in one loop that differs only through a time and a noise strategy.

One step τ of N (docs/design.md, section 2):
    cond   = guidance.condition(prompt, negative prompt, CFG scale)      once per run
    t      = t(τ)                                  time strategy
    c      ~ training camera distribution          seeded by the run's seed
    x      = encode(render(θ, c))                  differentiable
    ε̃      = noise(τ, c)                           noise strategy
    x_t    = α_t x + σ_t ε̃
    ε̂      = guidance(x_t, t, c)
    grad   = w(t) (ε̂ − ε̃)                          weighting: λ_t = σ_t/α_t (CFD: = x − x̂₀,
                                                   pull x to the predicted clean image), σ_t² (SDS)
    loss   = ½ ‖x − sg(x − grad)‖²                 (loss_space "pixel": the update decoded onto the render)
    Adam step on θ (skipped if a gradient is not finite)
    densify/prune                                  densification strategy (cfd.densify)
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Callable, ContextManager

import torch
from torch import Tensor

from .cameras import CameraRanges, orbit_camera, preview_camera, sample_cameras
from .densify import Densifier
from .errors import NonFiniteGradient
from .gaussians import GaussianScene, init_scene, make_optimizer
from .noise import (FixedImageNoise, IIDNoise, NoiseSource, Surface, SurfaceNoise, default_cell_size,
                    scene_centre)
from .render import render
from .schedule import (AUTHORS_SD_GAMMA_KNOTS, AUTHORS_SD_STEPS, AUTHORS_SD_T_KNOTS, GammaSchedule,
                       NoiseSchedule, annealed_timestep, check_gamma, uniform_timestep)

METHODS = ("cfd", "cfd-sde", "sds", "iid", "fixed2d")


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines a run; the same config and seed give the same scene
    on CPU, bit for bit. Defaults suit the exact prior at 32–64 px
    (``for_stable_diffusion()`` gives the SD defaults; tiny-sd's are its backend's,
    ``cfd.guidance.tiny_sd.tiny_sd_config``)."""

    method: str = "cfd"            # cfd | cfd-sde | sds | iid | fixed2d
    seed: int = 0                  # drives the noise, the camera sequence and SDS's timesteps
    # the run's conditioning, prepared once by guidance.condition (None: the backend's default)
    prompt: str = ""
    negative_prompt: str | None = None
    guidance_scale: float | None = None   # CFG s in ε_u + s(ε_c − ε_u)
    steps: int = 300
    res: int = 32                  # render resolution fed to the guidance (pixels)
    batch_views: int = 1           # views per step
    t_knots: tuple = ((0.0, 980), (1.0, 20))   # annealed t(τ/N), piecewise linear
    t_range: tuple = (20, 980)     # SDS: t ~ U[t_min, t_max]
    weighting: str | None = None   # w(t): "lambda" (σ_t/α_t) | "sigma2" (σ_t², DreamFusion);
                                   # None: sigma2 for sds, lambda for the others
    # where the update reaches the render: "latent" (½‖x − sg(x − g)‖², back through the
    # encoder) or "pixel" (the update decoded, D(x − g) − D(x), applied to the render:
    # no encoder gradient); see pixel_target
    loss_space: str = "latent"
    # cfd-sde refresh rate: a constant γ per step of this run, or knots ((progress, γ), …)
    # of a schedule whose γ are per step of a gamma_reference_steps-long run (None: of
    # this run); see schedule.GammaSchedule. Default, every backend: the authors' γ
    # knots at the fractions of the run where they put them (per step of their
    # 25 000-step run), so the field is refreshed many times over in the first 20 %
    # and keeps about half its correlation over the last 60 %
    gamma: float | tuple = AUTHORS_SD_GAMMA_KNOTS
    gamma_reference_steps: int | None = AUTHORS_SD_STEPS
    supersample: int = 2           # noise sub-pixels per side for pixel-space guidance (latent_factor 1);
                                   # latent guidance (SD ×8, ExactPrior ×2) reuses its render instead
    # training views; the exact prior's default is a pool of 64 views so its
    # reference renders are memoised (for_stable_diffusion samples continuously)
    cameras: CameraRanges = CameraRanges(pool=64)
    background: str = "white"      # white | black | random (per step)
    # initial scene: a ball of grey splats drawn from init_seed (None: the run's seed,
    # so seeds also start from different balls, which gave more distinct variants over a
    # set of seeds: docs/toy-results.md, "One prompt, many objects: the families")
    init_splats: int = 2000
    init_radius: float = 0.5
    init_seed: int | None = None
    # Adam, per parameter group; the means' lr decays exponentially to lr_means_final.
    # (Tuned on the exact prior with 4 views per step: 1.5× the 1-view rates, and 2000
    # splats, each scored higher on the toys and the pattern set: docs/performance.md,
    # "How the budget is spent".)
    lr_means: float = 6e-3
    lr_means_final: float = 6e-4
    lr_log_scales: float = 1.5e-2
    lr_quats: float = 1.5e-2
    lr_opacity: float = 7.5e-2
    lr_sh: float = 4.5e-2
    adam_betas: tuple = (0.9, 0.99)
    # densification (cfd.densify.Densifier, gsplat DefaultStrategy semantics): every
    # `densify_every` steps while step < `densify_until` × steps (0 = off)
    densify_every: int = 0
    densify_until: float = 0.5
    densify_grad_ratio: float = 2.0  # grow splats whose mean view-space gradient > this × the scene's mean
    split_scale: float = 0.05      # grown splats larger than this × the scene extent are split, smaller cloned
    prune_opacity: float = 0.01
    prune_scale: float = 0.5       # splats larger than this × the scene extent are pruned
    opacity_reset_every: int = 0   # clamp opacities to 2 × prune_opacity every this many steps (0 = off)
    max_splats: int = 50_000
    # a step whose gradient has a NaN/Inf is skipped (optimiser untouched); more than
    # this many in a row stop the run with NonFiniteGradient
    max_nonfinite_in_a_row: int = 3
    preview_every: int = 0         # steps between preview renders for the callback (0 = off)
    preview_res: int = 128
    # torch intra-op threads while distilling on CPU (None: leave torch's setting). A run
    # gives the same scene bit for bit at any thread count (the C++ compositor reduces in
    # a fixed order; tested). One: 2 threads were no faster through the app on a 2-core
    # machine, and two processes of 2 threads each (a Generate beside Compare's workers,
    # two benchmarks) oversubscribe the cores and slow runs several-fold (the timings:
    # docs/performance.md, "CPU choices")
    cpu_threads: int | None = 1

    def __post_init__(self):
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 1 <= self.steps <= 1 << 16:
            problems.append(f"steps={self.steps} must be in 1..65536")
        if not 8 <= self.res <= 2048:
            problems.append(f"res={self.res} must be in 8..2048")
        if self.weighting not in (None, *WEIGHTINGS):
            problems.append(f"weighting {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if self.loss_space not in LOSS_SPACES:
            problems.append(f"loss_space {self.loss_space!r} must be one of {', '.join(LOSS_SPACES)}")
        if self.background not in ("white", "black", "random"):
            problems.append(f"background {self.background!r} must be white, black or random")
        try:
            check_gamma(self.gamma)
        except ValueError as exc:
            problems.append(str(exc))
        if self.batch_views < 1 or self.supersample < 1 or self.init_splats < 1:
            problems.append("batch_views, supersample and init_splats must be ≥ 1")
        if problems:
            raise ValueError("DistillConfig: " + "; ".join(problems))

    @staticmethod
    def for_stable_diffusion(**overrides) -> "DistillConfig":
        """Defaults for SD-2.1-base (docs/stable-diffusion.md): 512²
        renders (64² latents), 1000 steps; the authors' SD-stage t knots
        980 → 692 (10 %) → 404 (50 %) → 212 at the fractions of the run where
        they put them (the γ schedule of cfd-sde is every backend's); DreamGaussian's splat
        learning rates and 5000 initial splats, densified every 10 % of the run
        until half-way (``densify_every`` follows ``steps`` unless given), random
        backgrounds. Prompt defaults (negative prompt, CFG, view suffixes) are
        the guidance's: ``cfd.guidance.stable_diffusion``."""
        steps = overrides.get("steps", 1000)
        base = DistillConfig(res=512, steps=steps, t_knots=AUTHORS_SD_T_KNOTS, cameras=CameraRanges(),
                             init_splats=5000, densify_every=max(1, steps // 10), background="random",
                             lr_means=1e-3, lr_means_final=2e-5, lr_sh=1e-2, lr_opacity=5e-2,
                             lr_log_scales=5e-3, lr_quats=5e-3, preview_every=50, cpu_threads=None)
        return replace(base, **overrides)

    @property
    def initial_seed(self) -> int:
        """The seed of the initial splats: ``init_seed``, or the run's seed if None."""
        return self.seed if self.init_seed is None else self.init_seed

    def gamma_schedule(self) -> GammaSchedule:
        """cfd-sde's per-step γ_k of this run."""
        return GammaSchedule(self.gamma, self.steps, self.gamma_reference_steps)


@dataclass
class StepInfo:
    """What the callback sees after each step. Return True from the callback to
    stop the run cleanly (the scene so far is returned)."""

    step: int                  # 1-based
    steps: int
    t: int
    loss_tensor: Tensor        # ½‖grad‖² per pixel of the diffusion image (0-dim, on the device)
    n_splats: int
    scene: GaussianScene       # the live scene (read only; detach before keeping)
    preview: Tensor | None = None  # [H,W,3] in [0,1], every preview_every steps
    skipped_steps: int = 0     # steps skipped so far for a non-finite gradient

    @property
    def loss(self) -> float:
        """The loss as a float (a host sync on CUDA: read it at a throttled rate)."""
        return float(self.loss_tensor)


# ------------------------------------------------------------- strategies

class AnnealedTime:
    """Deterministic, monotonically decreasing t(τ/N) through ``knots`` (CFD)."""

    def __init__(self, knots):
        self.knots = knots

    def __call__(self, step: int, steps: int) -> int:
        return annealed_timestep(step / max(steps - 1, 1), self.knots)


class UniformTime:
    """t ~ U[t_min, t_max] every step (SDS)."""

    def __init__(self, t_range, generator: torch.Generator):
        self.t_range, self.generator = t_range, generator

    def __call__(self, step: int, steps: int) -> int:
        return uniform_timestep(self.generator, *self.t_range)


WEIGHTINGS = {
    "lambda": lambda schedule, t: float(schedule.lam(t)),             # σ_t/α_t: CFD, the ODE's own scale
    "sigma2": lambda schedule, t: float(schedule.sigma(t)) ** 2,      # σ_t² = 1 − ᾱ_t: DreamFusion's SDS
}


def weighting(config: "DistillConfig"):
    """w(schedule, t) of ``config`` (DreamFusion's σ_t² for sds unless overridden)."""
    return WEIGHTINGS[config.weighting or ("sigma2" if config.method == "sds" else "lambda")]


LOSS_SPACES = ("latent", "pixel")


def pixel_target(guidance, rgb: Tensor, x: Tensor, grad: Tensor) -> Tensor:
    """The render's target [B,3,H,W] when the update ``grad`` of the diffusion image
    ``x`` (both [B,C,h,w]) is taken in pixel space: rgb + D(x − grad) − D(x), D the
    guidance's decoder (one call on both), so the render moves by the decoded update
    and the decoder's own reconstruction error cancels."""
    decoded = guidance.decode(torch.cat([x.detach() - grad, x.detach()]))
    moved, here = decoded.chunk(2)
    return (rgb.detach() + moved.to(rgb.device) - here.to(rgb.device)).detach()


class FiniteGradientGuard:
    """Lets an optimiser step through only if every gradient is finite; counts the
    skipped steps and raises ``NonFiniteGradient`` after more than ``limit`` in a
    row (one host sync per step)."""

    def __init__(self, limit: int):
        self.limit, self.skipped, self.in_a_row = limit, 0, 0

    def __call__(self, step: int, optimizer) -> bool:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row > self.limit:
            raise NonFiniteGradient(
                f"step {step + 1}: the gradient was NaN or infinite for {self.in_a_row} steps in a row "
                f"({self.skipped} skipped in all), so the run stopped; the guidance's output is not finite "
                "(e.g. an fp16 overflow in the VAE or UNet). Try a lower guidance scale or learning rate, "
                "or float32.")
        return False


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream of a run (cameras, times,
    noise, backgrounds, densification), so no two streams of two seeds coincide."""
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def strategies(guidance, config: DistillConfig, init: GaussianScene | None = None):
    """The (time, noise) strategies of ``config.method`` (the noise: ``noise_source``)."""
    if config.method == "sds":
        times = UniformTime(config.t_range, torch.Generator().manual_seed(stream_seed(config.seed, "times")))
    else:
        times = AnnealedTime(config.t_knots)
    return times, noise_source(guidance, config, init)


def noise_source(guidance, config: DistillConfig, init: GaussianScene | None = None) -> NoiseSource:
    """The noise ε̃ of a run of ``config.method``, decided once for the run; the
    loop and the pipeline's noise video both draw it from a source built here.

    Surface noise (cfd, cfd-sde) lives on the run's noise grid (``noise_grid``),
    its cells sized for the middle training view and centred on the starting
    scene: ``init``'s opacity-weighted centre, or the origin, where
    ``init_scene`` puts its ball and the training cameras look.
    """
    seed = config.seed
    if config.method in ("sds", "iid"):
        return IIDNoise(stream_seed(seed, "noise"))
    if config.method == "fixed2d":
        return FixedImageNoise(stream_seed(seed, "noise"))
    res, supersample = noise_grid(guidance, config)
    mid_view = orbit_camera(0.0, 0.0, config.cameras.eval_radius, config.cameras.eval_fov, res, res)
    return SurfaceNoise(seed, supersample, default_cell_size(mid_view),
                        centre=(0.0, 0.0, 0.0) if init is None else scene_centre(init),
                        gamma=config.gamma_schedule() if config.method == "cfd-sde" else 0.0)


# ------------------------------------------------------------------ loop

def distill(guidance, config: DistillConfig, callback: Callable[[StepInfo], bool | None] | None = None,
            init: GaussianScene | None = None, timer: Callable[[str], ContextManager] | None = None,
            cond=None) -> GaussianScene:
    """Optimise a splat scene so its renders follow ``guidance`` (a
    ``cfd.guidance.Guidance``) by ``config.method``. Returns the final scene
    (detached), or the scene so far if the callback asked to stop.

    ``init``: a starting scene instead of ``init_scene``; ``timer(name)``: a
    context manager wrapped around each phase (render, noise, encode, guidance,
    backward, optimiser), for ``cfd.bench speed``; ``cond``: the run's condition
    if the caller prepared it already (``guidance.condition`` of the config's
    prompt, negative prompt and CFG scale), else built here."""
    timer = timer or (lambda name: nullcontext())
    if cond is None:
        cond = guidance.condition(config.prompt, config.negative_prompt, config.guidance_scale)
    with run_threads(guidance, config):
        return _distill(guidance, config, cond, callback, init, timer, guidance_device(guidance))


def noise_grid(guidance, config: DistillConfig) -> tuple[int, int]:
    """(noise resolution, noise supersampling) of a run: the guidance's diffusion
    resolution res / latent_factor; a latent guidance's render already supersamples
    it (SD ×8, ExactPrior ×2), a pixel-space one uses ``config.supersample``."""
    f = guidance.latent_factor
    if config.res % f:
        raise ValueError(f"res={config.res} must be a multiple of the guidance's latent factor {f}")
    return config.res // f, (f if f > 1 else config.supersample)


def _distill(guidance, config, cond, callback, init, timer, device) -> GaussianScene:
    f = guidance.latent_factor
    _, noise_ss = noise_grid(guidance, config)
    times, noise = strategies(guidance, config, init)
    weight = weighting(config)
    schedule = NoiseSchedule(guidance.alphas_cumprod)

    scene = init if init is not None else init_scene(config.init_splats, seed=config.initial_seed,
                                                     radius=config.init_radius)
    scene = scene.clone().to(device)
    optimizer, means_decay = _optimizer(scene, config)
    cam_gen = torch.Generator().manual_seed(stream_seed(config.seed, "cameras"))
    bg_gen = torch.Generator().manual_seed(stream_seed(config.seed, "backgrounds"))
    densify = Densifier.from_config(config, stream_seed(config.seed, "densify"))
    finite = FiniteGradientGuard(config.max_nonfinite_in_a_row)

    for step in range(config.steps):
        t = times(step, config.steps)
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        cameras = sample_cameras(config.batch_views, config.res, config.res, cam_gen, config.cameras)
        background = _background(config.background, bg_gen)

        with timer("render"):
            out = render(scene, cameras, background)                          # all views in one call
            rgb = out.rgb.permute(0, 3, 1, 2)                                  # [B,3,H,W]
        with timer("encode"):
            x = guidance.encode(rgb.detach() if config.loss_space == "pixel" else rgb)   # [B,C,h,w]
        with timer("noise"):
            surfaces = _surfaces(scene, cameras, out, f, noise_ss, background) if noise.needs_surface else None
            eps = noise.sample(step, tuple(x.shape), surfaces).to(x.device)
        with timer("guidance"):
            x_t = alpha * x.detach() + sigma * eps
            eps_hat = guidance.predict_noise(x_t, t, cameras, cond)
            grad = weight(schedule, t) * (eps_hat - eps)
        with timer("backward"):
            if config.loss_space == "pixel":
                loss = 0.5 * ((rgb - pixel_target(guidance, rgb, x, grad)) ** 2).sum() / len(cameras)
            else:
                loss = 0.5 * ((x - (x - grad).detach()) ** 2).sum() / len(cameras)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimiser"):
            stepped = finite(step, optimizer)    # a NaN/Inf gradient skips the step: Adam untouched
            if stepped:
                optimizer.step()
            optimizer.param_groups[0]["lr"] *= means_decay   # group 0 is "means"
        with timer("densify"):
            if stepped:
                densify.observe(step, out)             # view-space gradients of this step
            scene = densify.step(step, _current_scene(optimizer), optimizer)

        if callback is not None:
            info = StepInfo(step + 1, config.steps, t, loss.detach() / grad[0].numel(), len(scene), scene,
                            skipped_steps=finite.skipped)
            if config.preview_every and ((step + 1) % config.preview_every == 0 or step + 1 == config.steps):
                info.preview = preview(scene, config.preview_res)
            if callback(info):
                break
    return scene.detach()


def _optimizer(scene: GaussianScene, config: DistillConfig):
    """(Adam over the scene's parameters with the config's learning rates, the
    per-step decay factor of the means' rate)."""
    optimizer = make_optimizer(scene, {"means": config.lr_means, "log_scales": config.lr_log_scales,
                                       "quats": config.lr_quats, "opacity_logits": config.lr_opacity,
                                       "sh": config.lr_sh}, betas=config.adam_betas)
    return optimizer, (config.lr_means_final / config.lr_means) ** (1 / max(config.steps - 1, 1))


def preview(scene: GaussianScene, res: int) -> Tensor:
    """[res,res,3] render of ``scene`` from the preview view (``cameras.preview_camera``), white background."""
    with torch.no_grad():
        return render(scene.detach(), preview_camera(res)).rgb.cpu()


_threads_lock = threading.Lock()
_threads_state = {"users": 0, "before": None}


@contextmanager
def cpu_threads(n: int | None):
    """Run with ``n`` torch intra-op threads (a process-wide setting), restoring
    the setting when the last overlapping user leaves; None changes nothing."""
    if not n:
        yield
        return
    with _threads_lock:
        if _threads_state["users"] == 0:
            _threads_state["before"] = torch.get_num_threads()
        _threads_state["users"] += 1
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_state["users"] -= 1
            if _threads_state["users"] == 0:
                torch.set_num_threads(_threads_state["before"])


def guidance_device(guidance) -> torch.device:
    """Where ``guidance`` computes (its ``device`` attribute; CPU if it has none)."""
    device = getattr(guidance, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def run_threads(guidance, config: DistillConfig):
    """The thread policy of a run of ``config`` with ``guidance`` (its loop and its
    exports alike): ``cpu_threads(config.cpu_threads)`` on a CPU, untouched on a GPU."""
    return cpu_threads(config.cpu_threads if guidance_device(guidance).type == "cpu" else None)


def _background(kind: str, generator: torch.Generator) -> tuple[float, float, float]:
    if kind == "random":
        return tuple(torch.rand(3, generator=generator).tolist())
    return (1.0, 1.0, 1.0) if kind == "white" else (0.0, 0.0, 0.0)


def _surfaces(scene, cameras, out, latent_factor: int, supersample: int, background) -> list[Surface]:
    """Supersampled depth/alpha for the noise, one surface per view: the training
    render ``out`` (all views) itself when it is exactly ``supersample``× the noise
    resolution (SD), else one extra batched render."""
    if latent_factor != supersample:
        cameras = [c.scaled(supersample / latent_factor) for c in cameras]
        with torch.no_grad():
            out = render(scene.detach(), cameras, background)
    return [Surface(d, a, c) for d, a, c in zip(out.depth.detach(), out.alpha.detach(), cameras)]


def _current_scene(optimizer) -> GaussianScene:
    return GaussianScene(**{g["name"]: g["params"][0] for g in optimizer.param_groups})
