"""Build the bundled splat scene sets procedurally (deterministic, seeded).

    python scripts/make_scenes.py                   # writes assets/scenes/<set>/*.ply + set.json
    python scripts/make_scenes.py --preview P.png   # also a 4-azimuth preview grid (128² tiles)

Every object is a union of primitives (ellipsoids and surfaces of revolution)
covered by flat, fairly opaque splats oriented along the surface normal, so
renders look solid. Objects are centred and scaled into a ball of radius
``FIT_RADIUS`` around the origin (+y up, front facing +z).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfd.gaussians import GaussianScene, make_scene, save_ply  # noqa: E402

SCENES_DIR = ROOT / "assets" / "scenes"
FIT_RADIUS = 0.8        # world units: every splat centre + 2σ lies inside this ball
SPLATS = 1800           # splats per object (before the per-primitive minimum)
MIN_SPLATS = 24         # per primitive, so tiny details (eyes, buttons) stay solid
OPACITY = 0.9
THICKNESS = 0.5         # normal-axis scale / tangent scale of a splat (flat-ish: crisp, few edge-on spikes)
INSIDE_MARGIN = 1e-3    # local units: points this close to another part's surface are kept
OVERSAMPLE = 4          # candidate points per kept splat before hidden ones are dropped
COVER = 0.85            # tangent scale / mean splat spacing
LIGHT = (0.3, 1.0, 0.45)  # baked light direction (world, towards the light)
AMBIENT = 0.55          # baked shading: colour · (AMBIENT + (1 − AMBIENT) · wrapped Lambert)

Color = tuple[float, float, float] | Callable[[Tensor], Tensor]  # fixed rgb or f(local points [N,3]) -> [N,3]


# ------------------------------------------------------------------ primitives

def rotation(axis: tuple[float, float, float], degrees: float) -> Tensor:
    """[3, 3] rotation by ``degrees`` about ``axis`` (right-handed)."""
    a = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cross = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return c * torch.eye(3, dtype=torch.float64) + s * cross + (1 - c) * torch.outer(a, a)


@dataclass
class Part:
    """A surface in local coordinates, placed by ``rotate`` then ``offset``."""

    color: Color
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate: Tensor | None = None  # [3, 3] local → world rotation

    def area(self) -> float:
        raise NotImplementedError

    def sample(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """n uniform surface points and unit normals, local frame, [n,3] float64 each."""
        raise NotImplementedError

    def inside(self, q: Tensor) -> Tensor:
        """[N] bool: local points q [N,3] strictly inside the closed surface."""
        raise NotImplementedError

    @property
    def rotation_matrix(self) -> Tensor:
        return torch.eye(3, dtype=torch.float64) if self.rotate is None else self.rotate

    def to_world(self, q: Tensor) -> Tensor:
        return q @ self.rotation_matrix.T + torch.tensor(self.offset, dtype=torch.float64)

    def contains(self, p: Tensor) -> Tensor:
        """[N] bool: world points p [N,3] inside this part."""
        return self.inside((p - torch.tensor(self.offset, dtype=torch.float64)) @ self.rotation_matrix)

    def colors(self, q: Tensor) -> Tensor:
        """[N,3] rgb of local points q [N,3]."""
        if callable(self.color):
            return self.color(q)
        return torch.tensor(self.color, dtype=torch.float64).expand(len(q), 3)


@dataclass
class Ellipsoid(Part):
    radii: tuple[float, float, float] = (0.1, 0.1, 0.1)

    def area(self) -> float:
        a, b, c = (r ** 1.6 for r in self.radii)  # Knud Thomsen's approximation (< 1.1 % error)
        return 4 * math.pi * ((a * b + a * c + b * c) / 3) ** (1 / 1.6)

    def sample(self, n, g):
        r = torch.tensor(self.radii, dtype=torch.float64)
        out = []
        while sum(len(u) for u in out) < n:  # area element ∝ ‖u / r‖ on the unit sphere u
            u = torch.nn.functional.normalize(torch.randn(4 * n, 3, generator=g, dtype=torch.float64), dim=1)
            keep = torch.rand(4 * n, generator=g, dtype=torch.float64) < (u / r).norm(dim=1) * r.min()
            out.append(u[keep])
        u = torch.cat(out)[:n]
        return u * r, torch.nn.functional.normalize(u / r, dim=1)

    def inside(self, q):
        return (q / torch.tensor(self.radii, dtype=torch.float64)).norm(dim=1) < 1 - INSIDE_MARGIN


@dataclass
class Lathe(Part):
    """Surface of revolution about the local y axis through the profile
    polyline ``[(radius, y), ...]``; a segment to radius 0 closes it with a disc."""

    profile: tuple[tuple[float, float], ...] = ((0.1, 0.0), (0.1, 0.1))

    def _segments(self) -> tuple[Tensor, Tensor, Tensor]:
        pts = torch.tensor(self.profile, dtype=torch.float64)
        p0, p1 = pts[:-1], pts[1:]
        areas = math.pi * (p0[:, 0] + p1[:, 0]) * (p1 - p0).norm(dim=1)
        return p0, p1, areas

    def area(self) -> float:
        return float(self._segments()[2].sum())

    def sample(self, n, g):
        p0, p1, areas = self._segments()
        seg = torch.multinomial(areas, n, replacement=True, generator=g)
        r0, r1 = p0[seg, 0], p1[seg, 0]
        u = torch.rand(n, generator=g, dtype=torch.float64)
        # position s along the segment with density ∝ radius r0 + (r1 − r0) s (inverse CDF)
        dr = r1 - r0
        flat = dr.abs() < 1e-9
        s = torch.where(flat, u, (torch.sqrt(r0 ** 2 + u * (r1 ** 2 - r0 ** 2)) - r0) / torch.where(flat, 1.0, dr))
        rad = r0 + dr * s
        y = p0[seg, 1] + (p1[seg, 1] - p0[seg, 1]) * s
        phi = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        d = p1[seg] - p0[seg]  # outward normal in the profile plane: (dy, −dr) for a polyline ordered bottom → top
        nr, ny = d[:, 1], -d[:, 0]
        points = torch.stack([rad * torch.sin(phi), y, rad * torch.cos(phi)], dim=1)
        normals = torch.stack([nr * torch.sin(phi), ny, nr * torch.cos(phi)], dim=1)
        return points, torch.nn.functional.normalize(normals, dim=1)

    def inside(self, q):
        """Assumes the profile's y never decreases (r(y) single-valued up to steps); an open
        profile counts as closed by the axis (a pot holds its inside)."""
        pts = torch.tensor(self.profile, dtype=torch.float64)
        ys = pts[:, 1].contiguous()
        y = q[:, 1].clamp(float(ys[0]), float(ys[-1]))
        i = torch.searchsorted(ys, y, right=True).clamp(1, len(ys) - 1)
        y0, y1, r0, r1 = ys[i - 1], ys[i], pts[i - 1, 0], pts[i, 0]
        radius = torch.where(y1 > y0, r0 + (r1 - r0) * (y - y0) / (y1 - y0).clamp_min(1e-12), torch.maximum(r0, r1))
        within = (q[:, 1] > ys[0] + INSIDE_MARGIN) & (q[:, 1] < ys[-1] - INSIDE_MARGIN)
        return within & (q[:, [0, 2]].norm(dim=1) < radius - INSIDE_MARGIN)


def sphere(center, radius, color) -> Ellipsoid:
    return Ellipsoid(color, tuple(center), radii=(radius,) * 3)


def dome(radius: float, height: float, y0: float, steps: int = 12) -> list[tuple[float, float]]:
    """Profile of a half-ellipse from the rim (radius, y0) up to the pole (0, y0 + height)."""
    return [(radius * math.cos(a), y0 + height * math.sin(a))
            for a in (0.5 * math.pi * k / steps for k in range(steps + 1))]


def capsule(radius: float, length: float, steps: int = 6) -> tuple[tuple[float, float], ...]:
    """Profile of a y-axis capsule from y = 0 to y = length."""
    bottom = [(radius * math.sin(a), radius - radius * math.cos(a))
              for a in (0.5 * math.pi * k / steps for k in range(steps + 1))]
    top = [(r, length - y) for r, y in reversed(bottom)]
    return tuple(bottom + top)


def spots(centers: list[tuple[float, float, float]], radius: float, base, spot) -> Callable[[Tensor], Tensor]:
    """Colour function: ``spot`` within ``radius`` of any of ``centers`` (local coords), else ``base``."""
    c = torch.tensor(centers, dtype=torch.float64)
    base_t, spot_t = torch.tensor(base, dtype=torch.float64), torch.tensor(spot, dtype=torch.float64)

    def color(p: Tensor) -> Tensor:
        near = torch.cdist(p, c).min(dim=1).values < radius
        return torch.where(near[:, None], spot_t, base_t)

    return color


def unit(v) -> tuple[float, float, float]:
    n = math.sqrt(sum(x * x for x in v))
    return tuple(x / n for x in v)


def on_sphere(center, radius, direction, lift: float = 0.0) -> tuple[float, float, float]:
    """The point of a sphere in ``direction`` (pushed ``lift`` further out)."""
    d = unit(direction)
    return tuple(c + (radius + lift) * x for c, x in zip(center, d))


def pointing(direction) -> Tensor:
    """Rotation taking the local +y axis to ``direction``."""
    d = torch.tensor(unit(direction), dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    axis = torch.linalg.cross(y, d)
    if axis.norm() < 1e-9:
        return torch.eye(3, dtype=torch.float64) if d[1] > 0 else rotation((1, 0, 0), 180)
    return rotation(tuple(axis.tolist()), math.degrees(math.acos(float(d @ y))))


# --------------------------------------------------------------------- objects

BLACK, WHITE, SNOW = (0.05, 0.05, 0.05), (0.93, 0.93, 0.93), (0.9, 0.94, 1.0)
ORANGE, BROWN, RED = (1.0, 0.5, 0.1), (0.45, 0.28, 0.12), (0.85, 0.1, 0.1)
TERRACOTTA, SOIL = (0.78, 0.4, 0.22), (0.3, 0.2, 0.12)


def snowman() -> list[Part]:
    body = [((0, -0.45, 0), 0.36), ((0, 0.07, 0), 0.27), ((0, 0.44, 0), 0.19)]
    head_c, head_r = body[2]
    mid_c, mid_r = body[1]
    parts: list[Part] = [sphere(c, r, SNOW) for c, r in body]
    parts += [sphere(on_sphere(head_c, head_r, (s * 0.38, 0.15, 1)), 0.03, BLACK) for s in (-1, 1)]
    parts += [Lathe(ORANGE, on_sphere(head_c, head_r, (0, 0, 1), -0.02), pointing((0, -0.1, 1)),
                    profile=((0.0, 0.0), (0.045, 0.0), (0.0, 0.2)))]
    parts += [sphere(on_sphere(mid_c, mid_r, (0, y, 1)), 0.03, BLACK) for y in (-0.3, 0.1, 0.5)]
    parts += [Lathe(BROWN, on_sphere(mid_c, mid_r, (s, 0.3, 0), -0.03), pointing((s, 0.8, 0)),
                    profile=capsule(0.025, 0.32)) for s in (-1, 1)]
    parts += [Lathe(RED, (0, 0.0, 0), profile=((0.0, 0.27), (0.2, 0.27), (0.2, 0.33), (0.0, 0.33))),
              Lathe(BLACK, (0, 0.57, 0), profile=((0.0, 0.0), (0.22, 0.0), (0.22, 0.03), (0.13, 0.03),
                                                   (0.13, 0.25), (0.0, 0.25)))]
    return parts


def mushroom() -> list[Part]:
    dots = [(0.0, 0.45, 0.0)] + [(0.36 * math.sin(a), 0.3, 0.36 * math.cos(a))
                                 for a in (2 * math.pi * k / 5 + 0.3 for k in range(5))] \
        + [(0.55 * math.sin(a), 0.1, 0.55 * math.cos(a)) for a in (2 * math.pi * k / 7 for k in range(7))]
    return [
        Lathe((0.93, 0.88, 0.75), profile=((0.0, -0.6), (0.22, -0.6), (0.2, -0.45), (0.15, -0.1),
                                           (0.13, 0.05), (0.0, 0.05))),
        Lathe(spots(dots, 0.12, RED, WHITE), (0, 0.0, 0), profile=((0.0, 0.0), *dome(0.6, 0.45, 0.0))),
    ]


def rubber_duck() -> list[Part]:
    yellow, dark = (1.0, 0.85, 0.1), (0.95, 0.72, 0.05)
    head_c, head_r = (0.0, 0.3, 0.22), 0.25
    return [
        Ellipsoid(yellow, (0, -0.2, 0), radii=(0.4, 0.28, 0.52)),
        Ellipsoid(yellow, (0, -0.02, -0.46), rotation((1, 0, 0), -35), radii=(0.16, 0.1, 0.2)),
        sphere(head_c, head_r, yellow),
        Ellipsoid(ORANGE, (0, 0.25, 0.5), radii=(0.13, 0.045, 0.15)),
        *[sphere(on_sphere(head_c, head_r, (s * 0.45, 0.4, 0.8)), 0.035, BLACK) for s in (-1, 1)],
        *[Ellipsoid(dark, (s * 0.36, -0.1, -0.05), rotation((1, 0, 0), -15), radii=(0.08, 0.16, 0.3))
          for s in (-1, 1)],
    ]


def rocket() -> list[Part]:
    fins = [Ellipsoid(RED, (0.22 * math.sin(a), -0.5, 0.22 * math.cos(a)), rotation((0, 1, 0), math.degrees(a)),
                      radii=(0.025, 0.2, 0.17)) for a in (2 * math.pi * k / 3 + math.pi / 3 for k in range(3))]
    return [
        Lathe((0.3, 0.55, 0.95), profile=((0.0, -0.55), (0.2, -0.55), (0.23, -0.3), (0.23, 0.15), (0.2, 0.3),
                                          (0.0, 0.3))),
        Lathe(RED, (0, 0.3, 0), profile=((0.2, 0.0), (0.17, 0.15), (0.1, 0.3), (0.0, 0.4))),
        Lathe((0.4, 0.4, 0.45), (0, -0.55, 0), profile=((0.0, -0.12), (0.16, -0.12), (0.12, 0.0))),
        Ellipsoid((1.0, 0.9, 0.35), (0, 0.05, 0.225), radii=(0.09, 0.09, 0.035)),
        *fins,
    ]


def pot(color, y_top: float = -0.3, height: float = 0.32, radius: float = 0.3) -> list[Part]:
    """A flower pot of ``height`` and rim ``radius`` up to ``y_top``, soil at the top."""
    return [
        Lathe(color, (0, y_top - height, 0), profile=((0.0, 0.0), (0.7 * radius, 0.0), (0.9 * radius, 0.8 * height),
                                                      (radius, 0.8 * height), (radius, height))),
        Lathe(SOIL, (0, y_top, 0), profile=((radius, 0.0), (0.0, 0.0))),
    ]


def cactus() -> list[Part]:
    green = (0.2, 0.6, 0.25)
    return [
        *pot(TERRACOTTA),
        Lathe(green, (0, -0.35, 0), profile=capsule(0.18, 1.05)),
        Lathe(green, (-0.1, 0.02, 0), pointing((-1, 0, 0)), profile=capsule(0.1, 0.34)),
        Lathe(green, (-0.36, -0.03, 0), profile=capsule(0.1, 0.42)),
        Lathe(green, (0.1, 0.2, 0), pointing((1, 0, 0)), profile=capsule(0.1, 0.32)),
        Lathe(green, (0.34, 0.15, 0), profile=capsule(0.1, 0.35)),
        sphere((0, 0.72, 0), 0.08, (0.95, 0.35, 0.6)),
    ]


def potted_tree() -> list[Part]:
    leaf, leaf2 = (0.15, 0.5, 0.15), (0.2, 0.62, 0.2)
    apples = [(0.3, 0.35, 0.3), (-0.35, 0.2, 0.25), (0.1, 0.15, 0.43), (-0.1, 0.55, 0.35), (0.38, 0.2, -0.2),
              (-0.3, 0.35, -0.3)]
    return [
        *pot((0.2, 0.35, 0.75)),
        Lathe(BROWN, (0, -0.3, 0), profile=((0.07, 0.0), (0.05, 0.45))),
        sphere((0, 0.35, 0), 0.35, leaf),
        sphere((0.2, 0.2, 0.1), 0.25, leaf2),
        sphere((-0.22, 0.22, -0.05), 0.25, leaf2),
        sphere((0.0, 0.25, -0.22), 0.25, leaf),
        *[sphere(on_sphere((0, 0.3, 0), 0.38, a, 0.0), 0.05, RED) for a in apples],
    ]


def flower_head(center, azimuth: float, size: float) -> list[Part]:
    """A sunflower head of radius ~``size`` facing ``azimuth`` (degrees, 0 = +z)."""
    yellow, brown = (1.0, 0.8, 0.05), (0.35, 0.2, 0.07)
    R = rotation((0, 1, 0), azimuth)
    c = torch.tensor(center, dtype=torch.float64)

    def placed(offset, rotate=None) -> dict:
        local = torch.eye(3, dtype=torch.float64) if rotate is None else rotate
        return {"offset": tuple((R @ torch.tensor(offset, dtype=torch.float64) + c).tolist()), "rotate": R @ local}

    petals = [Ellipsoid(yellow, **placed((0.6 * size * math.cos(a), 0.6 * size * math.sin(a), 0.0),
                                         rotation((0, 0, 1), math.degrees(a) - 90)),
                        radii=(0.16 * size, 0.32 * size, 0.05 * size))
              for a in (2 * math.pi * k / 14 for k in range(14))]
    return [*petals, Ellipsoid(brown, **placed((0.0, 0.0, 0.0)), radii=(0.4 * size, 0.4 * size, 0.14 * size))]


def sunflower() -> list[Part]:
    green = (0.25, 0.55, 0.15)
    return [
        *pot((0.55, 0.3, 0.55)),
        Lathe(green, (0, -0.32, 0), profile=((0.04, 0.0), (0.035, 0.77))),
        Lathe(green, (0, -0.1, 0), pointing((0.87, 0.6, -0.5)), profile=((0.03, 0.0), (0.025, 0.4))),
        Ellipsoid(green, (0.2, -0.02, 0), rotation((0, 0, 1), -60), radii=(0.09, 0.22, 0.02)),
        Ellipsoid(green, (-0.2, 0.1, 0), rotation((0, 0, 1), 60), radii=(0.09, 0.22, 0.02)),
        *flower_head((0.0, 0.45, 0.05), 0, 0.5),
        *flower_head((0.28, 0.16, -0.16), 120, 0.34),
    ]


def tulips() -> list[Part]:
    green = (0.25, 0.55, 0.15)
    blooms = [((-0.28, 0.22, 0.05), (0.95, 0.15, 0.3)), ((0.0, 0.5, -0.08), (0.95, 0.55, 0.05)),
              ((0.28, 0.25, 0.1), (0.75, 0.2, 0.85)), ((-0.08, 0.3, 0.25), (1.0, 0.4, 0.5)),
              ((0.12, 0.32, -0.28), (0.95, 0.85, 0.15))]
    cup = tuple((1.25 * r, 1.25 * y) for r, y in ((0.0, 0.0), (0.1, 0.03), (0.13, 0.12), (0.12, 0.2), (0.08, 0.26),
                                                  (0.0, 0.24)))
    parts = [*pot((0.95, 0.85, 0.7))]
    for (x, y, z), color in blooms:
        parts += [Lathe(green, (0, -0.32, 0), pointing((x, y + 0.32, z)),
                        profile=((0.025, 0.0), (0.025, math.dist((0, -0.32, 0), (x, y, z))))),
                  Lathe(color, (x, y - 0.06, z), profile=cup)]
    parts += [Ellipsoid(green, (s * 0.17, -0.12, 0.0), rotation((0, 0, 1), -s * 30), radii=(0.06, 0.22, 0.02))
              for s in (-1, 1)]
    return parts


# Per set: the theme and its aliases; per object: the builder, a caption and the
# texts that name it (the exact prior's vocabulary, see cfd/vocabulary.py).
SETS = {
    "toys": {"name": "Toys", "prompt": "a toy on a table", "theme": "a toy",
             "theme_aliases": ["toy", "plaything"],
             "objects": {
                 "snowman": (snowman, "a snowman with a top hat and a carrot nose", ["snowman", "snowmen", "snow man"]),
                 "mushroom": (mushroom, "a red toadstool mushroom with white spots",
                              ["mushroom", "toadstool", "fly agaric"]),
                 "rubber_duck": (rubber_duck, "a yellow rubber duck", ["duck", "rubber duck", "bath duck"]),
                 "rocket": (rocket, "a toy rocket with fins", ["rocket", "spaceship", "space ship"]),
             }},
    "garden": {"name": "Potted plants", "prompt": "a plant in a pot", "theme": "a potted plant",
               "theme_aliases": ["plant", "potted plant", "houseplant", "pot"],
               "objects": {
                   "cactus": (cactus, "a flowering cactus in a terracotta pot", ["cactus", "cacti", "succulent"]),
                   "potted_tree": (potted_tree, "a small apple tree in a blue pot",
                                   ["tree", "apple tree", "potted tree", "bonsai"]),
                   "sunflower": (sunflower, "two sunflowers in a pink pot", ["sunflower"]),
                   "tulips": (tulips, "a bunch of tulips in a cream pot", ["tulip"]),
               }},
}


# ----------------------------------------------------------------------- build

def quat_z_to(normals: Tensor) -> Tensor:
    """[N,4] (w,x,y,z) rotations taking +z to each unit normal [N,3]."""
    nx, ny, nz = normals.unbind(1)
    q = torch.stack([1 + nz, -ny, nx, torch.zeros_like(nz)], dim=1)
    flip = 1 + nz < 1e-6  # normal ≈ −z: half turn about x
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return torch.nn.functional.normalize(q, dim=1)


def build_object(parts: list[Part], seed: int, n_splats: int = SPLATS) -> GaussianScene:
    """Cover the visible surface of ``parts`` (points inside another part are
    dropped) with ~``n_splats`` flat splats, ∝ visible area and ≥ MIN_SPLATS per
    part; bake the shading into the colours; centre the bounding box at the
    origin and fit it into FIT_RADIUS."""
    g = torch.Generator().manual_seed(seed)
    total = sum(p.area() for p in parts)
    candidates = []
    for i, part in enumerate(parts):
        q, nrm = part.sample(OVERSAMPLE * max(MIN_SPLATS, round(n_splats * part.area() / total)), g)
        p = part.to_world(q)
        hidden = torch.zeros(len(p), dtype=torch.bool)
        for j, other in enumerate(parts):
            if j != i:
                hidden |= other.contains(p)
        keep = ~hidden
        candidates.append((p[keep], nrm[keep] @ part.rotation_matrix.T, part.colors(q[keep]),
                           part.area() * float(keep.double().mean())))
    visible = sum(a for *_, a in candidates)
    pts, nrm, rgb, scl = [], [], [], []
    for p, nv, c, a in candidates:
        n = min(len(p), max(MIN_SPLATS, round(n_splats * a / visible)))
        pts.append(p[:n]), nrm.append(nv[:n]), rgb.append(c[:n])
        scl.append(torch.full((n,), COVER * math.sqrt(a / n), dtype=torch.float64))
    means, normals, colors, scale = torch.cat(pts), torch.cat(nrm), torch.cat(rgb), torch.cat(scl)
    lambert = 0.5 + 0.5 * normals @ torch.tensor(unit(LIGHT), dtype=torch.float64)
    colors = colors * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]
    means = means - (means.min(0).values + means.max(0).values) / 2
    k = FIT_RADIUS / (means.norm(dim=1) + 2 * scale).max()
    means, scale = means * k, scale * k
    scales = torch.stack([scale, scale, THICKNESS * scale], dim=1)
    return make_scene(means, scales, colors.clamp(0, 1), torch.full((len(means),), OPACITY), quat_z_to(normals))


def build_sets(out_dir: Path = SCENES_DIR) -> dict[str, list[GaussianScene]]:
    """Write every set to ``out_dir/<set_id>/`` (PLYs + set.json); returns the scenes."""
    built = {}
    for set_id, spec in SETS.items():
        folder = out_dir / set_id
        folder.mkdir(parents=True, exist_ok=True)
        scenes, entries = [], []
        for i, (name, (fn, caption, aliases)) in enumerate(spec["objects"].items()):
            scene = build_object(fn(), seed=1000 * len(built) + i)
            save_ply(scene, folder / f"{name}.ply")
            scenes.append(scene)
            entries.append({"file": f"{name}.ply", "name": name.replace("_", " "), "caption": caption,
                            "aliases": aliases})
        meta = {"name": spec["name"], "prompt": spec["prompt"], "theme": spec["theme"],
                "theme_aliases": spec["theme_aliases"], "scenes": entries}
        (folder / "set.json").write_text(json.dumps(meta, indent=2) + "\n")
        built[set_id] = scenes
    return built


def preview(sets: dict[str, list[GaussianScene]], path: Path, size: int = 128,
            azimuths=(0, 90, 180, 270), elevation: float = 15.0) -> None:
    """PNG grid: one row per object, one column per azimuth, at the training radius/fov."""
    from PIL import Image

    from cfd.cameras import CameraRanges, orbit_camera
    from cfd.render import render

    ranges = CameraRanges()
    rows = []
    with torch.no_grad():
        for scenes in sets.values():
            for scene in scenes:
                tiles = [render(scene, orbit_camera(a, elevation, ranges.eval_radius, ranges.eval_fov, size, size)).rgb
                         for a in azimuths]
                rows.append(torch.cat(tiles, dim=1))
    grid = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SCENES_DIR, help="output folder (default: assets/scenes)")
    parser.add_argument("--preview", type=Path, help="also write a preview PNG grid here")
    args = parser.parse_args(argv)
    sets = build_sets(args.out)
    for set_id, scenes in sets.items():
        print(f"{set_id}: " + ", ".join(f"{name} ({len(s)} splats)"
                                       for name, s in zip(SETS[set_id]["objects"], scenes)))
    if args.preview:
        preview(sets, args.preview)
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
