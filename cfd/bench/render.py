"""``bench render``: the renderer's forward and backward time and memory at several
sizes, batched views against a loop of single-camera calls, and on CUDA its parity
with our CPU renderer. Results: docs/performance.md, "The CPU renderer"."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..cameras import orbit_camera
from ..framing import FOV_DEG, RADIUS
from ..gaussians import init_scene
from .common import bench_scene, peak_rss_mb, timeit

SIZES = [(5_000, 64), (20_000, 128), (20_000, 256), (50_000, 128)]   # (splats, res) of one camera
BATCHES = [(2_000, 64, 4), (5_000, 64, 8)]   # (splats, res, views): the exact prior's default step; 8 views
CPU_LIMIT_MS = 400   # the target: forward+backward of 20k splats at 128² on a CPU


def options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench render``."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the result here")


def _render_ms(render_all, repeats: int) -> tuple[float, float]:
    """Median ms of ``render_all()`` (a list of RenderOutputs): without grad, and
    with the backward of Σ (rgb + depth) over its outputs."""
    def forward():
        with torch.no_grad():
            render_all()

    def forward_backward():
        sum(out.rgb.sum() + out.depth.sum() for out in render_all()).backward()

    return timeit(forward, repeats), timeit(forward_backward, repeats)


def _sizes(device: str, repeats: int) -> list[dict]:
    """One camera at each of ``SIZES``."""
    from ..render import render

    results = []
    for n, res in SIZES:
        scene = bench_scene(n).to(device).requires_grad_(True)
        cam = orbit_camera(30, 20, RADIUS, FOV_DEG, res, res)
        fwd, both = _render_ms(lambda: [render(scene, cam)], repeats)
        row = {"splats": n, "res": res, "forward_ms": round(fwd, 1), "backward_ms": round(both - fwd, 1),
               "forward_backward_ms": round(both, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
        if device == "cuda":
            row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        results.append(row)
        print(f"render {n:>6} splats {res:>4}²: fwd {fwd:7.1f} ms  fwd+bwd {both:7.1f} ms", file=sys.stderr)
    return results


def _batches(device: str, repeats: int) -> list[dict]:
    """The views of a step in one batched call vs a loop of single-camera calls
    (speedup = loop / batched), at each of ``BATCHES``."""
    from ..render import render

    batches = []
    for n, res, views in BATCHES:
        scene = bench_scene(n).to(device).requires_grad_(True)
        cams = [orbit_camera(30 + 360 * i / views, 20, RADIUS, FOV_DEG, res, res) for i in range(views)]
        fwd, both = _render_ms(lambda: [render(scene, cams)], repeats)
        loop_fwd, loop_both = _render_ms(lambda: [render(scene, cam) for cam in cams], repeats)
        batches.append({"splats": n, "res": res, "views": views,
                        "batched_forward_ms": round(fwd, 1), "loop_forward_ms": round(loop_fwd, 1),
                        "forward_speedup": round(loop_fwd / fwd, 2),
                        "batched_forward_backward_ms": round(both, 1), "loop_forward_backward_ms": round(loop_both, 1),
                        "forward_backward_speedup": round(loop_both / both, 2)})
        print(f"render {n:>6} splats {res:>4}² × {views} views: batched fwd {fwd:7.1f} / fwd+bwd {both:7.1f} ms, "
              f"loop {loop_fwd:7.1f} / {loop_both:7.1f} ms", file=sys.stderr)
    return batches


def bench_render(args) -> dict:
    """One camera at several sizes; and the views of a step rendered in one
    batched call vs a loop of single-camera calls (speedup = loop / batched)."""
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device.replace("auto", "cpu")
    results = _sizes(device, args.repeats)
    batches = _batches(device, args.repeats)
    target = next(r for r in results if r["splats"] == 20_000 and r["res"] == 128)
    parity = _gsplat_parity() if torch.cuda.is_available() else None
    return {"device": device, "runs": results, "batches": batches, "gsplat_parity": parity,
            "target": {"what": "forward+backward, 20k splats, 128², CPU", "limit_ms": CPU_LIMIT_MS,
                       "measured_ms": target["forward_backward_ms"],
                       "met": device != "cpu" or target["forward_backward_ms"] <= CPU_LIMIT_MS}}


def _gsplat_parity() -> dict:
    """Max abs difference between our CPU renderer and gsplat's CUDA kernels."""
    from ..render import render

    diffs = []
    for seed in range(3):
        scene = init_scene(5000, seed=seed, radius=0.7, sh_degree=3, opacity=0.5)
        scene.sh[:, 1:] = 0.2 * torch.randn(scene.sh[:, 1:].shape, generator=torch.Generator().manual_seed(seed))
        cam = orbit_camera(40 * seed, 10, RADIUS, FOV_DEG, 128, 96)
        with torch.no_grad():
            cpu, gpu = render(scene, cam), render(scene.to("cuda"), cam)
        diffs.append({"rgb": float((cpu.rgb - gpu.rgb.cpu()).abs().max()),
                      "alpha": float((cpu.alpha - gpu.alpha.cpu()).abs().max())})
    return {"scenes": diffs, "max_rgb": max(d["rgb"] for d in diffs), "limit": 1e-3}
