"""``bench recipe``: one SD recipe distilled with tiny-sd and judged against the
bundled ground truth. Results: docs/tiny-sd.md,
"The methods, judged against ground truth" and "The recipe's ablations"."""
from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

from ..framing import PSNR_VIEWS
from .common import ASYMMETRIC_FAMILIES, FAMILY_PROMPTS, model_input_options, prepare_tiny_sd, prompt_list


def options(p: argparse.ArgumentParser) -> None:
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
    model_input_options(p)
    p.add_argument("--label", default="", help="the recipe's name in the printed table row")
    p.add_argument("--json", type=Path)


def bench_recipe(args) -> dict:
    """Per method over prompts × seeds: whether the nearest bundled variant is in
    the prompt's family, its PSNR (``nearest_reference``), the view agreement with
    it (``cfd.measures.view_agreement``; against Janus faces), the PSNR after the
    best turn about the vertical (``cfd.measures.turned_psnr``: how much of the
    distance is orientation), the detail ratio (``cfd.measures.detail_ratio``: fine
    detail against the variant's, < 1 blurred, > 1 noisy) and the distinct variants
    over seeds.
    The recipe: the backend's defaults with ``--set name=value`` request values,
    ``--config field=value`` DistillConfig fields, ``--camera-input
    guided|both|off``, ``--view-suffix off``."""
    from ..request import parse_request, parse_seeds

    overrides = dict(item.split("=", 1) for item in args.set)
    configured = {k: ast.literal_eval(v) for k, v in (i.split("=", 1) for i in args.config)}
    prompts = prompt_list(args.prompts)
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    guidance = prepare_tiny_sd(args, prompts[0])
    runs = []
    for method in methods:
        for prompt in prompts:
            for seed in seeds:
                request = parse_request(backend=args.backend, prompt=prompt, seed=seed, method=method, **overrides)
                runs.append(_run(guidance, request.config(**configured), method, prompt, seed))
    summary = {}
    for method in methods:
        summary[method] = _recipe_summary([r for r in runs if r["method"] == method], prompts)
        _print_row(args.label or "defaults", method, summary[method])
    config = {"backend": args.backend, "prompts": prompts, "methods": methods, "seeds": seeds, "set": overrides,
              "config": configured,
              "camera_input": args.camera_input, "camera_scale": guidance.camera_scale,
              "view_suffix": args.view_suffix, "label": args.label,
              "psnr": {"res": "the run's res", "views": PSNR_VIEWS}}
    return {"config": config, "runs": runs, "summary": summary}


def _run(guidance, config, method: str, prompt: str, seed: int) -> dict:
    """One distillation of ``config``, judged against its nearest bundled variant."""
    from ..distill import distill
    from ..measures import detail_ratio, turned_psnr, view_agreement
    from ..pipeline import nearest_reference

    refs = guidance.references
    t0 = time.perf_counter()
    scene = distill(guidance, config)
    seconds = time.perf_counter() - t0
    near = nearest_reference(scene, guidance, config.res)
    k = refs.names.index(near["nearest"])
    family = refs.vocabulary.family(k)
    agreement = view_agreement(scene, refs.scenes[k], config.res)
    turned, turn = turned_psnr(scene, refs.scenes[k], config.res)
    detail = detail_ratio(scene, refs.scenes[k], config.res)
    print(f"recipe {method:>8} {prompt!r} seed {seed}: {near['nearest_psnr']:5.2f} dB "
          f"({near['nearest']}, {family}) agreement {agreement:.2f} {seconds:5.1f} s", file=sys.stderr)
    return {"method": method, "prompt": prompt, "seed": seed, "nearest": near["nearest"],
            "family": family, "in_family": k in set(refs.condition(prompt).positive),
            "psnr": near["nearest_psnr"], "view_agreement": agreement,
            "psnr_best_turn": round(turned, 2), "best_turn_deg": turn,
            "detail": round(detail, 3),
            "seconds": round(seconds, 2)}


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


def _print_row(label: str, method: str, s: dict) -> None:
    """One method's summary as a Markdown table row on stderr."""
    print(f"| {label} | {method} | {s['in_family']}/{s['runs']} | {s['mean_psnr']:.2f} | "
          f"{s['view_agreement_asymmetric']} | {s['distinct_variants_per_prompt']} | {s['mean_detail']:.2f} | "
          f"{s['mean_seconds']:.1f} |", file=sys.stderr)
