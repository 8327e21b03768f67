"""Benchmarks, JSON out: ``python -m cfd.bench render|noise|toy|speed --json OUT``.

Timings are medians over repeats, measured in one process; compare ratios from
one run, and quote absolute times only from a GPU.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .cameras import orbit_camera
from .framing import FOV_DEG, PSNR_VIEWS, RADIUS
from .gaussians import init_scene
from .guidance.stable_diffusion import CAMERA_INPUTS


def _timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
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


def _render_ms(render_all, repeats: int) -> tuple[float, float]:
    """Median ms of ``render_all()`` (a list of RenderOutputs): without grad, and
    with the backward of Σ (rgb + depth) over its outputs."""
    def forward():
        with torch.no_grad():
            render_all()

    def forward_backward():
        sum(out.rgb.sum() + out.depth.sum() for out in render_all()).backward()

    return _timeit(forward, repeats), _timeit(forward_backward, repeats)


def bench_render(args) -> dict:
    """One camera at several sizes; and the views of a step rendered in one
    batched call vs a loop of single-camera calls (speedup = loop / batched)."""
    from .render import render

    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device.replace("auto", "cpu")
    results = []
    for n, res in [(5_000, 64), (20_000, 128), (20_000, 256), (50_000, 128)]:
        scene = bench_scene(n).to(device).requires_grad_(True)
        cam = orbit_camera(30, 20, RADIUS, FOV_DEG, res, res)
        fwd, both = _render_ms(lambda: [render(scene, cam)], args.repeats)
        row = {"splats": n, "res": res, "forward_ms": round(fwd, 1), "backward_ms": round(both - fwd, 1),
               "forward_backward_ms": round(both, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}
        if device == "cuda":
            row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        results.append(row)
        print(f"render {n:>6} splats {res:>4}²: fwd {fwd:7.1f} ms  fwd+bwd {both:7.1f} ms", file=sys.stderr)
    batches = []
    for n, res, views in [(2_000, 64, 4), (5_000, 64, 8)]:   # the exact prior's default step; 8 views
        scene = bench_scene(n).to(device).requires_grad_(True)
        cams = [orbit_camera(30 + 360 * i / views, 20, RADIUS, FOV_DEG, res, res) for i in range(views)]
        fwd, both = _render_ms(lambda: [render(scene, cams)], args.repeats)
        loop_fwd, loop_both = _render_ms(lambda: [render(scene, cam) for cam in cams], args.repeats)
        batches.append({"splats": n, "res": res, "views": views,
                        "batched_forward_ms": round(fwd, 1), "loop_forward_ms": round(loop_fwd, 1),
                        "forward_speedup": round(loop_fwd / fwd, 2),
                        "batched_forward_backward_ms": round(both, 1), "loop_forward_backward_ms": round(loop_both, 1),
                        "forward_backward_speedup": round(loop_both / both, 2)})
        print(f"render {n:>6} splats {res:>4}² × {views} views: batched fwd {fwd:7.1f} / fwd+bwd {both:7.1f} ms, "
              f"loop {loop_fwd:7.1f} / {loop_both:7.1f} ms", file=sys.stderr)
    target = next(r for r in results if r["splats"] == 20_000 and r["res"] == 128)
    parity = _gsplat_parity() if torch.cuda.is_available() else None
    return {"device": device, "runs": results, "batches": batches, "gsplat_parity": parity,
            "target": {"what": "forward+backward, 20k splats, 128², CPU", "limit_ms": 400,
                       "measured_ms": target["forward_backward_ms"],
                       "met": device != "cpu" or target["forward_backward_ms"] <= 400}}


def _method_spec(spec: str) -> tuple[str, str | None]:
    """"sds" → ("sds", None); "sds:lambda" → ("sds", "lambda") (a method with another weighting)."""
    method, _, weighting = spec.partition(":")
    return method, weighting or None


def bench_toy(args) -> dict:
    """CFD vs SDS vs ablations on the exact prior (README "Benchmarks"): per method
    the nearest-variant PSNR, chimeras (runs below ``--reach-db`` to every
    variant), distinct variants and families reached, runs whose nearest variant
    the prompt selects, and the mean PSNR between two seeds' results (low: the
    seeds made different objects, not one object with noise)."""
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
                                   originals=args.originals, multiview=multiview)
    names = prior.names
    selected = set(prior.condition(args.prompt).positive)
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    runs, finals = [], {}
    for spec in methods:
        method, weighting = _method_spec(spec)
        for seed in seeds:
            config = DistillConfig(method=method, weighting=weighting, seed=seed, steps=args.steps, res=args.res,
                                   batch_views=args.views, prompt=args.prompt,
                                   guidance_scale=args.guidance_scale,
                                   **({} if args.t_knots is None else {"t_knots": args.t_knots}))
            t0 = time.perf_counter()
            scene = distill(prior, config)
            seconds = time.perf_counter() - t0
            near = nearest_reference(scene, prior, args.res)  # the project's one PSNR measure (cfd.framing)
            psnr = [near["psnr"][name] for name in prior.names]
            nearest = max(range(len(psnr)), key=psnr.__getitem__)
            runs.append({"method": spec, "seed": seed, "psnr": psnr, "nearest": nearest,
                         "nearest_name": names[nearest], "nearest_family": near["nearest_family"],
                         "seconds": round(seconds, 2)})
            finals[spec, seed] = scene
            print(f"toy {spec:>10} seed {seed}: best {psnr[nearest]:5.1f} dB ({names[nearest]}, "
                  f"{near['nearest_family']}) {seconds:5.1f} s", file=sys.stderr)
    summary = {spec: _toy_summary([r for r in runs if r["method"] == spec], [finals[spec, s] for s in seeds],
                                  prior, selected, args) for spec in methods}
    if args.figure:
        _toy_figure(finals, methods, seeds, args.figure)
    _print_table(summary, len(seeds), args.reach_db, args.prior, args.views)
    config = {"scenes": names, "methods": methods, "seeds": seeds, "steps": args.steps, "res": args.res,
              "reach_db": args.reach_db, "prior": args.prior, "views": args.views, "prompt": args.prompt,
              "guidance_scale": args.guidance_scale, "t_knots": args.t_knots,
              "psnr": {"res": args.res, "views": PSNR_VIEWS}}
    return {"config": config, "runs": runs, "summary": summary}


def _toy_summary(rs: list[dict], scenes: list, prior, selected: set, args) -> dict:
    """One method's line of ``bench_toy``: its runs ``rs`` and their final ``scenes``."""
    best = [max(r["psnr"]) for r in rs]
    reached = [r["nearest"] for r in rs if max(r["psnr"]) >= args.reach_db]
    counts = torch.bincount(torch.tensor([r["nearest"] for r in rs]), minlength=len(prior.names)).double()
    p = counts[counts > 0] / counts.sum()
    return {"mean_best_psnr": round(statistics.mean(best), 2),
            "distinct_modes": len(set(reached)),
            "distinct_families": len({prior.vocabulary.family(k) for k in reached}),
            "in_prompt": sum(r["nearest"] in selected for r in rs),
            "mean_pairwise_psnr": _mean_pairwise_psnr(scenes, args.res),
            "chimeras": len(rs) - len(reached),
            "mode_entropy": round(abs(float(-(p * p.log2()).sum())), 3),
            "mean_seconds": round(statistics.mean(r["seconds"] for r in rs), 2)}


