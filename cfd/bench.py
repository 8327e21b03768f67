"""Benchmarks, JSON out: ``python -m cfd.bench render|noise|toy|speed --json OUT``.

Timings are medians over repeats, measured in one process; compare ratios from
one run, and quote absolute times only from a GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .cameras import orbit_camera
from .gaussians import init_scene


def _timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def bench_scene(n: int, seed: int = 0):
    """A benchmark scene: ``n`` splats in a ball of radius 0.6, sizes 0.005–0.035."""
    scene = init_scene(n, seed=seed, radius=0.6, opacity=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    scene.log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.005)
    return scene


def bench_render(args) -> dict:
    from .render import render

    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device.replace("auto", "cpu")
    results = []
    for n, res in [(5_000, 64), (20_000, 128), (20_000, 256), (50_000, 128)]:
        scene = bench_scene(n).to(device).requires_grad_(True)
        cam = orbit_camera(30, 20, 2.5, 49, res, res)

        def forward():
            with torch.no_grad():
                render(scene, cam)

        def forward_backward():
            out = render(scene, cam)
            (out.rgb.sum() + out.depth.sum()).backward()

        fwd = _timeit(forward, args.repeats)
        both = _timeit(forward_backward, args.repeats)
        row = {"splats": n, "res": res, "forward_ms": round(fwd, 1), "backward_ms": round(both - fwd, 1),
               "forward_backward_ms": round(both, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}
        if device == "cuda":
            row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        results.append(row)
        print(f"render {n:>6} splats {res:>4}²: fwd {fwd:7.1f} ms  fwd+bwd {both:7.1f} ms", file=sys.stderr)
    target = next(r for r in results if r["splats"] == 20_000 and r["res"] == 128)
    return {"device": device, "runs": results,
            "target": {"what": "forward+backward, 20k splats, 128², CPU", "limit_ms": 400,
                       "measured_ms": target["forward_backward_ms"],
                       "met": device != "cpu" or target["forward_backward_ms"] <= 400}}


COMMANDS = {"render": bench_render}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cfd.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="renderer forward/backward time and memory")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result = {"command": args.command, "environment": _environment(), **COMMANDS[args.command](args)}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
