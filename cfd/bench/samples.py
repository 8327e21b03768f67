"""``bench samples``: tiny-sd's own 2D samples judged against the bundled ground
truth, the bound on what distillation can inherit. Results: docs/tiny-sd.md,
"The model's own samples"."""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from .common import ASYMMETRIC_FAMILIES, FAMILY_PROMPTS, model_input_options, prepare_tiny_sd, prompt_list


def options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench samples``."""
    p.add_argument("--backend", choices=["tiny-sd"], default="tiny-sd")
    p.add_argument("--prompts", default=FAMILY_PROMPTS, help="comma-separated (default: the 8 family captions)")
    p.add_argument("--samples", type=int, default=16, help="per prompt, cycling over --azimuths orbit cameras")
    p.add_argument("--azimuths", type=int, default=8, help="orbit cameras (azimuth 0, 360/n, …)")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    model_input_options(p)
    p.add_argument("--label", default="", help="the row's name in the printed table")
    p.add_argument("--json", type=Path)


def bench_samples(args) -> dict:
    """DDIM samples of each prompt from orbit cameras, each classified by its
    best-matching reference view (every bundled variant × ``REFERENCE_AZIMUTHS``
    orbit views): in the prompt's family, its PSNR, its detail ratio against that
    view (``cfd.measures.high_frequency_ratio``), and whether that view faces the
    camera's way (``cfd.measures.facing``; the asymmetric families' samples in
    their family)."""
    from ..cameras import orbit_cameras
    from ..measures import REFERENCE_AZIMUTHS, facing, high_frequency_ratio, nearest_views
    from ..render import render

    prompts = prompt_list(args.prompts)
    guidance = prepare_tiny_sd(args, prompts[0])
    refs, res = guidance.references, args.res
    with torch.no_grad():
        references = torch.stack([render(scene, orbit_cameras(REFERENCE_AZIMUTHS, res)).rgb.permute(0, 3, 1, 2)
                                  for scene in refs.scenes])                    # [K, views, 3, H, W]
    cameras = (orbit_cameras(args.azimuths, res) * args.samples)[:args.samples]
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for prompt in prompts:
        family = set(refs.condition(prompt).positive)
        images = guidance.sample(prompt, cameras, args.steps, args.guidance_scale, generator)
        variant, view, best = nearest_views(images, references)
        faces = facing(view, [c.azimuth_deg for c in cameras]).tolist()
        detail = high_frequency_ratio(images, references[variant, view]).tolist()
        for k, right_way, db, ratio, cam in zip(variant.tolist(), faces, best.tolist(), detail, cameras):
            rows.append({"prompt": prompt, "azimuth": cam.azimuth_deg, "nearest": refs.names[k],
                         "family": refs.vocabulary.family(k), "in_family": k in family, "psnr": round(db, 2),
                         "detail": round(ratio, 3), "facing": right_way})
    summary = _summary(rows)
    print(f"| {args.label or 'samples'} | {summary['in_family']}/{summary['samples']} | {summary['mean_psnr']:.2f} | "
          f"{summary['mean_detail']:.2f} | {summary['facing_asymmetric']} |", file=sys.stderr)
    config = {"backend": args.backend, "prompts": prompts, "samples": args.samples, "azimuths": args.azimuths,
              "res": res, "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
              "camera_input": args.camera_input, "camera_scale": guidance.camera_scale,
              "view_suffix": args.view_suffix, "label": args.label}
    return {"config": config, "samples": rows, "summary": summary}


def _summary(rows: list[dict]) -> dict:
    """The samples' summary: in the family, mean PSNR and detail, and how often the
    asymmetric families' samples in their family face the camera's way."""
    asym = [r["facing"] for r in rows if r["family"] in ASYMMETRIC_FAMILIES and r["in_family"]]
    return {"in_family": sum(r["in_family"] for r in rows), "samples": len(rows),
            "mean_psnr": round(statistics.mean(r["psnr"] for r in rows), 2),
            "mean_detail": round(statistics.mean(r["detail"] for r in rows), 3),
            "facing_asymmetric": round(statistics.mean(asym), 3) if asym else None}
