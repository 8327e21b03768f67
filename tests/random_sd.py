"""A small, randomly initialised Stable Diffusion folder in diffusers layout, built offline

Same structure as SD (UNet2DConditionModel, AutoencoderKL with four blocks so the
latent factor stays 8, CLIPTextModel, CLIPTokenizer, DDIM scheduler config with
SD's scaled-linear betas) at a size that builds, saves and loads in well under a
second. Render 64×64 ↔ latents [4, 8, 8].
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from cfd.guidance.stable_diffusion import byte_level_clip_tokenizer

TINY_TEXT_DIM = 32


def random_sd_components(prediction_type: str = "epsilon", seed: int = 0) -> dict:
    """Components {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} of a tiny SD;
    the same seed gives the same weights (the global RNG is left untouched)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = byte_level_clip_tokenizer(model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=64)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length, vocab_size=len(tokenizer),
            projection_dim=TINY_TEXT_DIM, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def build_random_sd(folder: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a tiny SD into ``folder`` (created) in diffusers' StableDiffusionPipeline
    layout and return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components = random_sd_components(prediction_type, seed)
    index = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
             "safety_checker": [None, None], "feature_extractor": [None, None],
             "image_encoder": [None, None]}
    for name, component in components.items():
        component.save_pretrained(folder / name)
        library = "diffusers" if type(component).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