ASYMMETRIC_FAMILIES = ("rubber duck", "rocket", "snowman")   # a front and a back that differ: Janus shows


def bench_recipe(args) -> dict:
    """One SD recipe on tiny-sd judged against the bundled ground truth (README
    "tiny-sd"): per method over prompts × seeds, whether the nearest bundled
    variant is in the prompt's family, its PSNR (``nearest_reference``), the view
    agreement with it (``cfd.measures.view_agreement``; against Janus faces), the
    PSNR after the best turn about the vertical (``cfd.measures.turned_psnr``: how
    much of the distance is orientation), the detail ratio
    (``cfd.measures.detail_ratio``: fine detail against the variant's, < 1
    blurred, > 1 noisy) and the distinct variants over seeds.
    The recipe: the backend's defaults with ``--set name=value`` request values,
    ``--config field=value`` DistillConfig fields, ``--camera-input
    guided|both|off``, ``--view-suffix off``."""
    from .distill import distill
    from .measures import detail_ratio, turned_psnr, view_agreement
    from .pipeline import nearest_reference
    from .backends import prepare
    from .request import parse_request, parse_seeds

    overrides = dict(item.split("=", 1) for item in args.set)
    configured = {k: ast.literal_eval(v) for k, v in (i.split("=", 1) for i in args.config)}
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    guidance = prepare(parse_request(backend=args.backend, prompt=prompts[0]))
    _set_model_inputs(guidance, args)
    refs = guidance.references
    runs = []
    for method in methods:
        for prompt in prompts:
            family_of_prompt = set(refs.condition(prompt).positive)
            for seed in seeds:
                request = parse_request(backend=args.backend, prompt=prompt, seed=seed, method=method, **overrides)
                config = request.config(**configured)
                t0 = time.perf_counter()
                scene = distill(guidance, config)
                seconds = time.perf_counter() - t0
                near = nearest_reference(scene, guidance, config.res)
                k = refs.names.index(near["nearest"])
                family = refs.vocabulary.family(k)
                agreement = view_agreement(scene, refs.scenes[k], config.res)
                turned, turn = turned_psnr(scene, refs.scenes[k], config.res)
                detail = detail_ratio(scene, refs.scenes[k], config.res)
                runs.append({"method": method, "prompt": prompt, "seed": seed, "nearest": near["nearest"],
                             "family": family, "in_family": k in family_of_prompt,
                             "psnr": near["nearest_psnr"], "view_agreement": agreement,
                             "psnr_best_turn": round(turned, 2), "best_turn_deg": turn,
                             "detail": round(detail, 3),
                             "seconds": round(seconds, 2)})
                print(f"recipe {method:>8} {prompt!r} seed {seed}: {near['nearest_psnr']:5.2f} dB "
                      f"({near['nearest']}, {family}) agreement {agreement:.2f} {seconds:5.1f} s", file=sys.stderr)
    summary = {}
    for method in methods:
        summary[method] = _recipe_summary([r for r in runs if r["method"] == method], prompts)
        print(f"| {args.label or 'defaults'} | {method} | {summary[method]['in_family']}/{summary[method]['runs']} | "
              f"{summary[method]['mean_psnr']:.2f} | {summary[method]['view_agreement_asymmetric']} | "
              f"{summary[method]['distinct_variants_per_prompt']} | {summary[method]['mean_detail']:.2f} | "
              f"{summary[method]['mean_seconds']:.1f} |",
              file=sys.stderr)
    config = {"backend": args.backend, "prompts": prompts, "methods": methods, "seeds": seeds, "set": overrides,
              "config": configured,
              "camera_input": args.camera_input, "camera_scale": guidance.camera_scale,
              "view_suffix": args.view_suffix, "label": args.label,
              "psnr": {"res": "the run's res", "views": PSNR_VIEWS}}
    return {"config": config, "runs": runs, "summary": summary}


