"""Stable Diffusion guidance over diffusers components (latent space, CFG).

The model is a Hugging Face hub id or a local folder in diffusers layout
(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/),
chosen by: explicit argument > env ``CFD_MODEL`` > ``DEFAULT_SD_MODEL``.
``HF_HUB_OFFLINE=1`` restricts loading to the local cache. Missing weights
raise ``GuidanceUnavailable`` with a message that names the model, where we
looked and how to get them.

Classifier-free guidance uses diffusers' convention
    ε̂ = ε_u + s · (ε_c − ε_u),
so s = 1 is the plain conditional model. The CFD/ProlificDreamer authors write
"ε_c + s′(ε_c − ε_u)", which is the same with s = s′ + 1 (their CFG 50 is our 51).

View-dependent prompts (``view_dependent=True``) append a suffix chosen from the
camera's azimuth (0 = front, on +z) and elevation as the authors' SD stage does
(threestudio's prompt processor with front/back thresholds 30°, overhead 60°), in
this order: elevation > 60° → ", overhead view"; |azimuth| < 30° → ", front view";
|azimuth| > 150° → ", back view"; otherwise ", side view".

diffusers and transformers are imported lazily (they take seconds to import),
so ``check_sd_weights`` and this module stay cheap.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from torch import Tensor

from cfd.cameras import Camera, camera_features
from cfd.guidance.base import GuidanceUnavailable, checked_guidance_scale, clean_text
from cfd.schedule import NoiseSchedule

DEFAULT_SD_MODEL = "stabilityai/stable-diffusion-2-1-base"
# The defaults below are the authors' SD stage (runjie-yan/ConsistentFlowDistillation,
# configs/cfd/sd-stage1.yaml); one set shared by the guidance, the CLI and the app.
# CFG scale in diffusers' convention ε_u + s(ε_c − ε_u): their guidance_scale 70 is in
# "ε_c + s(ε_c − ε_u)" (stable_diffusion_unified_guidance.py), i.e. ours minus one.
DEFAULT_GUIDANCE_SCALE = 71.0
# Their negative prompt, against blur, oversmoothing and low detail.
DEFAULT_NEGATIVE_PROMPT = ("lack details, ugly, oversmoothed, bad structure, out of focus, blurry, cartoon, "
                           "oversaturated, foggy, hazy, bad anatomy, malformed, pixelated obscure, unnatural "
                           "colors, dull, unclear, lowres, low quality, deformed, dehydrated")
# View suffixes (degrees): front if |azimuth| < FRONT, back if |azimuth| > 180 − BACK,
# overhead (first) if elevation > OVERHEAD (their front/back_threshold 30, overhead 60).
VIEW_FRONT_THRESHOLD_DEG = 30.0
VIEW_BACK_THRESHOLD_DEG = 30.0
VIEW_OVERHEAD_THRESHOLD_DEG = 60.0
MODEL_ENV = "CFD_MODEL"
TEXT_CACHE_SIZE = 256          # text embeddings kept per model (least recently used dropped first)
PREDICTION_TYPES = ("epsilon", "v_prediction")
# What a camera-conditioned UNet (tiny-sd) is told of the camera, per CFG branch:
# "guided": the conditional branch the camera, the unconditional branch none (the
# zeros it was trained with), so CFG scales the camera as it scales the text (as
# Zero-1-to-3 drops its pose with its image), or, given a camera scale s_c, with a
# third branch (the text without the camera) and a scale of its own:
#     ε̂ = ε(∅) + s (ε(text) − ε(∅)) + s_c (ε(text, camera) − ε(text))
# "both": the camera in both branches; "off": in neither. Compared on tiny-sd:
# docs/tiny-sd.md, "The camera on the ε model before".
CAMERA_INPUTS = ("guided", "both", "off")

# Per component subfolder: the config file it must hold, and whether it holds weights.
_COMPONENT_FILES = (
    ("unet", "config.json", True),
    ("vae", "config.json", True),
    ("text_encoder", "config.json", True),
    ("tokenizer", None, False),
    ("scheduler", "scheduler_config.json", False),
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_camera_input(camera_input: str, camera_scale: float | None) -> tuple[str, float | None]:
    """(camera_input, camera_scale) if ``camera_input`` is one of CAMERA_INPUTS and
    ``camera_scale`` None or a finite number ≥ 0, else ValueError naming the fix."""
    if camera_input not in CAMERA_INPUTS:
        raise ValueError(f"camera_input must be one of {', '.join(CAMERA_INPUTS)}, got {camera_input!r}")
    if camera_scale is not None and not (math.isfinite(camera_scale) and camera_scale >= 0):
        raise ValueError(f"camera_scale must be a finite number ≥ 0 or None (the CFG scale), got {camera_scale!r}")
    return camera_input, camera_scale


# ----------------------------------------------------------------- locating weights

def resolve_model(model: str | os.PathLike | None = None) -> str:
    """The model to load: ``model`` if given, else env CFD_MODEL, else the default."""
    if model is not None and str(model):
        return str(model)
    return os.environ.get(MODEL_ENV) or DEFAULT_SD_MODEL


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder, honouring HF_HUB_CACHE / HF_HOME as set now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return hf_constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (1/true/yes/on) now or was at import."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(hf_constants.HF_HUB_OFFLINE)
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _is_local(model: str) -> bool:
    """A local path rather than a hub id ("owner/name")."""
    return (os.path.isdir(model) or os.path.isabs(model) or model.startswith((".", "~"))
            or model.count("/") > 1)


def _missing_components(folder: Path) -> list[str]:
    """Component files a diffusers SD folder lacks (unet first); empty if complete."""
    missing = []
    for sub, config, has_weights in _COMPONENT_FILES:
        directory = folder / sub
        names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
        if not names:
            missing.append(f"{sub}/")
            continue
        if config is not None and config not in names:
            missing.append(f"{sub}/{config}")
        if has_weights and not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
            missing.append(f"{sub}/ weights (*.safetensors or *.bin)")
    return missing


def _unavailable_message(model: str, problem: str) -> str:
    """The one human message for missing or unusable weights: what, where, and the fix."""
    layout = "a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
    offline = " HF_HUB_OFFLINE is set, so nothing is downloaded." if hub_offline() else ""
    if _is_local(model):
        where = f"the local folder {os.path.abspath(os.path.expanduser(model))}"
        fix = (f"point CFD_MODEL at {layout}, or download one, e.g. `.venv/bin/hf download {DEFAULT_SD_MODEL} "
               f"--local-dir DIR` then CFD_MODEL=DIR")
    else:
        where = f"the Hugging Face cache {hub_cache_dir()}"
        fix = (f"download them with `.venv/bin/hf download {model}` (the huggingface_hub CLI in this project's "
               f"virtual environment; older versions call it `huggingface-cli download`), or set "
               f"CFD_MODEL=/path/to/{layout}")
    return (f"Stable Diffusion weights for {model!r} are not available: {problem} "
            f"(looked in {where}).{offline}\nFix: {fix}.")


def check_sd_weights(model: str | os.PathLike | None = None) -> str | None:
    """Cheap check, without loading or downloading anything, that SD weights are
    on this machine: a complete local folder, or a complete hub-cache snapshot.
    Returns None if usable, else the human message of ``GuidanceUnavailable``."""
    model = resolve_model(model)
    if _is_local(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            return _unavailable_message(model, "the folder does not exist")
    else:
        try:
            folder = Path(snapshot_download(model, cache_dir=hub_cache_dir(), local_files_only=True))
        except (OSError, ValueError):
            return _unavailable_message(model, "it is not in the local cache")
    missing = _missing_components(folder)
    if missing:
        return _unavailable_message(model, "missing " + ", ".join(missing))
    return None


# ----------------------------------------------------------------- prompts

def view_suffix(azimuth_deg: float, elevation_deg: float) -> str:
    """Prompt suffix for a view (degrees; azimuth 0 = front; any azimuth, wrapped
    to [-180, 180))."""
    azimuth = (azimuth_deg + 180.0) % 360.0 - 180.0
    if elevation_deg > VIEW_OVERHEAD_THRESHOLD_DEG:
        return ", overhead view"
    if abs(azimuth) < VIEW_FRONT_THRESHOLD_DEG:
        return ", front view"
    if abs(azimuth) > 180.0 - VIEW_BACK_THRESHOLD_DEG:
        return ", back view"
    return ", side view"


def byte_level_clip_tokenizer(model_max_length: int = 77):
    """A CLIPTokenizer built offline: the 256 byte-level characters, the same with
    "</w>", then <|startoftext|> (512) and <|endoftext|> (513); no merges. It
    tokenises any text (one token per byte), not like OpenAI's vocabulary."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


