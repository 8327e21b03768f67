"""Diffusion constants and the timestep schedules of distillation.

Discrete variance-preserving diffusion with T training steps (Stable Diffusion:
T = 1000, scaled-linear betas 0.00085 … 0.012):

    x_t = α_t x_0 + σ_t ε,   α_t = √ᾱ_t,   σ_t = √(1 − ᾱ_t),   λ_t = σ_t / α_t.

Timesteps are integers in [0, T − 1].
"""
from __future__ import annotations

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