def bench_samples(args) -> dict:
    """tiny-sd's own 2D images judged against the bundled ground truth (README
    "tiny-sd"), the bound on what distillation can inherit: DDIM samples of each
    prompt from orbit cameras, each classified by its best-matching reference view
    (every bundled variant × ``REFERENCE_AZIMUTHS`` orbit views): in the prompt's
    family, its PSNR, its detail ratio against that view
    (``cfd.measures.high_frequency_ratio``), and whether that view faces the
    camera's way (``cfd.measures.facing``; the asymmetric families' samples in
    their family)."""
    from .backends import prepare
    from .cameras import orbit_cameras
    from .measures import REFERENCE_AZIMUTHS, facing, high_frequency_ratio, nearest_views
    from .render import render
    from .request import parse_request

    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    guidance = prepare(parse_request(backend=args.backend, prompt=prompts[0]))
    _set_model_inputs(guidance, args)
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
    asym = [r["facing"] for r in rows if r["family"] in ASYMMETRIC_FAMILIES and r["in_family"]]
    summary = {"in_family": sum(r["in_family"] for r in rows), "samples": len(rows),
               "mean_psnr": round(statistics.mean(r["psnr"] for r in rows), 2),
               "mean_detail": round(statistics.mean(r["detail"] for r in rows), 3),
               "facing_asymmetric": round(statistics.mean(asym), 3) if asym else None}
    print(f"| {args.label or 'samples'} | {summary['in_family']}/{summary['samples']} | {summary['mean_psnr']:.2f} | "
          f"{summary['mean_detail']:.2f} | {summary['facing_asymmetric']} |", file=sys.stderr)
    config = {"backend": args.backend, "prompts": prompts, "samples": args.samples, "azimuths": args.azimuths,
              "res": res, "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
              "camera_input": args.camera_input, "camera_scale": guidance.camera_scale,
              "view_suffix": args.view_suffix, "label": args.label}
    return {"config": config, "samples": rows, "summary": summary}

