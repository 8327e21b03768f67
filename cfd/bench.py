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
from .framing import FOV_DEG, PSNR_RES, PSNR_VIEWS, RADIUS
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
        cam = orbit_camera(30, 20, RADIUS, FOV_DEG, res, res)

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
    parity = _gsplat_parity() if torch.cuda.is_available() else None
    return {"device": device, "runs": results, "gsplat_parity": parity,
            "target": {"what": "forward+backward, 20k splats, 128², CPU", "limit_ms": 400,
                       "measured_ms": target["forward_backward_ms"],
                       "met": device != "cpu" or target["forward_backward_ms"] <= 400}}


def _method_spec(spec: str) -> tuple[str, str | None]:
    """"sds" → ("sds", None); "sds:lambda" → ("sds", "lambda") (a method with another weighting)."""
    method, _, weighting = spec.partition(":")
    return method, weighting or None


def bench_toy(args) -> dict:
    """CFD vs SDS vs ablations on the exact prior (DESIGN.md §8): nearest-object
    PSNR, chimeras (runs below ``--reach-db`` to every object), distinct objects."""
    from .distill import DistillConfig, distill
    from .gaussians import load_ply
    from .guidance.exact_prior import ExactPrior
    from .pipeline import nearest_reference
    from .request import parse_seeds

    multiview = args.prior == "multiview"
    if args.scenes:
        prior = ExactPrior([load_ply(p) for p in args.scenes], names=[p.stem for p in args.scenes],
                           multiview=multiview)
    else:
        prior = ExactPrior.bundled(None if args.scene_set == "all" else args.scene_set.split(","),
                                   multiview=multiview)
    names = prior.names
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    runs, finals = [], {}
    for spec in methods:
        method, weighting = _method_spec(spec)
        for seed in seeds:
            config = DistillConfig(method=method, weighting=weighting, seed=seed, steps=args.steps, res=args.res,
                                   batch_views=args.views, prompt=args.prompt,
                                   guidance_scale=args.guidance_scale)
            t0 = time.perf_counter()
            scene = distill(prior, config)
            seconds = time.perf_counter() - t0
            near = nearest_reference(scene, prior)  # the project's one PSNR measure (cfd.framing)
            psnr = [near["psnr"][name] for name in prior.names]
            nearest = max(range(len(psnr)), key=psnr.__getitem__)
            runs.append({"method": spec, "seed": seed, "psnr": psnr,
                         "nearest": nearest, "nearest_name": names[nearest], "seconds": round(seconds, 2)})
            finals[spec, seed] = scene
            print(f"toy {spec:>10} seed {seed}: best {psnr[nearest]:5.1f} dB ({names[nearest]}) {seconds:5.1f} s",
                  file=sys.stderr)
    summary = {}
    for spec in methods:
        rs = [r for r in runs if r["method"] == spec]
        best = [max(r["psnr"]) for r in rs]
        reached = [r["nearest"] for r in rs if max(r["psnr"]) >= args.reach_db]
        counts = torch.bincount(torch.tensor([r["nearest"] for r in rs]), minlength=len(names)).double()
        p = counts[counts > 0] / counts.sum()
        summary[spec] = {"mean_best_psnr": round(statistics.mean(best), 2),
                         "distinct_modes": len(set(reached)),
                         "chimeras": len(rs) - len(reached),
                         "mode_entropy": round(abs(float(-(p * p.log2()).sum())), 3),
                         "mean_seconds": round(statistics.mean(r["seconds"] for r in rs), 2)}
    if args.figure:
        _toy_figure(finals, methods, seeds, args.figure)
    _print_table(summary, len(seeds), args.reach_db, args.prior, args.views)
    config = {"scenes": names, "methods": methods, "seeds": seeds, "steps": args.steps, "res": args.res,
              "reach_db": args.reach_db, "prior": args.prior, "views": args.views, "prompt": args.prompt,
              "guidance_scale": args.guidance_scale, "psnr": {"res": PSNR_RES, "views": PSNR_VIEWS}}
    return {"config": config, "runs": runs, "summary": summary}


def _print_table(summary: dict, n_seeds: int, reach_db: float, prior: str, views: int) -> None:
    print(f"\n| prior, views/step | method | mean nearest-object PSNR (dB) | chimeras (<{reach_db:g} dB) "
          f"/ {n_seeds} | distinct objects reached | mode entropy (bits) | s / run |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for method, s in summary.items():
        print(f"| {prior}, {views} | {method} | {s['mean_best_psnr']:.1f} | {s['chimeras']} | {s['distinct_modes']} | "
              f"{s['mode_entropy']:.2f} | {s['mean_seconds']:.1f} |", file=sys.stderr)


def _toy_figure(finals: dict, methods: list[str], seeds: list[int], path: Path, res: int = 96) -> None:
    """PNG grid: one row per method, one column per seed, final renders."""
    import imageio.v3 as iio

    from .distill import preview
    from .export import to_uint8

    rows = [torch.cat([preview(finals[m, s], res) for s in seeds], dim=1) for m in methods]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(torch.cat(rows, dim=0)))


