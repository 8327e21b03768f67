"""Benchmarks, JSON out: ``python -m cfd.bench render|noise|toy|recipe|samples|speed``.

One module per benchmark (``render``, ``noise``, ``toy``, ``recipe``, ``samples``,
``speed``: each its ``options`` and its ``bench_*``), ``common`` for what they
share (timing, JSON out, a timing scene, tiny-sd's view options), ``cli`` for the
command line. What they measure is in docs/ (performance.md, toy-results.md,
tiny-sd.md, noise.md).
"""
from .cli import COMMANDS, main, parser
from .common import ASYMMETRIC_FAMILIES, FAMILY_PROMPTS, PhaseTimer, bench_scene
from .noise import NOISE_VIEW_PAIRS, bench_noise, blob_scene, noise_cases, shell_scene, torus_scene
from .recipe import bench_recipe
from .render import bench_render
from .samples import bench_samples
from .speed import bench_speed
from .toy import bench_toy

__all__ = ["ASYMMETRIC_FAMILIES", "COMMANDS", "FAMILY_PROMPTS", "NOISE_VIEW_PAIRS", "PhaseTimer", "bench_noise",
           "bench_recipe", "bench_render", "bench_samples", "bench_scene", "bench_speed", "bench_toy",
           "blob_scene", "main", "noise_cases", "parser", "shell_scene", "torus_scene"]
