"""Train tiny-sd, the miniature Stable Diffusion of ``cfd.guidance.tiny_sd``, on
renders of the bundled object families, and write it as a diffusers folder.

    python scripts/train_tiny_sd.py                      # → assets/models/tiny-sd (the shipped model)
    python scripts/train_tiny_sd.py --micro --out /tmp/m # seconds: the test's end-to-end check

Steps (seeded; two threads by default, the way it was timed on a 2-core CPU, where
two threads were faster than one (the timings: docs/tiny-sd.md, "Training"); ``accelerate
launch`` runs the same on a GPU):
1. data: every variant of every family (or the first ``variants``) from ``views``
   training cameras (``CameraRanges()``, the SD backend's view distribution) at
   64 px on white; captions from
   ``tiny_sd.sample_caption`` (family caption, aliases, description, theme, 10 %
   empty), half of them with the SD path's view suffix; 15 % of the camera inputs
   zeroed (what ``camera_input=False`` feeds).
2. the VAE (factor 4): MSE + L1 + a small KL, then its latent scaling factor
   (1 / std of the posterior means, as SD's 0.18215 was chosen).
3. the text encoder and the UNet together, v-prediction (as SD-2.1-768) on SD's
   noise schedule, AdamW with warm-up and cosine decay, an EMA of both (the EMA is
   saved). v, not ε: an ε-loss weighs the clean image's error at timestep t by
   SNR(t), next to nothing at the high t where a sample's layout — which object,
   which way it faces — is decided; a v-loss weighs it by SNR(t) + 1. In a pilot v
   put more samples in their family and turned more of them the right way than ε
   (the figures: docs/tiny-sd.md, "Training").
4. evaluation: VAE reconstruction PSNR on unseen views; DDIM samples of every
   family caption, each classified by its best-matching reference (variant, view).
5. the folder: model_index.json, safetensors, the scheduler config, the
   tokenizer, ``model_card.json`` (configs, data, losses, times, evaluation, the
   SHA-256 of every file) and ``README.md`` (the same for people).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfd.gaussians import load_ply  # noqa: E402
from cfd.cameras import CameraRanges, camera_features, sample_cameras  # noqa: E402
from cfd.guidance.stable_diffusion import (StableDiffusionGuidance, byte_level_clip_tokenizer,  # noqa: E402
                                           view_suffix)
from cfd.guidance.tiny_sd import TINY_SD_DIR, sample_caption, tiny_sd_configs, training_captions  # noqa: E402
from cfd.measures import nearest_views, psnr  # noqa: E402
from cfd.render import render  # noqa: E402
from cfd.scenes import find_scene_sets  # noqa: E402

RENDER_CHUNK = 64
LOSS_NAMES = {"epsilon": "ε-MSE", "v_prediction": "v-MSE"}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    res: int = 64
    width: float = 1.0              # channel multiplier of every component
    variants: int = 0               # the first this many variants of each family (0: all)
    views: int = 300                # training views per variant
    empty_caption: float = 0.1
    view_suffix: float = 0.5        # share of captions with the view suffix
    no_camera: float = 0.15         # share of zeroed camera inputs
    vae_steps: int = 800
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 5500
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    prediction_type: str = "v_prediction"  # the UNet's target: "v_prediction" (SD-2.1-768's) or "epsilon"
    ema_decay: float = 0.999
    eval_views: int = 2             # unseen views per variant for the VAE's reconstruction PSNR
    eval_samples: int = 8           # DDIM samples per family caption
    eval_steps: int = 50
    eval_cfg: float = 3.0
    reference_views: int = 64       # per variant, for classifying the samples
    threads: int = 2

    def __post_init__(self):
        if self.prediction_type not in LOSS_NAMES:
            raise ValueError(f"prediction_type must be one of {', '.join(LOSS_NAMES)}, got {self.prediction_type!r}")


MICRO = TrainConfig(res=32, width=0.25, variants=1, threads=1, views=2, vae_steps=2, vae_batch=4, unet_steps=2,
                    unet_batch=4, warmup=1, eval_views=1, eval_samples=1, eval_steps=2, reference_views=2)


# ------------------------------------------------------------------ data

@dataclass
class Renders:
    images: torch.Tensor      # [N, 3, res, res] uint8
    variant: torch.Tensor     # [N] long
    cameras: list             # N Camera


def render_views(scenes, n_views: int, res: int, generator: torch.Generator) -> Renders:
    """``n_views`` training views of every scene, at res × res on white."""
    images, variant, cameras = [], [], []
    for k, scene in enumerate(scenes):
        cams = sample_cameras(n_views, res, res, generator, CameraRanges())
        for i in range(0, n_views, RENDER_CHUNK):
            rgb = render(scene, cams[i:i + RENDER_CHUNK]).rgb
            images.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2))
        variant += [k] * n_views
        cameras += cams
    return Renders(torch.cat(images), torch.tensor(variant), cameras)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] → float in [-1, 1]."""
    return images.float() / 127.5 - 1