def _noise_scenes() -> dict:
    """The noise benchmark's scenes: a splat sphere shell and a random blob."""
    import math

    from .gaussians import make_scene

    g = torch.Generator().manual_seed(0)
    n = 6000
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    spacing = 0.5 * math.sqrt(4 * math.pi / n)
    shell = make_scene(0.5 * d, torch.full((n, 3), 0.7 * spacing), torch.rand(n, 3, generator=g),
                       torch.full((n,), 0.9))
    blob = init_scene(5000, seed=3, radius=0.6, opacity=0.8)
    blob.log_scales = torch.log(torch.rand(5000, 3, generator=g) * 0.04 + 0.01)
    blob.quats = torch.randn(5000, 4, generator=g)
    return {"shell": shell, "blob": blob}


def bench_noise(args) -> dict:
    """Per-view statistics, cross-view consistency and cost of the consistent noise."""
    from scipy import stats

    from .noise import FixedImageNoise, IIDNoise, consistent_noise, cross_view_correlation, default_cell_size, \
        noise_from_surface
    from .render import render

    res, s = args.res, args.supersample
    cam_a, cam_b = orbit_camera(0, 10, RADIUS, FOV_DEG, res, res), orbit_camera(5, 10, RADIUS, FOV_DEG, res, res)
    cell = default_cell_size(cam_a, s)
    out = {"res": res, "supersample": s, "cell_size": cell, "scenes": {}}
    for name, scene in _noise_scenes().items():
        ra, rb = render(scene, cam_a), render(scene, cam_b)

        def corr(na, nb):
            return round(cross_view_correlation(na, nb, cam_a, cam_b, ra.depth, ra.alpha, rb.depth, rb.alpha)[0], 4)

        n = consistent_noise(scene, cam_a, seed=0, supersample=s, cell_size=cell)
        flat = n.reshape(-1)
        view = {"mean": round(float(flat.mean()), 4), "var": round(float(flat.var()), 4),
                "neighbour_corr_x": round(float(torch.corrcoef(torch.stack(
                    [n[:, :, 1:].reshape(-1), n[:, :, :-1].reshape(-1)]))[0, 1]), 4),
                "neighbour_corr_y": round(float(torch.corrcoef(torch.stack(
                    [n[:, 1:].reshape(-1), n[:, :-1].reshape(-1)]))[0, 1]), 4),
                "ks_pvalue": round(float(stats.kstest(flat.numpy(), "norm").pvalue), 4), "samples": flat.numel()}
        cross = {}
        for method in ("cubemap", "lattice"):
            na = consistent_noise(scene, cam_a, seed=0, supersample=s, cell_size=cell, method=method)
            nb = consistent_noise(scene, cam_b, seed=0, supersample=s, cell_size=cell, method=method)
            cross[f"consistent_{method}"] = corr(na, nb)
        cross["consistent_other_seed"] = corr(n, consistent_noise(scene, cam_b, seed=1, supersample=s, cell_size=cell))
        iid = IIDNoise(0).sample(0, (2, 4, res, res))
        fixed = FixedImageNoise(0).sample(0, (2, 4, res, res))
        cross["iid"], cross["fixed2d"] = corr(iid[0], iid[1]), corr(fixed[0], fixed[1])
        out["scenes"][name] = {"per_view": view, "cross_view_5deg": cross}
        print(f"noise {name}: {view} {cross}", file=sys.stderr)

    # cost: one 64×64×4 draw at 8× supersampling vs one 512² render+backward (20k splats)
    scene = bench_scene(20_000).requires_grad_(True)
    cam = orbit_camera(30, 20, RADIUS, FOV_DEG, 512, 512)
    with torch.no_grad():
        surf = render(scene, cam)
    draw = _timeit(lambda: noise_from_surface(surf.depth, surf.alpha, cam, 0, supersample=8), args.repeats)

    def render_backward():
        o = render(scene, cam)
        o.rgb.sum().backward()

    step = _timeit(render_backward, max(1, args.repeats // 3))
    out["cost"] = {"noise_64x64x4_ss8_ms": round(draw, 1), "render_backward_512_20k_ms": round(step, 1),
                   "ratio": round(draw / step, 4), "limit": 0.10}
    print(f"noise cost: {draw:.1f} ms vs render+backward {step:.1f} ms ({100 * draw / step:.1f} %)", file=sys.stderr)
    return out


class PhaseTimer:
    """``timer(name)`` context managers that add up wall time per phase (ms),
    synchronising CUDA so GPU work is charged to the phase that queued it."""

    def __init__(self):
        self.total: dict[str, float] = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def phase():
            _sync()
            t0 = time.perf_counter()
            yield
            _sync()
            self.total[name] = self.total.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

        return phase()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_speed(args) -> dict:
    """Per-step time of the whole loop, broken down by phase."""
    from .distill import DistillConfig, distill

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.backend == "exact":
        from .guidance.exact_prior import ExactPrior

        guidance = ExactPrior.bundled(multiview=args.batch_views > 1).to(device)
        config = DistillConfig(method=args.method, steps=args.steps + args.warmup, res=args.res,
                               batch_views=args.batch_views, prompt="a toy",
                               densify_every=max(1, (args.steps + args.warmup) // 10) if args.densify else 0)
    else:
        from .guidance.stable_diffusion import build_random_sd21

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        guidance = build_random_sd21(device=device, dtype=dtype if device == "cuda" else torch.float32)
        if args.compile:
            guidance.unet = torch.compile(guidance.unet)
        config = DistillConfig.for_stable_diffusion(prompt="a photo of a hamburger", method=args.method,
                                                    steps=args.steps + args.warmup,
                                                    res=args.res, batch_views=args.batch_views,
                                                    init_splats=args.splats, preview_every=0,
                                                    **({} if args.densify else {"densify_every": 0}))
    timer = PhaseTimer()
    marks, splats = [], [(0, config.init_splats)]
    skipped = {"steps": 0}

    def callback(info):
        marks.append(time.perf_counter())
        skipped["steps"] = info.skipped_steps
        if info.n_splats != splats[-1][1]:
            splats.append((info.step, info.n_splats))
        if info.step == args.warmup:
            timer.total.clear()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()

    distill(guidance, config, callback=callback, timer=timer)
    _sync()
    steps = len(marks) - args.warmup
    step_ms = 1e3 * (marks[-1] - marks[args.warmup - 1]) / steps if args.warmup else \
        1e3 * (marks[-1] - marks[0]) / max(steps - 1, 1)
    phases = {k: round(v / steps, 2) for k, v in timer.total.items()}
    total = sum(phases.values())
    result = {"backend": args.backend, "device": device, "method": args.method, "res": args.res,
              "batch_views": args.batch_views, "steps_timed": steps, "ms_per_step": round(step_ms, 2),
              "phases_ms": phases, "phases_share": {k: round(v / total, 3) for k, v in phases.items()},
              "projected_1000_steps_s": round(step_ms, 2),  # 1000 steps × ms/step ÷ 1000 ms/s
              "peak_rss_mb": round(_peak_rss_mb(), 1),
              # densification (--densify): (step, splats) at every change; steps skipped for a NaN/Inf gradient
              "densify_every": config.densify_every, "splat_curve": splats, "skipped_steps": skipped["steps"]}
    if args.backend != "exact":
        latents = torch.randn(1, guidance.channels, args.res // guidance.latent_factor,
                              args.res // guidance.latent_factor, device=device)
        with torch.no_grad():
            decode_ms = _timeit(lambda: guidance.decode(latents), 2)
        result.update(dtype=args.dtype, compile=args.compile, splats=args.splats, decode_ms=round(decode_ms, 1))
    if device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for k, v in phases.items():
        print(f"speed {k:>10}: {v:8.1f} ms/step ({100 * v / total:4.1f} %)", file=sys.stderr)
    return result


def _gsplat_parity() -> dict:
    """Max abs difference between our CPU renderer and gsplat's CUDA kernels."""
    from .render import render

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


COMMANDS = {"render": bench_render, "noise": bench_noise, "toy": bench_toy, "speed": bench_speed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cfd.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="renderer forward/backward time and memory")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the result here")
    p = sub.add_parser("noise", help="consistent noise: per-view statistics, cross-view correlation, cost")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--supersample", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    p = sub.add_parser("toy", help="CFD vs SDS vs ablations on the exact prior (PSNR, diversity, time)")
    p.add_argument("--scenes", type=Path, nargs="*", help="reference PLYs (default: --scene-set)")
    p.add_argument("--scene-set", default="toys", help="bundled set id(s), comma-separated, or 'all'")
    p.add_argument("--prior", choices=["single", "multiview"], default="multiview",
                   help="per-view posterior, or one object for all views of a step (joint)")
    p.add_argument("--views", type=int, default=4, help="views per step")
    p.add_argument("--prompt", default="", help="text for the prior (default: unconditional)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG (default: the prior's)")
    p.add_argument("--methods", default="cfd,sds,iid,fixed2d",
                   help="methods, comma-separated; method:weighting picks another w(t), e.g. sds:lambda")
    p.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 0,3,5")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--reach-db", type=float, default=25.0, help="PSNR at which a run counts as reaching its scene")
    p.add_argument("--figure", type=Path, help="write a PNG grid of final renders (method × seed)")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("speed", help="per-step time breakdown of the loop")
    p.add_argument("--backend", choices=["exact", "sd-random"], default="exact")
    p.add_argument("--method", default="cfd")
    p.add_argument("--res", type=int, default=32, help="render resolution (SD: 512 for 64² latents)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-views", type=int, default=1)
    p.add_argument("--splats", type=int, default=5000, help="initial splats (sd-random)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="UNet/VAE dtype on CUDA (CPU always runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--densify", action="store_true",
                   help="densify as the preset does (every 10 %% of the run until half-way); "
                        "reports the splat-count curve")
    p.add_argument("--json", type=Path)
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
