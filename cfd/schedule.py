"""Diffusion constants and the timestep schedules of distillation.

Discrete variance-preserving diffusion with T training steps (Stable Diffusion:
T = 1000, scaled-linear betas 0.00085 … 0.012):

    x_t = α_t x_0 + σ_t ε,   α_t = √ᾱ_t,   σ_t = √(1 − ᾱ_t),   λ_t = σ_t / α_t.

Timesteps are integers in [0, T − 1].
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

SD_NUM_TRAIN_TIMESTEPS = 1000
SD_BETA_START = 0.00085
SD_BETA_END = 0.012

# diffusers' defaults for a scheduler config that omits a key.
_CONFIG_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                    "beta_schedule": "linear"}


def _alphas_cumprod(betas: Tensor) -> Tensor:
    return torch.cumprod(1.0 - betas.double(), dim=0)


def scaled_linear_alphas_cumprod(num_train_timesteps: int = SD_NUM_TRAIN_TIMESTEPS,
                                 beta_start: float = SD_BETA_START,
                                 beta_end: float = SD_BETA_END) -> Tensor:
    """ᾱ_t [T] float64 for diffusers' "scaled_linear" betas:
    β = linspace(√β_start, √β_end, T)²."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                           dtype=torch.float64) ** 2
    return _alphas_cumprod(betas)


def linear_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """ᾱ_t [T] float64 for diffusers' "linear" betas: β = linspace(β_start, β_end, T)."""
    return _alphas_cumprod(torch.linspace(beta_start, beta_end, num_train_timesteps,
                                          dtype=torch.float64))