def _recipe_summary(rs: list[dict], prompts: list[str]) -> dict:
    """One method's line of ``bench_recipe`` over its runs ``rs``."""
    asym = [r["view_agreement"] for r in rs if r["family"] in ASYMMETRIC_FAMILIES and r["in_family"]]
    return {"in_family": sum(r["in_family"] for r in rs), "runs": len(rs),
            "mean_psnr": round(statistics.mean(r["psnr"] for r in rs), 2),
            "mean_psnr_best_turn": round(statistics.mean(r["psnr_best_turn"] for r in rs), 2),
            "mean_detail": round(statistics.mean(r["detail"] for r in rs), 3),
            "view_agreement": round(statistics.mean(r["view_agreement"] for r in rs), 3),
            "view_agreement_asymmetric": round(statistics.mean(asym), 3) if asym else None,
            "distinct_variants_per_prompt": round(statistics.mean(
                len({r["nearest"] for r in rs if r["prompt"] == p}) for p in prompts), 2),
            "mean_seconds": round(statistics.mean(r["seconds"] for r in rs), 2)}


def _mean_pairwise_psnr(scenes: list, res: int) -> float | None:
    """Mean PSNR (dB) between the renders of every two of ``scenes`` over the PSNR
    views at ``res`` (None for fewer than two scenes)."""
    from .cameras import psnr_cameras
    from .render import render

    if len(scenes) < 2:
        return None
    with torch.no_grad():
        images = [render(s.detach(), psnr_cameras(res)).rgb for s in scenes]
    psnr = [float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-10)))
            for i, a in enumerate(images) for b in images[i + 1:]]
    return round(statistics.mean(psnr), 2)


def _print_table(summary: dict, n_seeds: int, reach_db: float, prior: str, views: int) -> None:
    print(f"\n| prior, views/step | method | mean nearest-variant PSNR (dB) | chimeras (<{reach_db:g} dB) "
          f"/ {n_seeds} | distinct variants (families) | in the prompt's set | PSNR between seeds (dB) | "
          f"mode entropy (bits) | s / run |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for method, s in summary.items():
        print(f"| {prior}, {views} | {method} | {s['mean_best_psnr']:.1f} | {s['chimeras']} | {s['distinct_modes']} "
              f"({s['distinct_families']}) | {s['in_prompt']}/{n_seeds} | {s['mean_pairwise_psnr']} | "
              f"{s['mode_entropy']:.2f} | {s['mean_seconds']:.1f} |", file=sys.stderr)


def _toy_figure(finals: dict, methods: list[str], seeds: list[int], path: Path, res: int = 96) -> None:
    """PNG grid: one row per method, one column per seed, final renders."""
    import imageio.v3 as iio

    from .distill import preview
    from .export import to_uint8

    rows = [torch.cat([preview(finals[m, s], res) for s in seeds], dim=1) for m in methods]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(torch.cat(rows, dim=0)))


