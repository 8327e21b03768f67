"""``bench noise``: the consistent noise's per-view statistics, its cross-view
correlation over test objects, its cost against a render, and on CUDA its
determinism and host-sync freedom. Results: docs/noise.md, "Cross-view
correlation and cost". The test objects (``shell_scene``, ``torus_scene``,
``blob_scene``) serve the tests too."""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from ..cameras import orbit_camera
from ..framing import FOV_DEG, RADIUS
from ..gaussians import init_scene
from .common import bench_scene, timeit

# the first view of each cross-view pair, (azimuth, elevation); the second is 5° further in azimuth
NOISE_VIEW_PAIRS = [(30 * k, (10, 30, -5, 20, 40, 0)[k % 6]) for k in range(12)]
SEEDS = (0, 1)


def options(p: argparse.ArgumentParser) -> None:
    """The options of ``bench noise``."""
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--supersample", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)


def shell_scene(radius: float = 0.5, centre=(0.0, 0.0, 0.0), n: int = 6000, seed: int = 0):
    """``n`` opaque splats spread uniformly at random on a sphere of ``radius``
    around ``centre``."""
    from ..gaussians import make_scene

    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    spacing = radius * math.sqrt(4 * math.pi / n)
    return make_scene(radius * d + torch.tensor(centre), torch.full((n, 3), 0.7 * spacing),
                      torch.rand(n, 3, generator=g), torch.full((n,), 0.9))


def torus_scene(major: float = 0.45, minor: float = 0.18, tilt_deg: float = 60, n: int = 8000, seed: int = 0):
    """``n`` opaque splats on a torus around the origin (not star-shaped about its
    centre), its axis tilted ``tilt_deg`` from +y towards the viewer."""
    from ..gaussians import make_scene

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


def bench_noise(args) -> dict:
    """Per-view statistics, cross-view consistency and cost of the consistent noise."""
    from ..noise import default_cell_size

    res, s = args.res, args.supersample
    pairs = [(orbit_camera(az, el, RADIUS, FOV_DEG, res, res), orbit_camera(az + 5, el, RADIUS, FOV_DEG, res, res))
             for az, el in NOISE_VIEW_PAIRS]
    cell = default_cell_size(pairs[0][0])
    out = {"res": res, "supersample": s, "cell_size": cell, "view_pairs": NOISE_VIEW_PAIRS, "seeds": list(SEEDS),
           "cases": {}}
    for name, scene in noise_cases().items():
        cross, view = _noise_case(scene, pairs, res, s, cell)
        out["cases"][name] = {"cross_view_5deg": cross, "per_view": view}
        print(f"noise {name}: {cross} {view}", file=sys.stderr)
    out["gpu"] = _noise_gpu_check() if torch.cuda.is_available() else None
    out["cost"] = _noise_cost(args.repeats)
    return out


def _noise_case(scene, pairs: list, res: int, s: int, cell: float) -> tuple[dict, dict]:
    """One object's cross-view correlations (per cell method, another seed, the
    baselines) and the statistics of one view's noise."""
    from scipy import stats

    from ..noise import CELL_METHODS, FixedImageNoise, IIDNoise, cross_view_correlation, noise_from_surface, \
        scene_centre
    from ..render import render

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
        rs = [corr(noise(a, seed, method), noise(b, seed, method), a, b) for a, b in views for seed in SEEDS]
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
    return cross, view


def _noise_cost(repeats: int) -> dict:
    """One 64×64×4 noise draw at 8× supersampling vs one 512² render + backward
    (20k splats), on the GPU if any."""
    from ..noise import noise_from_surface
    from ..render import render

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scene = bench_scene(20_000).to(device).requires_grad_(True)
    cam = orbit_camera(30, 20, RADIUS, FOV_DEG, 512, 512)
    with torch.no_grad():
        surf = render(scene, cam)
    draw = timeit(lambda: noise_from_surface(surf.depth, surf.alpha, cam, 0, supersample=8), repeats)

    def render_backward():
        o = render(scene, cam)
        o.rgb.sum().backward()

    step = timeit(render_backward, max(1, repeats // 3))
    print(f"noise cost: {draw:.1f} ms vs render+backward {step:.1f} ms ({100 * draw / step:.1f} %)", file=sys.stderr)
    return {"device": device, "noise_64x64x4_ss8_ms": round(draw, 1), "render_backward_512_20k_ms": round(step, 1),
            "ratio": round(draw / step, 4), "limit": 0.05}


def _noise_gpu_check() -> dict:
    """On CUDA: two identical draws (ODE and SDE) are equal bit for bit, and a
    draw makes no host sync (``torch.cuda.set_sync_debug_mode("error")``)."""
    from ..noise import noise_from_surface
    from ..render import render

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
