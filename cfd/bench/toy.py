"""``bench toy``: CFD vs SDS vs ablations distilled from the exact prior over the
bundled objects, judged by PSNR against them and by diversity over seeds.
Results: docs/toy-results.md."""
from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

import torch

from ..framing import PSNR_VIEWS


def options(p: argparse.ArgumentParser) -> None:
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


def _method_spec(spec: str) -> tuple[str, str | None]:
    """"sds" → ("sds", None); "sds:lambda" → ("sds", "lambda") (a method with another weighting)."""
    method, _, weighting = spec.partition(":")
    return method, weighting or None


def _prior(args):
    """The exact prior of ``--scenes`` PLYs, or of the bundled ``--scene-set``."""
    from ..gaussians import load_ply
    from ..guidance.exact_prior import ExactPrior

    multiview = args.prior == "multiview"
    if args.scenes:
        return ExactPrior([load_ply(p) for p in args.scenes], names=[p.stem for p in args.scenes],
                          multiview=multiview)
    return ExactPrior.bundled(None if args.scene_set == "all" else args.scene_set.split(","),
                              originals=args.originals, multiview=multiview)


def _run(prior, spec: str, seed: int, args) -> tuple[dict, object]:
    """One distillation of method ``spec`` from ``seed``: its line of ``runs``, and its final scene."""
    from ..distill import DistillConfig, distill
    from ..pipeline import nearest_reference

    method, weighting = _method_spec(spec)
    config = DistillConfig(method=method, weighting=weighting, seed=seed, steps=args.steps, res=args.res,
                           batch_views=args.views, prompt=args.prompt, guidance_scale=args.guidance_scale,
                           **({} if args.t_knots is None else {"t_knots": args.t_knots}))
    t0 = time.perf_counter()
    scene = distill(prior, config)
    seconds = time.perf_counter() - t0
    near = nearest_reference(scene, prior, args.res)  # the project's one PSNR measure (cfd.framing)
    psnr = [near["psnr"][name] for name in prior.names]
    nearest = max(range(len(psnr)), key=psnr.__getitem__)
    name = prior.names[nearest]
    print(f"toy {spec:>10} seed {seed}: best {psnr[nearest]:5.1f} dB ({name}, "
          f"{near['nearest_family']}) {seconds:5.1f} s", file=sys.stderr)
    return {"method": spec, "seed": seed, "psnr": psnr, "nearest": nearest, "nearest_name": name,
            "nearest_family": near["nearest_family"], "seconds": round(seconds, 2)}, scene


def bench_toy(args) -> dict:
    """Per method: the nearest-variant PSNR, chimeras (runs below ``--reach-db`` to
    every variant), distinct variants and families reached, runs whose nearest
    variant the prompt selects, and the mean PSNR between two seeds' results (low:
    the seeds made different objects, not one object with noise)."""
    from ..request import parse_seeds

    prior = _prior(args)
    selected = set(prior.condition(args.prompt).positive)
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    runs, finals = [], {}
    for spec in methods:
        for seed in seeds:
            run, finals[spec, seed] = _run(prior, spec, seed, args)
            runs.append(run)
    summary = {spec: _toy_summary([r for r in runs if r["method"] == spec], [finals[spec, s] for s in seeds],
                                  prior, selected, args) for spec in methods}
    if args.figure:
        _toy_figure(finals, methods, seeds, args.figure)
    _print_table(summary, len(seeds), args.reach_db, args.prior, args.views)
    config = {"scenes": prior.names, "methods": methods, "seeds": seeds, "steps": args.steps, "res": args.res,
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


def _mean_pairwise_psnr(scenes: list, res: int) -> float | None:
    """Mean PSNR (dB) between the renders of every two of ``scenes`` over the PSNR
    views at ``res`` (None for fewer than two scenes)."""
    from ..cameras import psnr_cameras
    from ..render import render

    if len(scenes) < 2:
        return None
    with torch.no_grad():
        images = [render(s.detach(), psnr_cameras(res)).rgb for s in scenes]
    psnr = [float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-10)))
            for i, a in enumerate(images) for b in images[i + 1:]]
    return round(statistics.mean(psnr), 2)


def _print_table(summary: dict, n_seeds: int, reach_db: float, prior: str, views: int) -> None:
    """The summary as a Markdown table on stderr."""
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

    from ..distill import preview
    from ..export import to_uint8

    rows = [torch.cat([preview(finals[m, s], res) for s in seeds], dim=1) for m in methods]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(torch.cat(rows, dim=0)))