# ------------------------------------------------------------------ training

def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, data: Renders, cfg: TrainConfig, accelerator, log) -> list[float]:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.vae_steps, cfg.warmup))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    vae.train()
    for step in range(cfg.vae_steps):
        index = torch.randint(len(data.images), (cfg.vae_batch,), generator=generator)
        x = to_unit(data.images[index]).to(accelerator.device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
        rec = vae.decode(z).sample
        loss = (rec - x).square().mean() + 0.5 * (rec - x).abs().mean() + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        log("vae", step, cfg.vae_steps, losses)
    return losses


@torch.no_grad()
def encode_all(vae, data: Renders, device) -> torch.Tensor:
    """[N, 4, h, w] every image's latent posterior mean (unscaled): the latent the
    guidance encodes a render to. Its posterior std (≈ 0.3 of the latents' spread
    here) is left out, or the UNet learns images blurred by it."""
    return torch.cat([vae.encode(to_unit(data.images[i:i + 256]).to(device)).latent_dist.mean.cpu()
                      for i in range(0, len(data.images), 256)])


class Captions:
    """Training captions, tokenised once per distinct text."""

    def __init__(self, texts, tokenizer, cfg: TrainConfig):
        self.texts, self.tokenizer, self.cfg = texts, tokenizer, cfg
        self._ids: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> torch.Tensor:
        if text not in self._ids:
            self._ids[text] = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                             truncation=True, return_tensors="pt").input_ids[0]
        return self._ids[text]

    def batch(self, variants: list[int], cameras: list, rng: random.Random) -> torch.Tensor:
        out = []
        for k, cam in zip(variants, cameras):
            text = sample_caption(self.texts[k], rng, self.cfg.empty_caption)
            if text and rng.random() < self.cfg.view_suffix:
                text += view_suffix(cam.azimuth_deg, cam.elevation_deg)
            out.append(self.ids(text))
        return torch.stack(out)


