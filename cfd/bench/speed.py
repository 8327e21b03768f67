"""``bench speed``: per-step time of the whole distillation loop, broken down by
phase, on the exact prior or on SD-2.1's architecture with random weights.
Results: docs/performance.md, "Where a step's time goes"."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .common import PhaseTimer, peak_rss_mb, sync, timeit


def options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench speed``."""
    p.add_argument("--backend", choices=["exact", "sd-random"], default="exact")
    p.add_argument("--method", default="cfd")
    p.add_argument("--res", type=int, default=32, help="render resolution (SD: 512 for 64² latents)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-views", type=int, default=1)
    p.add_argument("--prompt", default="a toy", help="exact: the prompt (its variants are weighed at CFG 1)")
    p.add_argument("--guidance-scale", type=float, default=None, help="exact: CFG (≠ 1 weighs every object)")
    p.add_argument("--objects", type=int, default=None,
                   help="exact: the prior over this many objects (bundled variants, cycled), e.g. 8 or 64; "
                        "with --prompt '' (every object weighed)")
    p.add_argument("--splats", type=int, default=5000, help="initial splats (sd-random)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="UNet/VAE dtype on CUDA (CPU always runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--densify", action="store_true",
                   help="densify as the preset does (every 10 %% of the run until half-way); "
                        "reports the splat-count curve")
    p.add_argument("--json", type=Path)


def _exact_prior(objects: int | None, **kwargs):
    """The exact prior over every bundled variant, or over the first ``objects`` of
    them (cycling through them again past their number: a cost measure)."""
    from ..guidance.exact_prior import ExactPrior

    prior = ExactPrior.bundled(**kwargs)
    if objects is None:
        return prior
    pick = [k % len(prior.scenes) for k in range(objects)]
    return ExactPrior([prior.scenes[k] for k in pick], names=[f"{prior.names[k]} {i}" for i, k in enumerate(pick)],
                      **kwargs)


def _render_references(prior, config) -> None:
    """Render the references a run of ``config`` weighs from every view of its pool
    (as the app's warm-up does), so the timed steps measure the posterior alone."""
    from ..cameras import pool_cameras

    size = config.res // prior.latent_factor
    cond = prior.condition(config.prompt, config.negative_prompt, config.guidance_scale)
    prior.reference_images(pool_cameras(config.res, config.res, config.cameras), size, size,
                           cond.support(len(prior.scenes)))


def _speed_setup(args, device: str):
    """(guidance, config) of ``bench_speed``: the exact prior over ``--objects``
    (references rendered ahead), or SD-2.1's architecture with random weights."""
    from ..distill import DistillConfig

    if args.backend == "exact":
        guidance = _exact_prior(args.objects, multiview=args.batch_views > 1).to(device)
        config = DistillConfig(method=args.method, steps=args.steps + args.warmup, res=args.res,
                               batch_views=args.batch_views, prompt=args.prompt, guidance_scale=args.guidance_scale,
                               densify_every=max(1, (args.steps + args.warmup) // 10) if args.densify else 0)
        _render_references(guidance, config)
    else:
        from ..guidance.stable_diffusion import build_random_sd21

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        guidance = build_random_sd21(device=device, dtype=dtype if device == "cuda" else torch.float32)
        if args.compile:
            guidance.unet = torch.compile(guidance.unet)
        config = DistillConfig.for_stable_diffusion(prompt="a photo of a hamburger", method=args.method,
                                                    steps=args.steps + args.warmup,
                                                    res=args.res, batch_views=args.batch_views,
                                                    init_splats=args.splats, preview_every=0,
                                                    **({} if args.densify else {"densify_every": 0}))
    return guidance, config


def _timed_run(guidance, config, warmup: int, device: str) -> tuple[float, int, dict, list, int]:
    """Distil ``config`` and time it past ``warmup`` steps: (ms per step, steps
    timed, total ms per phase, the (step, splats) curve, steps skipped)."""
    from ..distill import distill

    timer = PhaseTimer()
    marks, splats = [], [(0, config.init_splats)]
    skipped = {"steps": 0}

    def callback(info):
        marks.append(time.perf_counter())
        skipped["steps"] = info.skipped_steps
        if info.n_splats != splats[-1][1]:
            splats.append((info.step, info.n_splats))
        if info.step == warmup:
            timer.total.clear()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()

    distill(guidance, config, callback=callback, timer=timer)
    sync()
    steps = len(marks) - warmup
    step_ms = 1e3 * (marks[-1] - marks[warmup - 1]) / steps if warmup else \
        1e3 * (marks[-1] - marks[0]) / max(steps - 1, 1)
    return step_ms, steps, timer.total, splats, skipped["steps"]


def bench_speed(args) -> dict:
    """Per-step time of the whole loop, broken down by phase."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    guidance, config = _speed_setup(args, device)
    step_ms, steps, totals, splats, skipped = _timed_run(guidance, config, args.warmup, device)
    phases = {k: round(v / steps, 2) for k, v in totals.items()}
    total = sum(phases.values())
    result = {"backend": args.backend, "device": device, "method": args.method, "res": args.res,
              "batch_views": args.batch_views, "steps_timed": steps, "ms_per_step": round(step_ms, 2),
              "phases_ms": phases, "phases_share": {k: round(v / total, 3) for k, v in phases.items()},
              "projected_1000_steps_s": round(step_ms, 2),  # 1000 steps × ms/step ÷ 1000 ms/s
              "peak_rss_mb": round(peak_rss_mb(), 1),
              # densification (--densify): (step, splats) at every change; steps skipped for a NaN/Inf gradient
              "densify_every": config.densify_every, "splat_curve": splats, "skipped_steps": skipped}
    if args.backend == "exact":
        result.update(objects=len(guidance.scenes), prompt=args.prompt, guidance_scale=args.guidance_scale,
                      reference_cache_mb=round(guidance.cache_size() / 2**20, 1),
                      weighed=len(guidance.condition(args.prompt, None, args.guidance_scale).support(
                          len(guidance.scenes))))
    else:
        latents = torch.randn(1, guidance.channels, args.res // guidance.latent_factor,
                              args.res // guidance.latent_factor, device=device)
        with torch.no_grad():
            decode_ms = timeit(lambda: guidance.decode(latents), 2)
        result.update(dtype=args.dtype, compile=args.compile, splats=args.splats, decode_ms=round(decode_ms, 1))
    if device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for k, v in phases.items():
        print(f"speed {k:>10}: {v:8.1f} ms/step ({100 * v / total:4.1f} %)", file=sys.stderr)
    return result