# ----------------------------------------------------------------- guidance

def _device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


@dataclass(frozen=True)
class SDCondition:
    """A run's text conditioning for Stable Diffusion (``StableDiffusionGuidance.condition``)."""

    prompt: str
    negative_prompt: str
    guidance_scale: float


class StableDiffusionGuidance:
    """Latent-space SD guidance with classifier-free guidance and cached prompt embeddings.

    Diffusion space: SD latents [B, C=unet in_channels, H/f, W/f], f = ``latent_factor``
    (8 for SD), scaled by the VAE's ``scaling_factor``. All weights are frozen.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: Mapping, *,
                 view_dependent: bool = True, camera_input: str = "guided", camera_scale: float | None = None,
                 device=None, dtype=None, name: str = "Stable Diffusion"):
        self.device, self.dtype = _device_dtype(device, dtype)
        prediction_type = scheduler_config.get("prediction_type") or "epsilon"
        if prediction_type not in PREDICTION_TYPES:
            raise GuidanceUnavailable(f"{name}: unsupported prediction_type {prediction_type!r}; "
                                      f"supported: {', '.join(PREDICTION_TYPES)}")
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False).eval().to(self.device)
            if module.dtype != self.dtype:  # diffusers warns on any .to(dtype=...), so only when needed
                module.to(self.dtype)
        if self.device.type == "cuda":
            unet.to(memory_format=torch.channels_last)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.prediction_type = prediction_type
        self.scheduler_config = dict(scheduler_config)
        self.schedule = NoiseSchedule.from_scheduler_config(scheduler_config)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.channels = int(unet.config.in_channels)
        self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.name = name
        self.view_dependent = view_dependent
        # a camera-conditioned UNet (tiny-sd) takes cameras.camera_features as its class
        # labels, as CAMERA_INPUTS says; zeros are the "no camera" it was trained with
        self.camera_conditioned = unet.config.get("class_embed_type") == "projection"
        self.camera_input, self.camera_scale = check_camera_input(camera_input, camera_scale)
        # the objects a model was trained on (an ExactPrior; tiny-sd's are the bundled
        # ones), to measure results against; None for real SD
        self.references = None
        self._embeddings: OrderedDict[str, Tensor] = OrderedDict()   # least recently used first
        self._embeddings_lock = threading.Lock()

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, scheduler_config: Mapping,
                        **kwargs) -> "StableDiffusionGuidance":
        """Guidance over already built diffusers/transformers components:
        UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer and the
        scheduler config dict. ``kwargs``: view_dependent, device, dtype, name
        camera_input, camera_scale (see CAMERA_INPUTS)."""
        return cls(unet, vae, text_encoder, tokenizer, scheduler_config, **kwargs)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, view_dependent: bool = True,
                        camera_input: str = "guided", camera_scale: float | None = None, device=None, dtype=None,
                        name: str | None = None) -> "StableDiffusionGuidance":
        """Load SD from a hub id or local diffusers folder (see ``resolve_model``);
        ``name``: how messages call it (default "Stable Diffusion (<model>)").

        Local folders and HF_HUB_OFFLINE=1 never touch the network, and are checked
        with ``check_sd_weights`` before anything is loaded (fails in milliseconds).
        Raises GuidanceUnavailable when the weights are missing or fail to load.
        """
        model = resolve_model(model)
        device, dtype = _device_dtype(device, dtype)
        local_only = _is_local(model) or hub_offline()
        if local_only and (problem := check_sd_weights(model)):
            raise GuidanceUnavailable(problem)

        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = {"local_files_only": local_only}
        if not _is_local(model):
            kw["cache_dir"] = hub_cache_dir()
        try:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **kw)
            vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **kw)
            text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype, **kw)
            tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
            scheduler_config = dict(DDIMScheduler.load_config(model, subfolder="scheduler", **kw))
        except (OSError, ValueError) as err:
            raise GuidanceUnavailable(_unavailable_message(model, f"loading failed ({err})")) from err
        return cls.from_components(unet, vae, text_encoder, tokenizer, scheduler_config,
                                   view_dependent=view_dependent, camera_input=camera_input,
                                   camera_scale=camera_scale, device=device,
                                   dtype=dtype, name=name or f"Stable Diffusion ({model})")

    # -- prompts

    def condition(self, prompt: str, negative_prompt: str | None = None,
                  guidance_scale: float | None = None) -> "SDCondition":
        """A run's conditioning (defaults: ``DEFAULT_NEGATIVE_PROMPT``,
        ``DEFAULT_GUIDANCE_SCALE``). ValueError for an empty prompt or a scale < 1."""
        prompt = clean_text(prompt)
        if not prompt:
            raise ValueError("the prompt is empty: Stable Diffusion needs a text prompt, "
                             "e.g. 'a DSLR photo of a corgi wearing a beret'")
        scale = checked_guidance_scale(guidance_scale, DEFAULT_GUIDANCE_SCALE)
        negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else clean_text(negative_prompt)
        return SDCondition(prompt, negative, scale)

    def prompt_for(self, cond: "SDCondition", camera: Camera) -> str:
        """The conditional prompt for one view (with its view suffix if view-dependent)."""
        if not self.view_dependent:
            return cond.prompt
        return cond.prompt + view_suffix(camera.azimuth_deg, camera.elevation_deg)

    def text_embedding(self, text: str) -> Tensor:
        """[1, L, D] text-encoder hidden states of ``text``, computed once per text
        (thread-safe cache shared by every run on this model)."""
        with self._embeddings_lock:
            if text in self._embeddings:
                self._embeddings.move_to_end(text)
                return self._embeddings[text]
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():   # outside the lock: other runs' cached texts do not wait for this one
            embedding = self.text_encoder(ids.to(self.device)).last_hidden_state
        with self._embeddings_lock:
            self._embeddings[text] = embedding
            while len(self._embeddings) > TEXT_CACHE_SIZE:
                self._embeddings.popitem(last=False)
        return embedding

    @property
    def camera_scaled(self) -> bool:
        """Whether the camera has a CFG scale of its own (a third UNet branch)."""
        return self.camera_conditioned and self.camera_input == "guided" and self.camera_scale is not None

    def camera_labels(self, cameras: list[Camera]) -> Tensor | None:
        """The UNet's class labels [2B, 4] for the batch [unconditional; conditional]
        of ``cameras`` (B of them): ``camera_features`` or zeros, as ``camera_input``
        says (CAMERA_INPUTS); None for a UNet without camera input (real SD)."""
        if not self.camera_conditioned:
            return None
        features = camera_features(cameras)
        none = torch.zeros_like(features)
        branches = {"guided": (none, features), "both": (features, features), "off": (none, none)}
        return torch.cat(branches[self.camera_input]).to(self.device, self.dtype)

    # -- the Guidance protocol

    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] → latents [B, C, H/f, W/f] float32 (VAE posterior
        mean × scaling_factor); differentiable with respect to rgb."""
        x = rgb.to(self.device, self.dtype) * 2 - 1
        latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return latents.float()

    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, C, h, w] → rgb [B, 3, h·f, w·f] float32 in [0, 1] (no gradient)."""
        with torch.no_grad():
            x = latents.to(self.device, self.dtype) / self.vae.config.scaling_factor
            image = self.vae.decode(x).sample
        return ((image.float() + 1) / 2).clamp(0, 1)

    def predict_noise(self, x_t: Tensor, t: int, cameras: list[Camera], cond: "SDCondition") -> Tensor:
        """CFG noise prediction ε̂ = ε_u + s(ε_c − ε_u) for latents x_t [B, C, h, w] at
        integer timestep t, one camera per batch item (for the view suffix and a
        camera-conditioned UNet, CAMERA_INPUTS), with ``cond``'s prompts and scale s.
        One UNet call on the batch [uncond; cond] of size 2B (3B with a camera scale).
        Returns float32 [B, C, h, w] on x_t's device, without gradient. v-prediction models are converted with
        ε = α_t v + σ_t x_t."""
        batch = x_t.shape[0]
        if len(cameras) != batch:
            raise ValueError(f"need one camera per batch item: {len(cameras)} cameras, batch {batch}")
        t = int(t)
        alpha, sigma = self.schedule.alpha(t).item(), self.schedule.sigma(t).item()  # validates t
        with torch.no_grad():
            uncond = self.text_embedding(cond.negative_prompt).expand(batch, -1, -1)
            text = torch.cat([self.text_embedding(self.prompt_for(cond, c)) for c in cameras])
            texts, labels = [uncond, text], self.camera_labels(cameras)
            if self.camera_scaled:     # a third branch: the text without the camera
                texts, labels = texts + [text], torch.cat([labels, labels[:batch]])
            x = x_t.detach().to(self.device, self.dtype)
            timesteps = torch.full((len(texts) * batch,), t, device=self.device, dtype=torch.long)
            out = self.unet(torch.cat([x] * len(texts)), timesteps, encoder_hidden_states=torch.cat(texts),
                            class_labels=labels).sample.float().chunk(len(texts))
            out_uncond, out_cond = out[:2]
            if self.camera_scaled:   # the text scaled by s without the camera, the camera by s_c
                out_text = out[2]
                out = (out_uncond + cond.guidance_scale * (out_text - out_uncond)
                       + self.camera_scale * (out_cond - out_text))
            else:
                out = out_uncond + cond.guidance_scale * (out_cond - out_uncond)
            if self.prediction_type == "v_prediction":
                out = alpha * out + sigma * x_t.detach().to(self.device).float()
        return out.to(x_t.device)

    @torch.no_grad()
    def sample(self, prompt: str, cameras: list[Camera], steps: int = 50, guidance_scale: float = 3.0,
               generator: torch.Generator | None = None) -> Tensor:
        """The model's own images of ``prompt``: DDIM samples [B, 3, H, W] in [0, 1],
        one per camera (its view suffix and camera input, as ``predict_noise``),
        ``steps`` DDIM steps at CFG ``guidance_scale``, empty negative prompt; the
        initial noise drawn on the CPU from ``generator``."""
        from diffusers import DDIMScheduler

        config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        scheduler = DDIMScheduler(**{**config, "prediction_type": "epsilon"})   # predict_noise gives ε
        scheduler.set_timesteps(steps)
        cond = self.condition(prompt, negative_prompt="", guidance_scale=guidance_scale)
        size = (cameras[0].height // self.latent_factor, cameras[0].width // self.latent_factor)
        x = torch.randn(len(cameras), self.channels, *size, generator=generator).to(self.device)
        for t in scheduler.timesteps:
            x = scheduler.step(self.predict_noise(x, int(t), cameras, cond), t, x).prev_sample
        return self.decode(x)


# ----------------------------------------------------------------- SD-2.1-base with random weights

def sd21_configs() -> dict[str, dict]:
    """Plain-data configs of SD-2.1-base's components (as in its hub folder):
    keys "unet", "vae" (diffusers kwargs), "text_encoder" (CLIPTextConfig kwargs,
    OpenCLIP-H text tower), "scheduler" (scheduler_config.json)."""
    return {
        "unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"),
            "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
            "use_linear_projection": True, "act_fn": "silu", "norm_num_groups": 32,
            "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
            "downsample_padding": 1, "mid_block_scale_factor": 1,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
            "num_attention_heads": 16, "hidden_act": "gelu", "max_position_embeddings": 77,
            "vocab_size": 49408, "projection_dim": 512, "layer_norm_eps": 1e-5,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        "scheduler": {
            "_class_name": "PNDMScheduler", "num_train_timesteps": 1000,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        },
    }


def build_random_sd21(*, device=None, dtype=None, **kwargs) -> StableDiffusionGuidance:
    """SD-2.1-base's real architecture (UNet 865M, VAE 84M, OpenCLIP-H text encoder
    340M parameters) with random weights and the offline byte-level tokenizer, for
    honest speed measurements without weights. Its outputs are meaningless.
    Modules are created directly on ``device``. ``kwargs`` go to the guidance."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device, dtype = _device_dtype(device, dtype)
    configs = sd21_configs()
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    tokenizer = byte_level_clip_tokenizer(configs["text_encoder"]["max_position_embeddings"])
    kwargs.setdefault("name", "Stable Diffusion 2.1-base architecture (random weights)")
    return StableDiffusionGuidance.from_components(unet, vae, text_encoder, tokenizer, configs["scheduler"],
                                                   device=device, dtype=dtype, **kwargs)