def shell_scene(radius: float = 0.5, centre=(0.0, 0.0, 0.0), n: int = 6000, seed: int = 0):
    """``n`` opaque splats spread uniformly at random on a sphere of ``radius``
    around ``centre``."""
    from .gaussians import make_scene

    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    spacing = radius * math.sqrt(4 * math.pi / n)
    return make_scene(radius * d + torch.tensor(centre), torch.full((n, 3), 0.7 * spacing),
                      torch.rand(n, 3, generator=g), torch.full((n,), 0.9))


def torus_scene(major: float = 0.45, minor: float = 0.18, tilt_deg: float = 60, n: int = 8000, seed: int = 0):
    """``n`` opaque splats on a torus around the origin (not star-shaped about its
    centre), its axis tilted ``tilt_deg`` from +y towards the viewer."""
    from .gaussians import make_scene

    g = torch.Generator().manual_seed(seed)
    theta, phi = 2 * math.pi * torch.rand(2, n, generator=g)
    ring = major + minor * torch.cos(phi)
    x, y, z = ring * torch.cos(theta), minor * torch.sin(phi), ring * torch.sin(theta)
    c, s = math.cos(math.radians(tilt_deg)), math.sin(math.radians(tilt_deg))
    means = torch.stack([x, c * y - s * z, s * y + c * z], -1)
    spacing = math.sqrt(4 * math.pi ** 2 * (major + minor) * minor / n)  # at the outer equator, the sparsest
    return make_scene(means, torch.full((n, 3), 0.7 * spacing), torch.rand(n, 3, generator=g), torch.full((n,), 0.9))


def blob_scene(n: int = 5000, seed: int = 3, scale: float = 1.0, centre=(0.0, 0.0, 0.0)):
    """A fuzzy blob: ``n`` anisotropic splats of random size and orientation in a
    ball of radius 0.6·``scale`` around ``centre``."""
    scene = init_scene(n, seed=seed, radius=0.6, opacity=0.8)
    g = torch.Generator().manual_seed(seed)
    scene.log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.04 + 0.01) + math.log(scale)
    scene.quats = torch.randn(n, 4, generator=g)
    scene.means = scene.means * scale + torch.tensor(centre)
    return scene


def noise_cases() -> dict:
    """The noise benchmark's objects: centred sphere shells of radius 0.2–0.8, an
    off-centre shell and blob, a torus and a fuzzy blob."""
    cases = {f"shell r={r}": shell_scene(r) for r in (0.2, 0.35, 0.5, 0.65, 0.8)}
    cases["off-centre shell"] = shell_scene(0.3, centre=(0.4, 0.2, 0.1))
    cases["off-centre blob"] = blob_scene(scale=0.6, centre=(0.45, 0.1, 0.3))
    cases["torus"] = torus_scene()
    cases["blob"] = blob_scene()
    return cases


# the first view of each cross-view pair, (azimuth, elevation); the second is 5° further in azimuth
NOISE_VIEW_PAIRS = [(30 * k, (10, 30, -5, 20, 40, 0)[k % 6]) for k in range(12)]


