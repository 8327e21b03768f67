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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
