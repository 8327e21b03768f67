"""The guidance protocol: a pretrained (or exact) denoiser that distillation queries.

A guidance works in its own diffusion space x of shape [B, C, h, w]: renders
[B, 3, H, W] in [0, 1] are mapped there by ``encode`` (differentiably), with
H = h · latent_factor and W = w · latent_factor. ``predict_noise`` is the
ε-prediction (classifier-free guided) of the model at integer timestep t under
the schedule ``alphas_cumprod``.

Conditioning travels with each call: ``condition(prompt, negative_prompt,
guidance_scale)`` checks the text once per run and returns a ``Condition`` (the
backend's own frozen object: cached embeddings, the selected objects …) that
``predict_noise`` takes. The guidance itself stays read-only, so one loaded model
serves concurrent runs with different prompts and CFG scales.

CFG uses diffusers' convention everywhere: ε̂ = ε_u + s · (ε_c − ε_u), s = 1 being
the plain conditional model.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from cfd.cameras import Camera
from cfd.errors import GuidanceUnavailable  # noqa: F401  (`cfd.guidance.base.GuidanceUnavailable` stays importable)


def clean_text(text: str | None) -> str:
    """A prompt as the backends read it: runs of white space folded to one space, '' for None."""
    return " ".join(str(text or "").split())


def checked_guidance_scale(guidance_scale: float | None, default: float) -> float:
    """``guidance_scale`` (``default`` for None) as a float; ValueError below 1."""
    scale = default if guidance_scale is None else float(guidance_scale)
    if not scale >= 1:
        raise ValueError(f"guidance_scale must be ≥ 1 (1 = no guidance), got {guidance_scale}")
    return scale


@runtime_checkable
class Condition(Protocol):
    """What one run asks of a guidance, as the guidance prepared it."""

    prompt: str
    negative_prompt: str
    guidance_scale: float   # s in ε_u + s(ε_c − ε_u)


@runtime_checkable
class Guidance(Protocol):
    name: str            # human-readable, for the UI
    channels: int        # C of the diffusion space
    alphas_cumprod: Tensor  # [T] CPU float64, ᾱ_t of the model's training schedule
    latent_factor: int   # render pixels per diffusion pixel (8 for SD, 1 in pixel space)

    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] → x [B, C, H/f, W/f] float32; differentiable."""
        ...

    def condition(self, prompt: str, negative_prompt: str | None = None,
                  guidance_scale: float | None = None) -> Condition:
        """The run's conditioning; None picks the backend's default. Raises
        ValueError naming the problem (e.g. a prompt the backend cannot follow)."""
        ...

    def predict_noise(self, x_t: Tensor, t: int, cameras: list[Camera], cond: Condition) -> Tensor:
        """x_t [B, C, h, w], timestep t, one camera per batch item, the run's
        condition → CFG-guided ε̂ [B, C, h, w] float32 (no gradient)."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] → rgb [B, 3, H, W] in [0, 1] (for previews; no gradient)."""
        ...