def train_unet(unet, text_encoder, latents, data: Renders, captions: Captions, schedule_config: dict,
               cfg: TrainConfig, accelerator, log) -> list[float]:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    noise_scheduler = DDPMScheduler.from_config(schedule_config)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.unet_steps, cfg.warmup))
    emas = [EMAModel(m.parameters(), decay=cfg.ema_decay) for m in (unet, text_encoder)]
    features = camera_features(data.cameras)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    rng = random.Random(cfg.seed + 3)
    losses = []
    unet.train()
    text_encoder.train()
    for step in range(cfg.unet_steps):
        index = torch.randint(len(latents), (cfg.unet_batch,), generator=generator)
        z = latents[index]
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        x_t = noise_scheduler.add_noise(z, noise, t)
        cams = features[index] * (torch.rand(cfg.unet_batch, 1, generator=generator) >= cfg.no_camera)
        ids = captions.batch(data.variant[index].tolist(), [data.cameras[i] for i in index.tolist()], rng)
        device = accelerator.device
        hidden = text_encoder(ids.to(device)).last_hidden_state
        pred = unet(x_t.to(device), t.to(device), encoder_hidden_states=hidden, class_labels=cams.to(device)).sample
        target = noise if cfg.prediction_type == "epsilon" else noise_scheduler.get_velocity(z, noise, t)
        loss = (pred - target.to(device)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        for ema, module in zip(emas, (unet, text_encoder)):
            ema.step(module.parameters())
        losses.append(loss.item())
        log("unet", step, cfg.unet_steps, losses)
    for ema, module in zip(emas, (unet, text_encoder)):
        ema.copy_to(module.parameters())
    return losses


# ------------------------------------------------------------------ evaluation

def evaluate(guidance, scenes, families, cfg: TrainConfig) -> dict:
    """VAE reconstruction on unseen views; DDIM samples of each family caption
    classified by their best-matching reference (variant, view)."""
    generator = torch.Generator().manual_seed(cfg.seed + 100)
    held_out = render_views(scenes, cfg.eval_views, cfg.res, generator)
    x = held_out.images.float() / 255
    rec = guidance.decode(guidance.encode(x))
    vae_psnr = float(psnr(rec, x).mean())

    refs = render_views(scenes, cfg.reference_views, cfg.res, torch.Generator().manual_seed(cfg.seed + 200))
    references = (refs.images.float() / 255).view(len(scenes), cfg.reference_views, 3, cfg.res, cfg.res)
    per_family, hits, total, psnrs = {}, 0, 0, []
    for caption, members in families:
        cams = sample_cameras(cfg.eval_samples, cfg.res, cfg.res, generator, CameraRanges())
        images = guidance.sample(caption, cams, cfg.eval_steps, cfg.eval_cfg, generator)
        variant, _, best = nearest_views(images, references)
        inside = sum(int(v) in members for v in variant.tolist())
        per_family[caption] = {"in_family": inside, "samples": len(cams), "mean_psnr": round(float(best.mean()), 2),
                               "variants": sorted({int(v) for v in variant.tolist()})}
        hits, total = hits + inside, total + len(cams)
        psnrs += best.tolist()
    return {"vae_psnr": round(vae_psnr, 2), "samples_in_family": hits, "samples": total,
            "sample_psnr": round(sum(psnrs) / len(psnrs), 2), "ddim_steps": cfg.eval_steps,
            "cfg": cfg.eval_cfg, "camera_input": guidance.camera_input, "per_family": per_family}


# ------------------------------------------------------------------ the folder

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_hashes(out: Path) -> dict[str, str]:
    """SHA-256 of every file of the model folder but its card."""
    return {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("model_card.json", "README.md")}


def write_folder(out: Path, unet, vae, text_encoder, tokenizer, configs: dict, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2) + "\n")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _version("diffusers"),
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    card["files"] = folder_hashes(out)
    card["size_bytes"] = sum((out / name).stat().st_size for name in card["files"])
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(model_card_text(card))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def model_card_text(card: dict) -> str:
    e, c, t = card["evaluation"], card["train_config"], card["times_s"]
    lines = [
        "# tiny-sd", "",
        "A miniature of Stable Diffusion (same components and diffusers layout) trained by",
        "`scripts/train_tiny_sd.py` on renders of this repository's bundled object families,",
        "so that the SD path of `cfd` runs on a CPU with learned weights. It knows only those",
        "families: free text beyond them will not work. Its UNet also takes the camera",
        "(`class_embed_type=\"projection\"`, `cfd.cameras.camera_features`).", "",
        "## Data",
        f"{card['data']['variants']} variants × {c['views']} views = {card['data']['images']} renders at "
        f"{c['res']} px on white; captions: family caption 35 %, family alias 10 %, description 25 %, "
        f"variant name/alias 20 %, theme 10 % (of the {100 - 100 * c['empty_caption']:.0f} % non-empty), "
        f"{100 * c['view_suffix']:.0f} % with a view suffix; {100 * c['no_camera']:.0f} % of camera inputs zeroed. "
        f"The scenes' files: SHA-256 {card['data']['scenes_sha256']} (`scenes_digest`).", "",
        "## Training",
        f"- VAE: {c['vae_steps']} steps × {c['vae_batch']}, final loss {card['losses']['vae_final']:.4f}; "
        f"latent scaling factor {card['scaling_factor']:.4f}; {t['vae']:.0f} s.",
        f"- text encoder + UNet: {c['unet_steps']} steps × {c['unet_batch']}, {LOSS_NAMES[c['prediction_type']]} "
        f"{card['losses']['unet_first']:.3f} → {card['losses']['unet_final']:.4f} (mean of the last 100); "
        f"EMA {c['ema_decay']}; {t['unet']:.0f} s.",
        f"- total {t['total']:.0f} s on {card['machine']} ({c['threads']} thread(s)).",
        f"- parameters: UNet {card['parameters']['unet']:,}, VAE {card['parameters']['vae']:,}, "
        f"text encoder {card['parameters']['text_encoder']:,}; {card['size_bytes'] / 2**20:.1f} MB.", "",
        "## Evaluation",
        f"- VAE reconstruction on unseen views: {e['vae_psnr']:.2f} dB.",
        f"- DDIM {e['ddim_steps']} steps, CFG {e['cfg']:g} (camera input {e['camera_input']}), "
        "random training cameras: "
        f"{e['samples_in_family']}/{e['samples']} samples of the family captions show a variant of that "
        f"family (best-matching reference over {c['reference_views']} views per variant); mean PSNR to it "
        f"{e['sample_psnr']:.2f} dB.", "",
        "| caption | in family | mean PSNR (dB) |", "|---|---|---|",
        *(f"| {cap} | {v['in_family']}/{v['samples']} | {v['mean_psnr']:.2f} |" for cap, v in e["per_family"].items()),
        "", "## Files (SHA-256)", "",
        *(f"- `{name}` {digest}" for name, digest in card["files"].items()), "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TINY_SD_DIR)
    parser.add_argument("--micro", action="store_true", help="a seconds-long config (tests)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field, e.g. --set unet_steps=3000")
    args = parser.parse_args(argv)
    cfg = MICRO if args.micro else TrainConfig()
    for item in args.set:
        name, value = item.split("=", 1)
        cfg = replace(cfg, **{name: type(getattr(cfg, name))(value)})
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        card = train(cfg, args.out)
    finally:
        torch.set_num_threads(before)
    print(json.dumps({"out": str(args.out), "times_s": card["times_s"], "evaluation": card["evaluation"],
                      "size_bytes": card["size_bytes"]}, indent=2))
    return 0


def bundled_families(variants: int = 0):
    """(scenes, their ``training_captions``, [(family caption, {its scenes' indices})],
    ``scenes_digest`` of their files) of the bundled families, each cut to its first
    ``variants`` variants (0: all)."""
    sets = [replace(s, families=tuple(replace(f, variants=f.variants[:variants or None]) for f in s.families))
            for s in find_scene_sets()]
    families, k = [], 0
    for scene_set in sets:
        for family in scene_set.families:
            families.append((family.caption, set(range(k, k + len(family.variants)))))
            k += len(family.variants)
    paths = [p for s in sets for p in s.paths]
    return [load_ply(p) for p in paths], training_captions(sets), families, scenes_digest(paths)


def scenes_digest(paths: list[Path]) -> str:
    """SHA-256 over the training scenes: each file's set folder, name and SHA-256, in order."""
    lines = "".join(f"{p.parent.name}/{p.name} {sha256(p)}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def train(cfg: TrainConfig, out: Path) -> dict:
    """Steps 1–5 of the module doc; returns the model card."""
    torch.manual_seed(cfg.seed)

    from accelerate import Accelerator
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    started, times = time.perf_counter(), {}
    last_print = [0.0]

    def log(phase, step, steps, losses):
        now = time.perf_counter()
        if now - last_print[0] > 30 or step == steps - 1:
            last_print[0] = now
            recent = losses[-50:]
            print(f"[{now - started:7.0f} s] {phase} {step + 1}/{steps} loss {sum(recent) / len(recent):.4f}",
                  flush=True)

    scenes, texts, families, digest = bundled_families(cfg.variants)
    t0 = time.perf_counter()
    data = render_views(scenes, cfg.views, cfg.res, torch.Generator().manual_seed(cfg.seed))
    times["data"] = time.perf_counter() - t0
    print(f"[{times['data']:7.0f} s] rendered {len(data.images)} training views", flush=True)

    configs = tiny_sd_configs(cfg.width, cfg.res, cfg.prediction_type)
    vae = AutoencoderKL(**configs["vae"])
    t0 = time.perf_counter()
    vae_losses = train_vae(vae, data, cfg, accelerator, log)
    vae = accelerator.unwrap_model(vae).eval().requires_grad_(False)
    latents = encode_all(vae, data, accelerator.device)
    scaling = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    configs["vae"]["scaling_factor"] = scaling
    times["vae"] = time.perf_counter() - t0

    tokenizer = byte_level_clip_tokenizer(configs["text_encoder"]["max_position_embeddings"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    unet = UNet2DConditionModel(**configs["unet"])
    t0 = time.perf_counter()
    unet_losses = train_unet(unet, text_encoder, latents * scaling, data,
                             Captions(texts, tokenizer, cfg), configs["scheduler"], cfg, accelerator, log)
    unet = accelerator.unwrap_model(unet).eval()
    text_encoder = accelerator.unwrap_model(text_encoder).eval()
    times["unet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    guidance = StableDiffusionGuidance.from_components(unet, vae, text_encoder, tokenizer, configs["scheduler"],
                                                       device="cpu", dtype=torch.float32, name="tiny-sd")
    evaluation = evaluate(guidance, scenes, families, cfg)
    times["evaluation"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - started

    card = model_card(cfg, configs, data, families, digest, vae_losses, unet_losses, scaling,
                      (unet, vae, text_encoder), times, evaluation)
    write_folder(out, unet, vae, text_encoder, tokenizer, configs, card)
    return card


def model_card(cfg, configs, data, families, digest, vae_losses, unet_losses, scaling, modules, times,
               evaluation) -> dict:
    """The model card's data (``write_folder`` adds the files' hashes and size)."""
    tail = unet_losses[-100:]
    return {
        "train_config": asdict(cfg), "configs": configs, "machine": _machine(),
        "data": {"variants": int(data.variant.max()) + 1, "images": len(data.images),
                 "families": [f[0] for f in families], "scenes_sha256": digest},
        "losses": {"vae_final": sum(vae_losses[-100:]) / len(vae_losses[-100:]), "unet_first": unet_losses[0],
                   "unet_final": sum(tail) / len(tail),
                   "unet_curve": [round(sum(unet_losses[i:i + 100]) / len(unet_losses[i:i + 100]), 5)
                                  for i in range(0, len(unet_losses), 100)]},
        "scaling_factor": scaling,
        "parameters": {name: sum(p.numel() for p in m.parameters())
                       for name, m in zip(("unet", "vae", "text_encoder"), modules)},
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "evaluation": evaluation,
    }


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}" + \
        (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")


if __name__ == "__main__":
    sys.exit(main())
