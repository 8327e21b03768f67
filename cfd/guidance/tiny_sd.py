"""tiny-sd: a miniature of Stable Diffusion trained here on the bundled object
families (``scripts/train_tiny_sd.py``), shipped in ``assets/models/tiny-sd``.

Same components and layout as SD (AutoencoderKL, CLIPTextModel over the offline
byte-level tokenizer, UNet2DConditionModel, a DDIM scheduler config), loaded by
``StableDiffusionGuidance.from_pretrained`` unchanged, so the whole SD path runs
on a CPU with learned weights. Sizes: 64 px images, a factor-4 VAE (16×16×4
latents). The UNet also takes the camera (diffusers' ``class_embed_type
"projection"``: ``cameras.camera_features`` added to the timestep embedding, the
way MVDream conditions on cameras), because a view suffix in the text is too weak
a camera signal for a model this small.

It knows only the bundled families: free text beyond them will not work.
This module holds its plain-data configs, its run preset (``tiny_sd_config``)
and its training captions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from cfd.cameras import CAMERA_FEATURES, CameraRanges
from cfd.distill import DistillConfig
from cfd.scenes import SceneSet

TINY_SD_DIR = Path(__file__).resolve().parents[2] / "assets" / "models" / "tiny-sd"
TINY_SD_RES = 64               # the image size it was trained at (pixels)
# its backend's request defaults, chosen by measuring runs on it (docs/tiny-sd.md, "The
# camera on the ε model before"; the rest of the run's settings: tiny_sd_config). CFG
# and the camera's own CFG scale (stable_diffusion.CAMERA_INPUTS) were chosen as a pair:
# the one pair that kept both the family followed and the views in agreement
TINY_SD_GUIDANCE_SCALE = 15.0
TINY_SD_CAMERA_SCALE = 30.0
TINY_SD_STEPS = 200
TINY_SD_VIEWS = 4
TINY_SD_MAX_PROMPT_BYTES = 60  # its byte-level tokenizer reads 75; the longest view suffix takes 15


def tiny_sd_configs(width: float = 1.0, res: int = TINY_SD_RES,
                    prediction_type: str = "v_prediction") -> dict[str, dict]:
    """Plain-data configs of tiny-sd's components: "unet", "vae" (diffusers kwargs),
    "text_encoder" (CLIPTextConfig kwargs) and "scheduler" (SD's noise schedule,
    the UNet's ``prediction_type``), for res × res images. ``width`` multiplies
    every channel count (the training script's micro config uses it)."""
    def ch(*c: int) -> tuple[int, ...]:
        return tuple(max(8, int(v * width)) for v in c)

    return {
        "unet": {
            "sample_size": res // 4, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": ch(32, 64, 64),
            # attention at 8×8 and 4×4 latents only, two heads: on a CPU the 16×16
            # self-attention with 4-channel heads took much of a training step (docs/tiny-sd.md,
            # "Training")
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 2, "cross_attention_dim": ch(128)[0], "norm_num_groups": 8,
            "class_embed_type": "projection", "projection_class_embeddings_input_dim": CAMERA_FEATURES,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": ch(16, 32, 32),
            "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
            "norm_num_groups": 8, "sample_size": res, "scaling_factor": 1.0,
        },
        "text_encoder": {
            "hidden_size": ch(128)[0], "intermediate_size": ch(256)[0], "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 514,
            "projection_dim": ch(128)[0], "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
        },
        "scheduler": {
            "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": prediction_type,
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
        },
    }


def tiny_sd_config(**overrides) -> DistillConfig:
    """tiny-sd's DistillConfig, ``overrides`` replacing its fields; chosen by
    measuring runs on it (docs/tiny-sd.md): 64² renders (16² latents) on white as
    it was trained, views drawn continuously from its training distribution, t
    annealed 980 → 20, the exact prior's splat count, its learning rates × 0.3
    (the SD path's gradient through the VAE encoder is noisier than the exact
    prior's), no densification."""
    base = DistillConfig(res=TINY_SD_RES, steps=TINY_SD_STEPS, cameras=CameraRanges(), batch_views=TINY_SD_VIEWS,
                         preview_every=10, cpu_threads=None, lr_means=1.8e-3, lr_means_final=1.8e-4,
                         lr_log_scales=4.5e-3, lr_quats=4.5e-3, lr_opacity=2.25e-2, lr_sh=1.35e-2)
    return replace(base, **overrides)


@dataclass(frozen=True)
class VariantTexts:
    """The texts that name one bundled variant (``training_captions``)."""

    index: int                   # among the scene sets' objects
    family: tuple[str, ...]      # its family's caption, then "a <alias>" for its aliases
    own: tuple[str, ...]         # its description, "a <name>", "a <alias>" for its own aliases
    theme: str                   # its set's theme ("a toy")


def training_captions(scene_sets: list[SceneSet]) -> list[VariantTexts]:
    """The texts of every variant of ``scene_sets``, in the order of their objects
    (the order of ``ExactPrior.bundled``)."""
    out = []
    for scene_set in scene_sets:
        for family in scene_set.families:
            family_texts = (family.caption, *(f"a {a}" for a in family.aliases))
            for variant in family.variants:
                own = (variant.description, f"a {variant.name}", *(f"a {a}" for a in variant.aliases))
                out.append(VariantTexts(len(out), family_texts, own, scene_set.theme))
    return out


def sample_caption(texts: VariantTexts, rng: random.Random, empty: float = 0.1) -> str:
    """One training caption: empty with probability ``empty`` (what classifier-free
    guidance needs), else the family caption 35 %, a family alias 10 %, the
    description 25 %, the variant's name or an alias 20 %, the theme 10 %."""
    if rng.random() < empty:
        return ""
    u = rng.random()
    if u < 0.35 or (u < 0.45 and len(texts.family) == 1):
        return texts.family[0]
    if u < 0.45:
        return rng.choice(texts.family[1:])
    if u < 0.70:
        return texts.own[0]
    if u < 0.90:
        return rng.choice(texts.own[1:])
    return texts.theme