def bench_noise(args) -> dict:
    """Per-view statistics, cross-view consistency and cost of the consistent noise."""
    from scipy import stats

    from .noise import (CELL_METHODS, FixedImageNoise, IIDNoise, cross_view_correlation, default_cell_size,
                        noise_from_surface, scene_centre)
    from .render import render

    res, s = args.res, args.supersample
    pairs = [(orbit_camera(az, el, RADIUS, FOV_DEG, res, res), orbit_camera(az + 5, el, RADIUS, FOV_DEG, res, res))
             for az, el in NOISE_VIEW_PAIRS]
    cell = default_cell_size(pairs[0][0])
    out = {"res": res, "supersample": s, "cell_size": cell, "view_pairs": NOISE_VIEW_PAIRS, "seeds": [0, 1],
           "cases": {}}
    for name, scene in noise_cases().items():
        centre = scene_centre(scene)
        views = [[(cam, render(scene, cam.scaled(s)), render(scene, cam)) for cam in pair] for pair in pairs]

        def noise(v, seed, method="shells"):
            cam, sup, _ = v
            return noise_from_surface(sup.depth, sup.alpha, cam.scaled(s), seed, supersample=s, cell_size=cell,
                                      centre=centre, method=method)

        def corr(na, nb, a, b):
            return cross_view_correlation(na, nb, a[0], b[0], a[2].depth, a[2].alpha, b[2].depth, b[2].alpha)[0]

        cross = {}
        for method in CELL_METHODS:  # mean over view pairs and seeds, and its standard error
            rs = [corr(noise(a, seed, method), noise(b, seed, method), a, b) for a, b in views for seed in (0, 1)]
            cross[method] = round(statistics.mean(rs), 4)
            cross[f"{method}_se"] = round(statistics.stdev(rs) / len(rs) ** 0.5, 4)
        cross["other_seed"] = round(statistics.mean(corr(noise(a, 0), noise(b, 1), a, b) for a, b in views), 4)
        iid, fixed = IIDNoise(0).sample(0, (2, 4, res, res)), FixedImageNoise(0).sample(0, (2, 4, res, res))
        cross["iid"], cross["fixed2d"] = (round(corr(x[0], x[1], *views[0]), 4) for x in (iid, fixed))
        n = noise(views[0][0], 0)
        flat = n.reshape(-1)

        def rho(x, y):
            return round(float(torch.corrcoef(torch.stack([x.reshape(-1), y.reshape(-1)]))[0, 1]), 4)

        view = {"mean": round(float(flat.mean()), 4), "var": round(float(flat.var()), 4),
                "neighbour_corr_x": rho(n[:, :, 1:], n[:, :, :-1]), "neighbour_corr_y": rho(n[:, 1:], n[:, :-1]),
                "channel_corr": rho(n[1:], n[:-1]),
                "ks_pvalue": round(float(stats.kstest(flat.numpy(), "norm").pvalue), 4)}
        out["cases"][name] = {"cross_view_5deg": cross, "per_view": view}
        print(f"noise {name}: {cross} {view}", file=sys.stderr)

    out["gpu"] = _noise_gpu_check() if torch.cuda.is_available() else None
    out["cost"] = _noise_cost(args.repeats)
    return out


