"""Benchmarks, JSON out: ``python -m cfd.bench render|noise|toy|recipe|samples|speed --json OUT``.

Timings are medians over repeats, measured in one process; compare ratios from
one run, and quote absolute times only from a GPU.
"""
from __future__ import annotations

import argparse

from . import noise, recipe, render, samples, speed, toy
from .common import environment, write_result

COMMANDS = {"render": render.bench_render, "noise": noise.bench_noise, "toy": toy.bench_toy,
            "speed": speed.bench_speed, "recipe": recipe.bench_recipe, "samples": samples.bench_samples}
HELP = [("render", render, "renderer forward/backward time and memory"),
        ("noise", noise, "consistent noise: per-view statistics, cross-view correlation, cost"),
        ("toy", toy, "CFD vs SDS vs ablations on the exact prior (PSNR, diversity, time)"),
        ("recipe", recipe, "an SD recipe on tiny-sd against the bundled ground truth"),
        ("samples", samples, "tiny-sd's own 2D samples against the bundled ground truth"),
        ("speed", speed, "per-step time breakdown of the loop")]


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cfd.bench``: one subcommand per benchmark."""
    parser = argparse.ArgumentParser(prog="python -m cfd.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, text in HELP:
        module.options(sub.add_parser(name, help=text))
    return parser


def main(argv=None) -> int:
    """Run one benchmark; print its JSON (and write it to ``--json``)."""
    args = parser().parse_args(argv)
    write_result({"command": args.command, "environment": environment(), **COMMANDS[args.command](args)}, args.json)
    return 0
