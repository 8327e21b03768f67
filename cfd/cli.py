"""Command line: ``python -m cfd render|generate ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_render(args) -> int:
    import imageio.v3 as iio
    import torch

    from .cameras import orbit_camera
    from .gaussians import load_ply
    from .render import render

    scene = load_ply(args.ply)
    cam = orbit_camera(args.azimuth, args.elevation, args.radius, args.fov, args.res, args.res)
    with torch.no_grad():
        rgb = render(scene, cam, background=(1.0, 1.0, 1.0)).rgb
    iio.imwrite(args.out, (rgb.clamp(0, 1) * 255).round().byte().numpy())
    print(args.out)
    return 0


def make_guidance(args):
    """The guidance named by --backend (exact prior over --scenes or a bundled set, or SD)."""
    if args.backend == "exact":
        from .gaussians import load_ply
        from .guidance.exact_prior import ExactPrior

        if args.scenes:
            return ExactPrior([load_ply(p) for p in args.scenes], names=[p.stem for p in args.scenes],
                              name="Exact prior: " + ", ".join(p.stem for p in args.scenes))
        return ExactPrior.from_scene_set(args.scene_set)
    from .guidance.stable_diffusion import StableDiffusionGuidance, check_sd_weights, hub_offline

    if not hub_offline() and check_sd_weights(args.model) is not None:
        print("Stable Diffusion weights are not on this machine; trying the Hugging Face Hub "
              "(set HF_HUB_OFFLINE=1 to fail at once, or CFD_MODEL=/path/to/folder) …", file=sys.stderr)
    return StableDiffusionGuidance.from_pretrained(args.model)


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .distill import DistillConfig
    from .pipeline import generate

    if args.backend == "sd" and not args.prompt.strip():  # before loading a model
        raise ValueError("--prompt is empty; Stable Diffusion needs a text prompt, "
                         "e.g. --prompt 'a DSLR photo of a hamburger'")
    guidance = make_guidance(args)
    overrides = dict(method=args.method, seed=args.seed, prompt=args.prompt, negative_prompt=args.negative_prompt,
                     guidance_scale=args.guidance_scale)
    overrides.update({k: v for k, v in (("steps", args.steps), ("res", args.res)) if v is not None})
    config = (DistillConfig(**overrides) if args.backend == "exact"
              else DistillConfig.for_stable_diffusion(**overrides))
    bar = tqdm(total=config.steps, desc=f"{config.method} seed {config.seed}", unit="step")

    def progress(info):
        bar.update(1)
        bar.set_postfix(t=info.t, splats=info.n_splats)

    try:
        result = generate(guidance, config, args.out, callback=progress,
                          metadata={"prompt": args.prompt, "backend": args.backend, "guidance": guidance.name})
    finally:
        bar.close()
    for key, path in result["files"].items():
        print(f"{key:>10}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cfd",
                                     description="Consistent Flow Distillation: text-to-3D on Gaussian splats.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render a splat PLY to a PNG")
    p.add_argument("ply", type=Path)
    p.add_argument("--out", type=Path, default=Path("render.png"))
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--azimuth", type=float, default=0.0)
    p.add_argument("--elevation", type=float, default=15.0)
    p.add_argument("--radius", type=float, default=2.5)
    p.add_argument("--fov", type=float, default=49.0)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("generate", help="distil a scene and write scene.ply, render.mp4, noise.mp4, scene.glb, run.json")
    p.add_argument("--backend", choices=["exact", "sd"], default="exact")
    p.add_argument("--prompt", default="", help="text prompt (SD backend)")
    p.add_argument("--negative-prompt", default=None, help="default: the backend's")
    p.add_argument("--model", default=None, help="SD hub id or local folder (default: $CFD_MODEL or SD-2.1-base)")
    p.add_argument("--scenes", type=Path, nargs="*", help="exact prior: reference PLYs (default: --scene-set)")
    p.add_argument("--scene-set", default="toys", help="exact prior: a bundled set (toys, garden)")
    p.add_argument("--method", default="cfd", choices=["cfd", "cfd-sde", "sds", "iid", "fixed2d"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="default: the backend's (DistillConfig / DistillConfig.for_stable_diffusion)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="CFG scale, diffusers convention (default: the backend's; SD: 71, the authors' 70)")
    p.add_argument("--res", type=int, default=None, help="render resolution (default: the backend's)")
    p.add_argument("--out", type=Path, default=Path("outputs/run"))
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv=None) -> int:
    from .distill import NonFiniteGradient
    from .guidance.base import GuidanceUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: the message names the problem and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GuidanceUnavailable as exc:  # missing weights, with the fix
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except NonFiniteGradient as exc:  # the run diverged; nothing was written
        print(f"error: {exc}", file=sys.stderr)
        return 4
