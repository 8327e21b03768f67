"""A prior whose objects share one shape and differ only in a colour pattern.

Four spheres of flat splats, two colours laid out in horizontal bands, meridian
segments, front/back halves or octants. With a per-view posterior every view of
a step may pick its own pattern (chimeras); a joint multi-view posterior cannot.
``python tests/patterns.py DIR`` writes them as PLYs for ``cfd.bench toy --scenes``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from cfd.gaussians import GaussianScene, make_scene, save_ply

PATTERNS = {
    "bands": lambda d: torch.floor(d[:, 1] * 3) % 2,
    "meridians": lambda d: torch.floor((torch.atan2(d[:, 0], d[:, 2]) / math.pi + 1) * 3) % 2,
    "halves": lambda d: (d[:, 2] > 0).float(),
    "octants": lambda d: ((d[:, 0] > 0) ^ (d[:, 1] > 0) ^ (d[:, 2] > 0)).float(),
}


def _quat_z_to(normals: torch.Tensor) -> torch.Tensor:
    """[N,4] (w,x,y,z) rotations taking +z to each unit normal (none is exactly −z here)."""
    nx, ny, nz = normals.unbind(1)
    return torch.nn.functional.normalize(torch.stack([1 + nz, -ny, nx, torch.zeros_like(nz)], dim=1), dim=1)


def fibonacci_sphere(n: int, radius: float) -> torch.Tensor:
    """[n, 3] float32 points spread evenly over a sphere of ``radius`` around the origin."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    r = torch.sqrt(1 - y * y)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return (radius * torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], -1)).float()


def pattern_variants(n: int = 2000, radius: float = 0.6) -> dict[str, GaussianScene]:
    """{pattern name: sphere scene}: the same splats (a Fibonacci sphere), other colours."""
    d = fibonacci_sphere(n, 1.0)
    spacing = radius * math.sqrt(4 * math.pi / n)
    scales = torch.tensor([0.85, 0.85, 0.4]).mul(spacing).expand(n, 3)
    red, blue = torch.tensor([0.9, 0.2, 0.15]), torch.tensor([0.15, 0.35, 0.9])
    out = {}
    for name, pattern in PATTERNS.items():
        m = pattern(d)[:, None]
        out[name] = make_scene(radius * d, scales, red * m + blue * (1 - m), torch.full((n,), 0.9), _quat_z_to(d))
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, scene in pattern_variants().items():
        save_ply(scene, folder / f"{name}.ply")
        print(folder / f"{name}.ply")
