"""Guidance backends: the denoisers that distillation queries."""
from cfd.guidance.base import Guidance, GuidanceUnavailable
from cfd.guidance.exact_prior import ExactPrior
from cfd.guidance.stable_diffusion import (DEFAULT_GUIDANCE_SCALE, DEFAULT_SD_MODEL, StableDiffusionGuidance,
                                           check_sd_weights)

__all__ = ["Guidance", "GuidanceUnavailable", "ExactPrior", "StableDiffusionGuidance", "check_sd_weights",
           "DEFAULT_SD_MODEL", "DEFAULT_GUIDANCE_SCALE"]
