"""Guidance backends: the denoisers that distillation queries."""
from cfd.guidance.base import Condition, Guidance, GuidanceUnavailable
from cfd.guidance.exact_prior import ExactPrior
from cfd.guidance.stable_diffusion import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT, DEFAULT_SD_MODEL,
                                           SDCondition, StableDiffusionGuidance, check_sd_weights)

__all__ = ["Condition", "Guidance", "GuidanceUnavailable", "ExactPrior", "StableDiffusionGuidance", "SDCondition",
           "check_sd_weights", "DEFAULT_SD_MODEL", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NEGATIVE_PROMPT"]