class NoiseSchedule:
    """α_t, σ_t, λ_t of a discrete schedule given by ᾱ_t.

    ``alphas_cumprod``: [T] tensor (kept as CPU float64). The accessors take an
    int t or a LongTensor of timesteps (any shape, any device) and return
    float32 tensors of the same shape on t's device (CPU for an int).
    """

    def __init__(self, alphas_cumprod: Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.ndim != 1 or len(ac) == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(ac.shape)}")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        self.alphas_cumprod = ac

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _gather(self, t: int | Tensor) -> Tensor:
        """ᾱ_t as float64, on t's device."""
        index = torch.as_tensor(t, dtype=torch.long)
        if bool((index < 0).any()) or bool((index >= self.num_train_timesteps).any()):
            raise ValueError(f"timestep out of range [0, {self.num_train_timesteps - 1}]: {t}")
        return self.alphas_cumprod[index.cpu()].to(index.device)

    def alpha(self, t: int | Tensor) -> Tensor:
        """α_t = √ᾱ_t (signal scale)."""
        return self._gather(t).sqrt().float()

    def sigma(self, t: int | Tensor) -> Tensor:
        """σ_t = √(1 − ᾱ_t) (noise scale)."""
        return (1.0 - self._gather(t)).sqrt().float()

    def lam(self, t: int | Tensor) -> Tensor:
        """λ_t = σ_t / α_t (noise-to-signal ratio; CFD's default weight w(t))."""
        ac = self._gather(t)
        return ((1.0 - ac) / ac).sqrt().float()

    @classmethod
    def from_scheduler_config(cls, config: Mapping) -> "NoiseSchedule":
        """The schedule of a diffusers scheduler config (``scheduler_config.json``
        as a dict). Supports ``trained_betas`` and the "scaled_linear" and
        "linear" beta schedules; anything else raises ValueError."""
        cfg = {**_CONFIG_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        if cfg.get("rescale_betas_zero_snr"):
            raise ValueError("unsupported scheduler config: rescale_betas_zero_snr=True "
                             "(zero terminal SNR makes λ_T infinite)")
        if cfg.get("trained_betas") is not None:
            return cls(_alphas_cumprod(torch.tensor(cfg["trained_betas"], dtype=torch.float64)))
        T, b0, b1 = int(cfg["num_train_timesteps"]), float(cfg["beta_start"]), float(cfg["beta_end"])
        schedule = cfg["beta_schedule"]
        if schedule == "scaled_linear":
            return cls(scaled_linear_alphas_cumprod(T, b0, b1))
        if schedule == "linear":
            return cls(linear_alphas_cumprod(T, b0, b1))
        raise ValueError(f"unsupported beta_schedule {schedule!r}: expected 'scaled_linear' or 'linear'")

    @classmethod
    def stable_diffusion(cls) -> "NoiseSchedule":
        """Stable Diffusion's schedule: 1000 steps, scaled-linear betas 0.00085 … 0.012."""
        return cls(scaled_linear_alphas_cumprod())


def annealed_timestep(progress: float,
                      knots: Sequence[tuple[float, float]] = ((0.0, 980), (1.0, 20))) -> int:
    """Deterministic, non-increasing timestep t(τ/N) for CFD.

    ``progress`` = τ/N in [0, 1]. ``knots`` are (progress, t) pairs with strictly
    increasing progress and non-increasing t ≥ 0; t is piecewise linear between
    them, constant before the first and after the last knot, rounded to an int.
    """
    points = [(float(p), float(t)) for p, t in knots]
    if not points:
        raise ValueError("knots must not be empty")
    if any(not 0.0 <= p <= 1.0 for p, _ in points):
        raise ValueError(f"knot progress values must lie in [0, 1]: {knots}")
    if any(p1 <= p0 for (p0, _), (p1, _) in zip(points, points[1:])):
        raise ValueError(f"knot progress values must be strictly increasing: {knots}")
    if any(t1 > t0 for (_, t0), (_, t1) in zip(points, points[1:])):
        raise ValueError(f"knot timesteps must be non-increasing: {knots}")
    if points[-1][1] < 0:
        raise ValueError(f"knot timesteps must be >= 0: {knots}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress}")

    if progress <= points[0][0]:
        return round(points[0][1])
    for (p0, t0), (p1, t1) in zip(points, points[1:]):
        if progress <= p1:
            return round(t0 + (t1 - t0) * (progress - p0) / (p1 - p0))
    return round(points[-1][1])


def uniform_timestep(generator: torch.Generator, t_min: int = 20, t_max: int = 980) -> int:
    """t ~ U{t_min, …, t_max} (both inclusive), as SDS samples it, from a CPU generator."""
    if not 0 <= t_min <= t_max:
        raise ValueError(f"need 0 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    return int(torch.randint(t_min, t_max + 1, (1,), generator=generator).item())


# ------------------------------------------------------ cfd-sde's refresh rate

class GammaSchedule:
    """cfd-sde's noise refresh rate γ_k for the steps k = 1 … N of an N-step run:
    step k refreshes the field by n_k = √(1−γ_k)·n_{k−1} + √γ_k·ξ_k.

    ``gamma``: a constant γ in (0, 1), or knots ((progress, γ), …) with progress in
    [0, 1] strictly increasing and every γ in (0, 1); γ is piecewise linear in the
    progress k/N between them and constant outside (step k uses progress k/N).
    ``reference_steps``: the knots' γ are per step of a run that long (the authors'
    25 000); each step of this run then refreshes as much as reference_steps/N
    steps of that run, −log(1−γ_k) = −log(1−γ(k/N))·reference_steps/N, so the
    noise's correlation at a given *fraction* of the run is the reference run's
    whatever N. None: the knots' γ are per step of this run. A constant γ is
    always per step of this run (``reference_steps`` is ignored).

    The field's correlation between steps j < k is Π_{i=j+1..k} √(1−γ_i) =
    exp(−½ (s_k − s_j)) with the "clock" s_k = Σ_{i≤k} −log(1−γ_i): in s the
    refresh is the constant-rate (Ornstein–Uhlenbeck) process, which is how
    ``cfd.noise`` evaluates the field at any step exactly. Beyond step N the last
    rate continues.
    """

    def __init__(self, gamma, steps: int, reference_steps: int | None = None):
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        self.steps = int(steps)
        if isinstance(gamma, (int, float)):
            check_gamma(gamma)
            self.constant, self._rate = float(gamma), -math.log1p(-float(gamma))
            self._clock = None
            return
        knots = check_gamma(gamma)
        if reference_steps is not None and reference_steps < 1:
            raise ValueError(f"reference_steps must be ≥ 1, got {reference_steps}")
        self.constant = None
        scale = 1.0 if reference_steps is None else reference_steps / self.steps
        progress = torch.arange(1, self.steps + 1, dtype=torch.float64) / self.steps
        ps = torch.tensor([p for p, _ in knots], dtype=torch.float64)
        gs = torch.tensor([g for _, g in knots], dtype=torch.float64)
        gamma_ref = _interp(progress, ps, gs)
        rates = -torch.log1p(-gamma_ref) * scale                        # −log(1−γ_k), k = 1 … N
        self._rate = float(rates[-1])
        self._clock = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(rates, 0)]).tolist()

    def clock(self, k: int) -> float:
        """s_k = Σ_{i=1..k} −log(1−γ_i) (s_0 = 0)."""
        if self._clock is None:
            return k * self._rate
        if k <= self.steps:
            return self._clock[k]
        return self._clock[self.steps] + (k - self.steps) * self._rate

    def log_decay(self, j: int, k: int) -> float:
        """s_k − s_j = −log Π_{i=j+1..k} (1−γ_i), for j ≤ k."""
        if self._clock is None:
            return (k - j) * self._rate      # exactly the constant-γ arithmetic of before
        return self.clock(k) - self.clock(j)

    def gamma(self, k: int) -> float:
        """γ_k, the refresh of step k (1-based)."""
        if self._clock is None:
            return self.constant
        return -math.expm1(-self.log_decay(k - 1, k))

    def correlation(self, j: int, k: int) -> float:
        """Correlation of the field's values at steps j and k."""
        return math.exp(-0.5 * self.log_decay(min(j, k), max(j, k)))


