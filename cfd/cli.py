"""Command line: ``python -m cfd render|generate|batch ...``.

``generate`` is a thin argparse over ``cfd.request``: its options, ranges,
defaults and messages are the app's (``cli_options.add_generate_arguments``). ``batch``
(``cfd.batch``) takes the same options for many prompts × seeds × methods, on
one process or under ``torchrun`` / ``accelerate launch``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import framing


def cmd_render(args) -> int:
    import imageio.v3 as iio
    import torch

    from .cameras import orbit_camera
    from .export import to_uint8
    from .gaussians import load_ply
    from .render import render

    scene = load_ply(args.ply)
    cam = orbit_camera(args.azimuth, args.elevation, args.radius, args.fov, args.res, args.res)
    with torch.no_grad():
        rgb = render(scene, cam, background=framing.BACKGROUND).rgb
    iio.imwrite(args.out, to_uint8(rgb))
    print(args.out)
    return 0


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .pipeline import generate
    from .backends import prepare
    from .cli_options import request_from_args

    request = request_from_args(args)  # RequestError (a ValueError) before anything loads
    guidance = prepare(request, allow_download=True)
    config = request.config()
    bar = tqdm(total=config.steps, desc=request.label(), unit="step")

    def progress(info):
        bar.update(1)
        bar.set_postfix(t=info.t, splats=info.n_splats)

    try:
        result = generate(guidance, config, args.out, callback=progress,
                          metadata=request.metadata(),
                          **request.exports.pipeline_kwargs())
    finally:
        bar.close()
    for key, path in result["files"].items():
        print(f"{key:>10}: {path}")
    return 0


def cmd_batch(args) -> int:
    from .batch import main as batch_main

    return batch_main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import batch
    from .cli_options import add_generate_arguments

    parser = argparse.ArgumentParser(prog="python -m cfd",
                                     description="Consistent Flow Distillation: text-to-3D on Gaussian splats.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render a splat PLY to a PNG")
    p.add_argument("ply", type=Path)
    p.add_argument("--out", type=Path, default=Path("render.png"))
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--azimuth", type=float, default=0.0)
    p.add_argument("--elevation", type=float, default=framing.ELEVATION_DEG)
    p.add_argument("--radius", type=float, default=framing.RADIUS)
    p.add_argument("--fov", type=float, default=framing.FOV_DEG)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("generate", help="distil a scene and write scene.ply, viewer.ply, render.mp4, noise.mp4, "
                                        "scene.glb, run.json",
                       description="Every option defaults to its backend's default (the app's).")
    add_generate_arguments(p)
    p.add_argument("--out", type=Path, default=Path("outputs/run"))
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("batch", help="many prompts × seeds × methods into DIR/<prompt>/<method>-seed<k>/, with "
                                     "index.json and index.html; parallel under torchrun / accelerate launch",
                       description="Options as generate's (each job sets its prompt, seed and method). "
                                   "Resumable: complete jobs are skipped, failed ones retried. Exit status: the "
                                   "number of failed jobs.")
    batch.add_arguments(p)
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv=None) -> int:
    """Exit status: 0 done, 2 bad input, 3 guidance unavailable, 4 the run stopped on a
    non-finite gradient, 5 out of memory, 6 disk full, 1 an internal error (its traceback printed;
    ``cfd.errors.failure``); batch: the number of failed jobs."""
    from .errors import failure

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - every failure gets its one message and exit status
        problem = failure(exc)
        print(f"error: {problem.message}" + (f" ({problem.detail})" if problem.detail else ""), file=sys.stderr)
        return problem.exit_code