def _noise_cost(repeats: int) -> dict:
    """One 64×64×4 noise draw at 8× supersampling vs one 512² render + backward
    (20k splats), on the GPU if any."""
    from .noise import noise_from_surface
    from .render import render

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scene = bench_scene(20_000).to(device).requires_grad_(True)
    cam = orbit_camera(30, 20, RADIUS, FOV_DEG, 512, 512)
    with torch.no_grad():
        surf = render(scene, cam)
    draw = _timeit(lambda: noise_from_surface(surf.depth, surf.alpha, cam, 0, supersample=8), repeats)

    def render_backward():
        o = render(scene, cam)
        o.rgb.sum().backward()

    step = _timeit(render_backward, max(1, repeats // 3))
    print(f"noise cost: {draw:.1f} ms vs render+backward {step:.1f} ms ({100 * draw / step:.1f} %)", file=sys.stderr)
    return {"device": device, "noise_64x64x4_ss8_ms": round(draw, 1), "render_backward_512_20k_ms": round(step, 1),
            "ratio": round(draw / step, 4), "limit": 0.05}


def _noise_gpu_check() -> dict:
    """On CUDA: two identical draws (ODE and SDE) are equal bit for bit, and a
    draw makes no host sync (``torch.cuda.set_sync_debug_mode("error")``)."""
    from .noise import noise_from_surface
    from .render import render

    cam = orbit_camera(30, 20, RADIUS, FOV_DEG, 512, 512)
    with torch.no_grad():
        surf = render(shell_scene().to("cuda"), cam)
    out = {}
    for mode, gamma, step in (("ode", 0.0, 0), ("sde", 1e-4, 500)):
        def draw():
            return noise_from_surface(surf.depth, surf.alpha, cam, 0, supersample=8, step=step, gamma=gamma)

        first = draw()
        torch.cuda.set_sync_debug_mode("error")
        try:
            again, sync_free = draw(), True
        except RuntimeError:
            again, sync_free = None, False
        finally:
            torch.cuda.set_sync_debug_mode("default")
        again = draw() if again is None else again
        out[mode] = {"bitwise_equal": bool(torch.equal(first, again)), "sync_free": sync_free}
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


def _exact_prior(objects: int | None, **kwargs):
    """The exact prior over every bundled variant, or over the first ``objects`` of
    them (cycling through them again past their number: a cost measure)."""
    from .guidance.exact_prior import ExactPrior

    prior = ExactPrior.bundled(**kwargs)
    if objects is None:
        return prior
    pick = [k % len(prior.scenes) for k in range(objects)]
    return ExactPrior([prior.scenes[k] for k in pick], names=[f"{prior.names[k]} {i}" for i, k in enumerate(pick)],
                      **kwargs)


def _render_references(prior, config) -> None:
    """Render the references a run of ``config`` weighs from every view of its pool
    (as the app's warm-up does), so the timed steps measure the posterior alone."""
    from .cameras import pool_cameras

    size = config.res // prior.latent_factor
    cond = prior.condition(config.prompt, config.negative_prompt, config.guidance_scale)
    prior.reference_images(pool_cameras(config.res, config.res, config.cameras), size, size,
                           cond.support(len(prior.scenes)))


def _speed_setup(args, device: str):
    """(guidance, config) of ``bench_speed``: the exact prior over ``--objects``
    (references rendered ahead), or SD-2.1's architecture with random weights."""
    from .distill import DistillConfig

    if args.backend == "exact":
        guidance = _exact_prior(args.objects, multiview=args.batch_views > 1).to(device)
        config = DistillConfig(method=args.method, steps=args.steps + args.warmup, res=args.res,
                               batch_views=args.batch_views, prompt=args.prompt, guidance_scale=args.guidance_scale,
                               densify_every=max(1, (args.steps + args.warmup) // 10) if args.densify else 0)
        _render_references(guidance, config)
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
    return guidance, config


def bench_speed(args) -> dict:
    """Per-step time of the whole loop, broken down by phase."""
    from .distill import distill

    device = "cuda" if torch.cuda.is_available() else "cpu"
    guidance, config = _speed_setup(args, device)
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
    if args.backend == "exact":
        result.update(objects=len(guidance.scenes), prompt=args.prompt, guidance_scale=args.guidance_scale,
                      reference_cache_mb=round(guidance.cache_size() / 2**20, 1),
                      weighed=len(guidance.condition(args.prompt, None, args.guidance_scale).support(
                          len(guidance.scenes))))
    else:
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


COMMANDS = {"render": bench_render, "noise": bench_noise, "toy": bench_toy, "speed": bench_speed,
            "recipe": bench_recipe, "samples": bench_samples}
FAMILY_PROMPTS = ("a snowman,a mushroom,a rubber duck,a toy rocket,a cactus in a pot,a small tree in a pot,"
                  "sunflowers in a pot,tulips in a pot")


def _toy_options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench toy``."""
    p.add_argument("--scenes", type=Path, nargs="*", help="reference PLYs (default: --scene-set)")
    p.add_argument("--scene-set", default="toys", help="bundled set id(s), comma-separated, or 'all'")
    p.add_argument("--originals", action="store_true",
                   help="only the first variant of each family (the objects before they had variants)")
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
    p.add_argument("--t-knots", type=ast.literal_eval, default=None,
                   help="the annealed methods' t knots ((progress, t), ...) as a Python literal, e.g. "
                        "'((0, 980), (0.2, 980), (1, 20))' (default: DistillConfig's)")
    p.add_argument("--reach-db", type=float, default=25.0, help="PSNR at which a run counts as reaching its scene")
    p.add_argument("--figure", type=Path, help="write a PNG grid of final renders (method × seed)")
    p.add_argument("--json", type=Path)


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench recipe``."""
    p.add_argument("--backend", choices=["tiny-sd"], default="tiny-sd")
    p.add_argument("--prompts", default=FAMILY_PROMPTS, help="comma-separated (default: the 8 family captions)")
    p.add_argument("--methods", default="cfd,sds")
    p.add_argument("--seeds", default="0-1")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a request value, e.g. guidance_scale=30, t_end=212, views=1, lr_scale=0.5")
    p.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                   help="a DistillConfig field beyond the request's (a Python literal), e.g. "
                        "loss_space='pixel', lr_sh=0.01, t_knots=((0,980),(1,20))")
    _model_input_options(p)
    p.add_argument("--label", default="", help="the recipe's name in the printed table row")
    p.add_argument("--json", type=Path)


def _samples_options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench samples``."""
    p.add_argument("--backend", choices=["tiny-sd"], default="tiny-sd")
    p.add_argument("--prompts", default=FAMILY_PROMPTS, help="comma-separated (default: the 8 family captions)")
    p.add_argument("--samples", type=int, default=16, help="per prompt, cycling over --azimuths orbit cameras")
    p.add_argument("--azimuths", type=int, default=8, help="orbit cameras (azimuth 0, 360/n, …)")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    _model_input_options(p)
    p.add_argument("--label", default="", help="the row's name in the printed table")
    p.add_argument("--json", type=Path)


def _model_input_options(p: argparse.ArgumentParser) -> None:
    """What the model is told of the view: ``--camera-input``, ``--camera-scale``, ``--view-suffix``."""
    p.add_argument("--camera-input", choices=CAMERA_INPUTS, default="guided",
                   help="what the UNet is told of the camera per CFG branch (see CAMERA_INPUTS)")
    p.add_argument("--camera-scale", type=_camera_scale, default="backend",
                   help="the camera's own CFG scale with --camera-input guided, or 'cfg' (the CFG scale); "
                        "default: the backend's")
    p.add_argument("--view-suffix", choices=["on", "off"], default="on")


def _camera_scale(text: str):
    """``--camera-scale``: a number, 'cfg' (None: the CFG scale) or 'backend' (keep it)."""
    return text if text == "backend" else None if text == "cfg" else float(text)


def _set_model_inputs(guidance, args) -> None:
    """What ``_model_input_options`` asked of the view, on ``guidance``."""
    guidance.camera_input, guidance.view_dependent = args.camera_input, args.view_suffix == "on"
    if args.camera_scale != "backend":
        guidance.camera_scale = args.camera_scale


def _speed_options(p: argparse.ArgumentParser) -> None:
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


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cfd.bench``: one subcommand per benchmark."""
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
    _toy_options(sub.add_parser("toy", help="CFD vs SDS vs ablations on the exact prior (PSNR, diversity, time)"))
    _recipe_options(sub.add_parser("recipe", help="an SD recipe on tiny-sd against the bundled ground truth"))
    _samples_options(sub.add_parser("samples", help="tiny-sd's own 2D samples against the bundled ground truth"))
    _speed_options(sub.add_parser("speed", help="per-step time breakdown of the loop"))
    return parser


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    result = {"command": args.command, "environment": _environment(), **COMMANDS[args.command](args)}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