def check_gamma(gamma):
    """Validate a γ (constant in (0, 1)) or γ knots; returns the knots as floats
    (or the constant). ValueError names the problem."""
    if isinstance(gamma, (int, float)):
        if not 0 < gamma < 1:
            raise ValueError(f"gamma={gamma} must be in (0, 1)")
        return float(gamma)
    try:
        knots = [(float(p), float(g)) for p, g in gamma]
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number in (0, 1) or knots ((progress, γ), …), got {gamma!r}") from None
    if not knots:
        raise ValueError("gamma knots must not be empty")
    if any(not 0.0 <= p <= 1.0 for p, _ in knots) or any(p1 <= p0 for (p0, _), (p1, _) in zip(knots, knots[1:])):
        raise ValueError(f"gamma knot progress values must lie in [0, 1], strictly increasing: {gamma}")
    if any(not 0 < g < 1 for _, g in knots):
        raise ValueError(f"gamma knot values must lie in (0, 1): {gamma}")
    return tuple(knots)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation through (xp, fp), constant outside (np.interp)."""
    if len(xp) == 1:
        return fp.expand_as(x).clone()
    i = torch.searchsorted(xp, x, right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + (f1 - f0) * w


# --------------------------------------------- the authors' SD stage (runjie-yan/ConsistentFlowDistillation)
# configs/cfd/sd-stage1.yaml, 25 000 steps. t: threestudio's TimestepScheduler with
# linear_anneal_max = min = [0, 0.3, 0.6, 0.8] at steps [0, 2500, 12500, 25000] between
# max/min_step_percent 0.98/0.02 → t = 1000·(0.98 − 0.96·a): 980 → 692 (10 %) → 404 (50 %) → 212.
AUTHORS_SD_T_KNOTS = ((0.0, 980), (0.1, 692), (0.5, 404), (1.0, 212))
# noise_generator.weight_decay = [5000, 0.01, 0.0001, 10000]: γ = 0.01 until step 5000 (20 %),
# linear to 1e-4 at step 10 000 (40 %), then constant; per step of their 25 000.
AUTHORS_SD_GAMMA_KNOTS = ((0.0, 0.01), (0.2, 0.01), (0.4, 1e-4), (1.0, 1e-4))
AUTHORS_SD_STEPS = 25_000
