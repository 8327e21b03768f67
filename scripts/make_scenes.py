"""Build the bundled splat scene sets procedurally (deterministic, seeded).

    python scripts/make_scenes.py                   # writes assets/scenes/<set>/<family>_<k>.ply + set.json
    python scripts/make_scenes.py --preview P.png   # also a 4-azimuth preview grid, one row per variant
    python scripts/make_scenes.py --gallery P.png   # also a grid of one view, a row per family (the README figure)
    python scripts/make_scenes.py --check           # builds in memory, prints each family's pairwise PSNR
                                                    # matrix; exit 1 if a pair is above MAX_PAIR_PSNR

Every object is a family: one builder whose keyword arguments (today's object
by default) make visibly different variants that all answer the family's caption.

Every variant is a union of primitives (ellipsoids and surfaces of revolution)
covered by flat, fairly opaque splats oriented along the surface normal, so
renders look solid. Objects are centred and scaled into a ball of radius
``FIT_RADIUS`` around the origin (+y up, front facing +z).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfd.gaussians import GaussianScene, make_scene, save_ply  # noqa: E402

SCENES_DIR = ROOT / "assets" / "scenes"
FIT_RADIUS = 0.8        # world units: every splat centre + 2σ lies inside this ball
SPLATS = 1100           # splats per object (before the per-primitive minimum; 96 objects stay under 8 MB)
MIN_SPLATS = 24         # per primitive, so tiny details (eyes, buttons) stay solid
OPACITY = 0.9
THICKNESS = 0.5         # normal-axis scale / tangent scale of a splat (flat-ish: crisp, few edge-on spikes)
INSIDE_MARGIN = 1e-3    # local units: points this close to another part's surface are kept
OVERSAMPLE = 4          # candidate points per kept splat before hidden ones are dropped
COVER = 0.85            # tangent scale / mean splat spacing
LIGHT = (0.3, 1.0, 0.45)  # baked light direction (world, towards the light)
MAX_PAIR_PSNR = 24.0    # dB: --check fails if two variants of a family render closer than this
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


def snap(x: float) -> float:
    """``x`` rounded to 1e-9, so derived positions equal the typed ones (0.44 + 0.19 − 0.06 → 0.57)."""
    return round(x, 9)


def scaled(profile, sr: float = 1.0, sy: float = 1.0) -> tuple[tuple[float, float], ...]:
    """A Lathe profile with radii × ``sr`` and heights × ``sy``."""
    return tuple((sr * r, sy * y) for r, y in profile)


def tiles(colors, period: float = 0.0, around: int = 0) -> Callable[[Tensor], Tensor]:
    """Colour function cycling through ``colors`` in horizontal bands ``period`` high and/or
    ``around`` sectors about the local y axis (both: a checkerboard)."""
    table = torch.tensor(colors, dtype=torch.float64)

    def color(p: Tensor) -> Tensor:
        k = torch.zeros(len(p), dtype=torch.long)
        if period:
            k += torch.floor(p[:, 1] / period).long()
        if around:
            k += torch.floor((torch.atan2(p[:, 0], p[:, 2]) / (2 * math.pi) + 0.5) * around).long()
        return table[k % len(colors)]

    return color


def split(below, above, at: float = 0.0) -> Callable[[Tensor], Tensor]:
    """Colour function: ``below`` where the local y is under ``at``, else ``above``."""
    lo, hi = torch.tensor(below, dtype=torch.float64), torch.tensor(above, dtype=torch.float64)
    return lambda p: torch.where((p[:, 1] < at)[:, None], lo, hi)


def fibonacci(n: int) -> list[tuple[float, float, float]]:
    """``n`` evenly spread unit directions."""
    golden = math.pi * (3 - math.sqrt(5))
    return [(math.sqrt(1 - y * y) * math.cos(golden * k), y, math.sqrt(1 - y * y) * math.sin(golden * k))
            for k, y in ((k, 1 - (2 * k + 1) / n) for k in range(n))]


def on_surface(parts: list[Part], origin, direction, lift: float = 0.0) -> tuple[float, float, float]:
    """Where the ray from ``origin`` (inside ``parts``) along ``direction`` leaves them (bisection)."""
    o, d = torch.tensor(origin, dtype=torch.float64), torch.tensor(unit(direction), dtype=torch.float64)
    lo, hi = 0.0, 2.0
    for _ in range(30):
        mid = (lo + hi) / 2
        p = (o + mid * d)[None]
        lo, hi = (mid, hi) if any(bool(part.contains(p)[0]) for part in parts) else (lo, mid)
    return tuple((o + (lo + lift) * d).tolist())


# --------------------------------------------------------------------- objects

BLACK, WHITE, SNOW = (0.05, 0.05, 0.05), (0.93, 0.93, 0.93), (0.9, 0.94, 1.0)
ORANGE, BROWN, RED = (1.0, 0.5, 0.1), (0.45, 0.28, 0.12), (0.85, 0.1, 0.1)
TERRACOTTA, SOIL = (0.78, 0.4, 0.22), (0.3, 0.2, 0.12)
YELLOW, GOLD, PINK, PURPLE = (1.0, 0.85, 0.1), (0.95, 0.75, 0.2), (1.0, 0.55, 0.7), (0.55, 0.25, 0.75)
BLUE, NAVY, GREEN, GREY = (0.2, 0.45, 0.9), (0.12, 0.16, 0.4), (0.2, 0.6, 0.25), (0.55, 0.55, 0.6)
STEM_GREEN = (0.25, 0.55, 0.15)
LIME, TEAL, SAND = (0.55, 0.85, 0.15), (0.1, 0.6, 0.6), (0.88, 0.75, 0.5)


def hat(kind: str, color: Color, head_c, head_r: float, trim: Color = WHITE) -> list[Part]:
    """A hat on the head sphere (``head_c``, ``head_r``): "top", "bobble", "bucket",
    "straw", "cap", "crown", "party", "bow" or "witch"; ``trim`` colours its band, pompom or jewels."""
    x, y, z = head_c
    r, k = head_r, head_r / 0.19

    def at(dy: float, dz: float = 0.0) -> tuple[float, float, float]:
        return (x, snap(y + dy), snap(z + dz) if dz else z)

    def band(radius: float, height: float) -> tuple[tuple[float, float], ...]:
        return ((0.0, 0.0), (radius, 0.0), (radius, height), (0.0, height))

    if kind == "top":
        return [Lathe(color, at(r - 0.06 * k), profile=scaled(((0.0, 0.0), (0.22, 0.0), (0.22, 0.03), (0.13, 0.03),
                                                               (0.13, 0.25), (0.0, 0.25)), k, k))]
    if kind == "bobble":
        return [Lathe(color, at(0.4 * r), profile=((0.0, 0.0), *dome(1.02 * r, 0.8 * r, 0.0))),
                Lathe(trim, at(0.32 * r), profile=band(1.07 * r, 0.25 * r)),
                sphere(at(1.3 * r), 0.3 * r, trim)]
    if kind == "bucket":
        return [Lathe(color, at(0.5 * r), profile=((0.0, 0.0), (0.95 * r, 0.0), (0.75 * r, 1.1 * r), (0.0, 1.1 * r))),
                Lathe(trim, at(0.5 * r), profile=band(0.98 * r, 0.15 * r))]
    if kind == "straw":
        return [Lathe(color, at(0.6 * r), profile=((0.0, 0.0), (2.0 * r, 0.0), (2.0 * r, 0.06 * r), (0.85 * r, 0.1 * r),
                                                   (0.8 * r, 0.75 * r), (0.0, 0.75 * r))),
                Lathe(trim, at(0.7 * r), profile=band(0.88 * r, 0.2 * r))]
    if kind == "cap":
        return [Lathe(color, at(0.55 * r), profile=((0.0, 0.0), *dome(1.03 * r, 0.7 * r, 0.0))),
                Ellipsoid(color, at(0.6 * r, 0.8 * r), radii=(0.7 * r, 0.05 * r, 0.65 * r)),
                sphere(at(1.25 * r), 0.1 * r, trim)]
    if kind == "crown":
        spikes = [Lathe(color, (x + 0.78 * r * math.sin(a), snap(y + 1.25 * r), z + 0.78 * r * math.cos(a)),
                        profile=((0.0, 0.0), (0.2 * r, 0.0), (0.0, 0.45 * r)))
                  for a in (2 * math.pi * i / 5 for i in range(5))]
        jewels = [sphere((x + 0.82 * r * math.sin(a), snap(y + 0.98 * r), z + 0.82 * r * math.cos(a)), 0.1 * r, trim)
                  for a in (2 * math.pi * i / 5 + math.pi / 5 for i in range(5))]
        return [Lathe(color, at(0.7 * r), profile=((0.0, 0.0), (0.75 * r, 0.0), (0.82 * r, 0.6 * r), (0.0, 0.6 * r))),
                *spikes, *jewels]
    if kind == "party":
        return [Lathe(tiles([color, trim], period=0.3 * r), at(0.6 * r),
                      profile=((0.0, 0.0), (0.85 * r, 0.0), (0.0, 2.0 * r))),
                sphere(at(2.65 * r), 0.22 * r, trim)]
    if kind == "bow":
        return [*[Ellipsoid(color, (x + s * 0.45 * r, snap(y + 0.95 * r), z), rotation((0, 0, 1), s * 25),
                            radii=(0.5 * r, 0.28 * r, 0.15 * r)) for s in (-1, 1)],
                sphere(at(1.0 * r), 0.2 * r, trim)]
    if kind == "witch":
        return [Lathe(color, at(0.55 * r), profile=((0.0, 0.0), (1.9 * r, 0.0), (1.9 * r, 0.06 * r), (0.0, 0.06 * r))),
                Lathe(color, at(0.6 * r), profile=((0.0, 0.0), (0.9 * r, 0.0), (0.35 * r, 1.4 * r), (0.0, 2.4 * r))),
                Lathe(trim, at(0.6 * r), profile=band(0.86 * r, 0.3 * r))]
    raise ValueError(f"unknown hat {kind!r}")


SNOWBALLS = (((0, -0.45, 0), 0.36), ((0, 0.07, 0), 0.27), ((0, 0.44, 0), 0.19))


def snowman(body=SNOWBALLS, hat_kind: str | None = "top", hat_color: Color = BLACK, hat_trim: Color = WHITE,
            scarf: Color | None = RED, buttons=(-0.3, 0.1, 0.5), arms: float | None = 0.8, nose: float = 0.2,
            earmuffs: Color | None = None, scarf_tail: bool = False) -> list[Part]:
    """Snowballs ``body`` [(centre, radius)] bottom to head; ``buttons`` (heights of their
    directions) and twig arms (pointing up by ``arms``; None: none) on the ball below the head;
    ``scarf_tail``: the scarf's end hangs down the front of the ball below the head."""
    (mid_c, mid_r), (head_c, head_r) = body[-2:]
    k = head_r / 0.19
    parts: list[Part] = [sphere(c, r, SNOW) for c, r in body]
    parts += [sphere(on_sphere(head_c, head_r, (s * 0.38, 0.15, 1)), 0.03 * k, BLACK) for s in (-1, 1)]
    parts += [Lathe(ORANGE, on_sphere(head_c, head_r, (0, 0, 1), -0.02), pointing((0, -0.1, 1)),
                    profile=((0.0, 0.0), (0.045 * k, 0.0), (0.0, nose)))]
    parts += [sphere(on_sphere(mid_c, mid_r, (0, y, 1)), 0.03, BLACK) for y in buttons]
    if arms is not None:
        parts += [Lathe(BROWN, on_sphere(mid_c, mid_r, (s, 0.3, 0), -0.03), pointing((s, arms, 0)),
                        profile=capsule(0.025, 0.32)) for s in (-1, 1)]
    if scarf is not None:
        y0, rim = snap(head_c[1] - head_r + 0.02), snap(head_r + 0.01)
        parts += [Lathe(scarf, (head_c[0], 0.0, head_c[2]),
                        profile=((0.0, y0), (rim, y0), (rim, snap(y0 + 0.06)), (0.0, snap(y0 + 0.06))))]
        if scarf_tail:
            parts += [Ellipsoid(scarf, on_sphere(mid_c, mid_r, (0.3, 0.4, 1), 0.02), rotation((0, 0, 1), 12),
                                radii=(0.055 * k, 0.17 * k, 0.05 * k))]
    if hat_kind is not None:
        parts += hat(hat_kind, hat_color, head_c, head_r, hat_trim)
    if earmuffs is not None:
        hx, hy, hz = head_c
        parts += [Ellipsoid(earmuffs, (hx, hy + 0.3 * head_r, hz), radii=(0.95 * head_r, 0.8 * head_r, 0.04 * k)),
                  *[Ellipsoid(earmuffs, on_sphere(head_c, head_r, (s, 0.3, 0)), radii=(0.1 * k, 0.12 * k, 0.12 * k))
                    for s in (-1, 1)]]
    return parts


MUSHROOM_DOTS = [(0.0, 0.45, 0.0)] + [(0.36 * math.sin(a), 0.3, 0.36 * math.cos(a))
                                      for a in (2 * math.pi * k / 5 + 0.3 for k in range(5))] \
    + [(0.55 * math.sin(a), 0.1, 0.55 * math.cos(a)) for a in (2 * math.pi * k / 7 for k in range(7))]
STALK = ((0.0, -0.6), (0.22, -0.6), (0.2, -0.45), (0.15, -0.1), (0.13, 0.05), (0.0, 0.05))


def mushroom(cap: Color = RED, spot: Color | None = WHITE, spot_size: float = 0.12, cap_size=(0.6, 0.45),
             stalk=STALK, stalk_size=(1.0, 1.0), stalk_color: Color = (0.93, 0.88, 0.75),
             cluster=(((0.0, 0.0, 0.0), 1.0, 0.0),), cap_profile=None) -> list[Part]:
    """A cap of ``cap_size`` (radius, height) on a ``stalk`` profile scaled by ``stalk_size``
    (radius, height), ``spot``-dotted; ``cluster``: one per mushroom (offset, scale, tilt° about z);
    ``cap_profile``: the cap's Lathe profile in units of ``cap_size`` (None: a dome)."""
    (cr, ch), (sr, sh) = cap_size, stalk_size
    cap_shape = ((0.0, 0.0), *dome(cr, ch, 0.0)) if cap_profile is None else scaled(cap_profile, cr, ch)
    dots = [(x * (cr / 0.6), y * (ch / 0.45), z * (cr / 0.6)) for x, y, z in MUSHROOM_DOTS]
    parts: list[Part] = []
    for (ox, oy, oz), s, tilt in cluster:
        turn = rotation((0, 0, 1), tilt) if tilt else None
        ux, uy, uz = (0, 1, 0) if turn is None else turn[:, 1].tolist()
        lift = (0.05 * sh - 0.05) * s  # the cap sits 0.05 below the stalk's top
        top = (ox + ux * lift, oy + uy * lift, oz + uz * lift)
        color = spots([(s * x, s * y, s * z) for x, y, z in dots], s * spot_size, cap, spot) if spot else cap
        parts += [Lathe(stalk_color, (ox, oy, oz), turn, profile=scaled(stalk, s * sr, s * sh)),
                  Lathe(color, top, turn, profile=scaled(cap_shape, s, s))]
    return parts


def rubber_duck(color: Color = (1.0, 0.85, 0.1), wing: Color = (0.95, 0.72, 0.05), beak: Color = ORANGE,
                body=(0.4, 0.28, 0.52), head=((0.0, 0.3, 0.22), 0.25), dots: Color | None = None,
                hat_kind: str | None = None, hat_color: Color = RED, hat_trim: Color = WHITE,
                glasses: Color | None = None) -> list[Part]:
    """A duck of ``body`` radii with a ``head`` (centre, radius); ``dots``: polka dots on the body;
    ``glasses``: sunglasses of this colour over the eyes."""
    head_c, head_r = head
    bx, by, bz = body
    k = head_r / 0.25
    skin = spots([(bx * u, by * v, bz * w) for u, v, w in fibonacci(24)], 0.08, color, dots) if dots else color
    parts: list[Part] = [
        Ellipsoid(skin, (0, -0.2, 0), radii=body),
        Ellipsoid(color, (0, snap(-0.2 + 0.18 * by / 0.28), snap(0.06 - bz)), rotation((1, 0, 0), -35),
                  radii=(0.16, 0.1, 0.2)),
        sphere(head_c, head_r, color),
        Ellipsoid(beak, (head_c[0], snap(head_c[1] - 0.05 * k), snap(head_c[2] + head_r + 0.03 * k)),
                  radii=(0.13 * k, 0.045 * k, 0.15 * k)),
        *[sphere(on_sphere(head_c, head_r, (s * 0.45, 0.4, 0.8)), 0.035 * k, BLACK)
          for s in ((-1, 1) if glasses is None else ())],  # sunglasses hide the eyes
        *[Ellipsoid(wing, (s * snap(bx - 0.04), -0.1, -0.05), rotation((1, 0, 0), -15), radii=(0.08, 0.16, 0.3))
          for s in (-1, 1)],
    ]
    if glasses is not None:
        parts += [*[Ellipsoid(glasses, on_sphere(head_c, head_r, (s * 0.45, 0.4, 0.8), 0.01 * k),
                              rotation((0, 1, 0), s * 29) @ rotation((1, 0, 0), -24),
                              radii=(0.1 * k, 0.075 * k, 0.03 * k)) for s in (-1, 1)],
                  Lathe(glasses, on_sphere(head_c, head_r, (0, 0.42, 0.9), 0.01 * k), pointing((1, 0, 0)),
                        profile=((0.0, -0.07 * k), (0.02 * k, -0.07 * k), (0.02 * k, 0.07 * k), (0.0, 0.07 * k)))]
    return parts + (hat(hat_kind, hat_color, head_c, head_r, hat_trim) if hat_kind else [])


ROCKET_BODY = ((0.0, -0.55), (0.2, -0.55), (0.23, -0.3), (0.23, 0.15), (0.2, 0.3), (0.0, 0.3))
NOSE_CONE = ((0.2, 0.0), (0.17, 0.15), (0.1, 0.3), (0.0, 0.4))


def rocket(color: Color = (0.3, 0.55, 0.95), trim: Color = RED, fin_color: Color | None = None, fins: int = 3,
           size=(1.0, 1.0), fin_size: float = 1.0, nose=NOSE_CONE, windows=(0.05,), window: Color = (1.0, 0.9, 0.35),
           flame: bool = False, boosters: int = 0, booster_turn: float = 0.0) -> list[Part]:
    """A rocket body scaled by ``size`` (radius, height) with a ``trim``-coloured ``nose``
    profile, ``fins`` fins, round windows at these heights, an optional exhaust flame and side
    boosters (the first at ``booster_turn``° from the front)."""
    w, h = size
    fin_color = trim if fin_color is None else fin_color
    angles = [2 * math.pi * k / fins + math.pi / fins for k in range(fins)]
    parts: list[Part] = [
        Lathe(color, profile=scaled(ROCKET_BODY, w, h)),
        Lathe(trim, (0, 0.3 * h, 0), profile=scaled(nose, w)),
        Lathe((0.4, 0.4, 0.45), (0, -0.55 * h, 0), profile=scaled(((0.0, -0.12), (0.16, -0.12), (0.12, 0.0)), w)),
        *[Ellipsoid(window, (0, y * h, 0.225 * w), radii=(0.09, 0.09, 0.035)) for y in windows],
        *[Ellipsoid(fin_color, (0.22 * w * math.sin(a), -0.5 * h, 0.22 * w * math.cos(a)),
                    rotation((0, 1, 0), math.degrees(a)), radii=(0.025, 0.2 * fin_size, 0.17 * fin_size))
          for a in angles],
    ]
    if flame:
        parts += [Lathe(tiles([(1.0, 0.85, 0.2), ORANGE], period=0.08), (0, snap(-0.67 * h), 0), pointing((0, -1, 0)),
                        profile=((0.0, 0.0), (0.13 * w, 0.0), (0.09 * w, 0.12), (0.0, 0.32)))]
    parts += [Lathe(trim, (0.27 * w * math.sin(a), -0.55 * h, 0.27 * w * math.cos(a)),
                    profile=capsule(0.065 * w, 0.6 * h))
              for a in (2 * math.pi * k / boosters + math.radians(booster_turn) for k in range(boosters))]
    return parts


def pot(color, y_top: float = -0.3, height: float = 0.32, radius: float = 0.3) -> list[Part]:
    """A flower pot of ``height`` and rim ``radius`` up to ``y_top``, soil at the top."""
    return [
        Lathe(color, (0, y_top - height, 0), profile=((0.0, 0.0), (0.7 * radius, 0.0), (0.9 * radius, 0.8 * height),
                                                      (radius, 0.8 * height), (radius, height))),
        Lathe(SOIL, (0, y_top, 0), profile=((radius, 0.0), (0.0, 0.0))),
    ]


def cactus(pot_color: Color = TERRACOTTA, green: Color = GREEN, columns=((0.0, 0.0, 0.18, 1.05),),
           arms=((-1, 0, 0.02, 0.34, 0.42), (1, 0, 0.2, 0.32, 0.35)), arm_radius: float = 0.1,
           flower: Color | None = (0.95, 0.35, 0.6), flowers: int = 1, pads=(), pot_size=(0.32, 0.3),
           graft: Color | None = None, graft_radius: float = 0.25) -> list[Part]:
    """Columns (x, z, radius, height) with arms on the first one (dx, dz, y, out, up) and
    ``flowers`` flowers on each top; ``pads``: flat prickly-pear pads (centre, size, tilt°, turn°),
    the last two topped by a ``flower``-coloured fruit; ``graft``: a ball of ``graft_radius``
    grafted on top of the first column (a moon cactus)."""
    parts: list[Part] = [*pot(pot_color, -0.3, *pot_size)]
    parts += [Lathe(green, (x, -0.35, z), profile=capsule(radius, height)) for x, z, radius, height in columns]
    cx, cz = columns[0][:2] if columns else (0.0, 0.0)
    for dx, dz, y, out, up in arms:
        reach = out + 0.02
        parts += [Lathe(green, (cx + dx * 0.1, y, cz + dz * 0.1), pointing((dx, 0, dz)),
                        profile=capsule(arm_radius, out)),
                  Lathe(green, (snap(cx + dx * reach), snap(y - 0.05), snap(cz + dz * reach)),
                        profile=capsule(arm_radius, up))]
    for i, (center, size, tilt, turn) in enumerate(pads):
        turned = rotation((0, 1, 0), turn) @ rotation((0, 0, 1), tilt)
        areoles = [(0.6 * size * u, size * v, 0.15 * size * w) for u, v, w in fibonacci(16)]
        parts.append(Ellipsoid(spots(areoles, 0.03, green, (0.9, 0.92, 0.65)), center, turned,
                               radii=(0.6 * size, size, 0.15 * size)))
        if flower is not None and i >= len(pads) - 2:
            tip = torch.tensor(center, dtype=torch.float64) + size * turned[:, 1]
            parts.append(sphere(tuple(tip.tolist()), 0.07, flower))
    if graft is not None and columns:
        x, z, radius, height = columns[0]
        parts.append(Ellipsoid(graft, (x, snap(-0.35 + height + 0.75 * graft_radius), z),
                               radii=(graft_radius, 0.85 * graft_radius, graft_radius)))
    if flower is not None:
        for x, z, radius, height in columns:
            top = snap(-0.35 + height + 0.02)
            if flowers == 1:
                parts.append(sphere((x, top, z), 0.08 * (radius / 0.18), flower))
            else:
                parts += [sphere((x + 0.6 * radius * math.sin(a), top - 0.1 * radius, z + 0.6 * radius * math.cos(a)),
                                 0.06, flower) for a in (2 * math.pi * k / flowers for k in range(flowers))]
    return parts


LEAF, LEAF2 = (0.15, 0.5, 0.15), (0.2, 0.62, 0.2)
APPLE_CROWN = (((0, 0.35, 0), 0.35, LEAF), ((0.2, 0.2, 0.1), 0.25, LEAF2), ((-0.22, 0.22, -0.05), 0.25, LEAF2),
               ((0.0, 0.25, -0.22), 0.25, LEAF))
APPLES = ((0.3, 0.35, 0.3), (-0.35, 0.2, 0.25), (0.1, 0.15, 0.43), (-0.1, 0.55, 0.35), (0.38, 0.2, -0.2),
          (-0.3, 0.35, -0.3))


def potted_tree(pot_color: Color = (0.2, 0.35, 0.75), trunk=((0.07, 0.0), (0.05, 0.45)), crown=APPLE_CROWN,
                tiers=(), tier_color: Color = (0.1, 0.38, 0.18), fruit: Color | None = RED, fruits=APPLES,
                fruit_on=((0, 0.3, 0), 0.38), fruit_size: float = 0.05, topper: Color | None = None,
                pot_size=(0.32, 0.3), fronds=(), frond_color: Color = (0.2, 0.58, 0.2)) -> list[Part]:
    """A ``trunk`` profile under a ``crown`` of blobs (centre, radius, colour) and/or cone
    ``tiers`` (y, radius, height); ``fruits`` in these directions on the sphere ``fruit_on``
    (centre, radius) or, if None, at (x, y, z): on the foliage at height y towards (x, z);
    ``topper``: a star on the top tier; a blob's radius may be a (x, y, z) radii triple;
    ``fronds``: palm leaves (base, azimuth°, droop° below horizontal, length)."""
    foliage: list[Part] = [sphere(c, r, col) if isinstance(r, (int, float)) else Ellipsoid(col, c, radii=r)
                           for c, r, col in crown]
    for base, azimuth, droop, length in fronds:
        turn = rotation((0, 1, 0), azimuth) @ rotation((1, 0, 0), droop)
        center = torch.tensor(base, dtype=torch.float64) + 0.48 * length * turn[:, 2]
        foliage.append(Ellipsoid(frond_color, tuple(center.tolist()), turn, radii=(0.13 * length, 0.02, length / 2)))
    foliage += [Lathe(tier_color, (0, y, 0), profile=((0.0, 0.0), (r, 0.0), (0.0, h))) for y, r, h in tiers]
    parts: list[Part] = [*pot(pot_color, -0.3, *pot_size), Lathe(BROWN, (0, -0.3, 0), profile=trunk), *foliage]
    if fruit is not None:
        at = (lambda d: on_sphere(fruit_on[0], fruit_on[1], d, 0.0)) if fruit_on else \
            (lambda d: on_surface(foliage, (0, d[1], 0), (d[0], 0, d[2]), 0.3 * fruit_size))
        parts += [sphere(at(d), fruit_size, fruit) for d in fruits]
    if topper is not None and tiers:
        top = max(y + h for y, _, h in tiers) + 0.06
        parts += [Ellipsoid(topper, (0.07 * math.sin(a), top + 0.07 * math.cos(a), 0.0),
                            rotation((0, 0, 1), -math.degrees(a)), radii=(0.035, 0.08, 0.025))
                  for a in (2 * math.pi * k / 5 for k in range(5))]
    return parts


def flower_head(center, azimuth: float, size: float, petal: Color = (1.0, 0.8, 0.05),
                disc: Color = (0.35, 0.2, 0.07), petals: int = 14) -> list[Part]:
    """A sunflower head of radius ~``size`` facing ``azimuth`` (degrees, 0 = +z)."""
    R = rotation((0, 1, 0), azimuth)
    c = torch.tensor(center, dtype=torch.float64)

    def placed(offset, rotate=None) -> dict:
        local = torch.eye(3, dtype=torch.float64) if rotate is None else rotate
        return {"offset": tuple((R @ torch.tensor(offset, dtype=torch.float64) + c).tolist()), "rotate": R @ local}

    ring = [Ellipsoid(petal, **placed((0.6 * size * math.cos(a), 0.6 * size * math.sin(a), 0.0),
                                      rotation((0, 0, 1), math.degrees(a) - 90)),
                      radii=(0.16 * size, 0.32 * size, 0.05 * size))
            for a in (2 * math.pi * k / petals for k in range(petals))]
    return [*ring, Ellipsoid(disc, **placed((0.0, 0.0, 0.0)), radii=(0.4 * size, 0.4 * size, 0.14 * size))]


SUNFLOWER_HEADS = (((0.0, 0.45, 0.05), 0, 0.5), ((0.28, 0.16, -0.16), 120, 0.34))
SUNFLOWER_STEMS = (((0, -0.32, 0), (0, 1, 0), 0.77, 0.04), ((0, -0.1, 0), (0.87, 0.6, -0.5), 0.4, 0.03))
SUNFLOWER_LEAVES = (((0.2, -0.02, 0), -60), ((-0.2, 0.1, 0), 60))


def sunflower(pot_color: Color = (0.55, 0.3, 0.55), heads=SUNFLOWER_HEADS, stems=SUNFLOWER_STEMS,
              leaves=SUNFLOWER_LEAVES, leaf_size: float = 1.0, petal: Color = (1.0, 0.8, 0.05),
              disc: Color = (0.35, 0.2, 0.07), petals: int = 14, pot_size=(0.32, 0.3)) -> list[Part]:
    """Flower ``heads`` (centre, azimuth°, size) on ``stems`` (base, direction, length,
    radius; None: one straight stem from the soil to each head) with ``leaves`` (centre, tilt°)."""
    if stems is None:
        stems = [((0, -0.32, 0), (x, y + 0.32, z), math.dist((0, -0.32, 0), (x, y, z)), 0.04)
                 for (x, y, z), _, _ in heads]
    return [
        *pot(pot_color, -0.3, *pot_size),
        *[Lathe(STEM_GREEN, base, None if direction == (0, 1, 0) else pointing(direction),
                profile=((r, 0.0), (snap(r - 0.005), length))) for base, direction, length, r in stems],
        *[Ellipsoid(STEM_GREEN, center, rotation((0, 0, 1), tilt),
                    radii=(0.09 * leaf_size, 0.22 * leaf_size, 0.02 * leaf_size)) for center, tilt in leaves],
        *[part for center, azimuth, size in heads for part in flower_head(center, azimuth, size, petal, disc, petals)],
    ]


TULIP_BLOOMS = (((-0.28, 0.22, 0.05), (0.95, 0.15, 0.3)), ((0.0, 0.5, -0.08), (0.95, 0.55, 0.05)),
                ((0.28, 0.25, 0.1), (0.75, 0.2, 0.85)), ((-0.08, 0.3, 0.25), (1.0, 0.4, 0.5)),
                ((0.12, 0.32, -0.28), (0.95, 0.85, 0.15)))
TULIP_CUP = ((0.0, 0.0), (0.1, 0.03), (0.13, 0.12), (0.12, 0.2), (0.08, 0.26), (0.0, 0.24))


def tulips(pot_color: Color = (0.95, 0.85, 0.7), blooms=TULIP_BLOOMS, cup: float = 1.25, leaf_size: float = 1.0,
           leaf_turns=(0,), pot_size=(0.32, 0.3)) -> list[Part]:
    """Tulip ``blooms`` (position, colour) of ``cup`` size on straight stems, and a pair of
    leaves at each azimuth in ``leaf_turns`` (degrees)."""
    parts = [*pot(pot_color, -0.3, *pot_size)]
    for (x, y, z), color in blooms:
        parts += [Lathe(STEM_GREEN, (0, -0.32, 0), pointing((x, y + 0.32, z)),
                        profile=((0.025, 0.0), (0.025, math.dist((0, -0.32, 0), (x, y, z))))),
                  Lathe(color, (x, y - 0.06, z), profile=tuple((cup * r, cup * h) for r, h in TULIP_CUP))]
    for turn in leaf_turns:
        spin = rotation((0, 1, 0), turn) if turn else None
        for s in (-1, 1):
            center, tilt = (s * 0.17 * leaf_size, snap(-0.3 + 0.18 * leaf_size), 0.0), rotation((0, 0, 1), -s * 30)
            if spin is not None:
                center, tilt = tuple((spin @ torch.tensor(center, dtype=torch.float64)).tolist()), spin @ tilt
            parts.append(Ellipsoid(STEM_GREEN, center, tilt,
                                   radii=(0.06 * leaf_size, 0.22 * leaf_size, 0.02 * leaf_size)))
    return parts


@dataclass
class Variant:
    """One member of a family: the builder's keyword arguments and the texts that name it."""

    name: str               # 2–4 words, unique over all sets ("pink duck")
    description: str        # what makes it distinct, one short sentence
    aliases: list[str]      # texts that name this variant alone
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Family:
    """An object family: its builder, a caption true of every variant, the texts that name
    it and its variants (the first one is the builder's defaults)."""

    builder: Callable[..., list[Part]]
    name: str
    caption: str
    aliases: list[str]
    variants: list[Variant]


def ring(n: int, radius: float, y: float, phase: float = 0.0) -> list[tuple[float, float, float]]:
    """``n`` points on a horizontal circle of ``radius`` at height ``y``."""
    return [(radius * math.sin(a), y, radius * math.cos(a)) for a in (2 * math.pi * k / n + phase for k in range(n))]


def blobs(spheres, colors) -> tuple:
    """Crown blobs (centre, radius, colour) from (centre, radius), coloured by ``colors`` in turn."""
    return tuple((c, r, colors[i % len(colors)]) for i, (c, r) in enumerate(spheres))


LIGHT_LEAF, DARK_LEAF = (0.45, 0.75, 0.25), (0.1, 0.4, 0.12)
AUTUMN = ((0.85, 0.25, 0.1), (0.95, 0.55, 0.1), (0.95, 0.8, 0.2))
BLOSSOM = ((1.0, 0.72, 0.82), (0.98, 0.6, 0.75))

# Per set: the theme and its aliases; per family: the builder, a caption and the texts that
# name it, and its variants (the exact prior's vocabulary, see cfd/vocabulary.py).
SETS = {
    "toys": {"name": "Toys", "prompt": "a toy on a table", "theme": "a toy",
             "theme_aliases": ["toy", "plaything"],
             "families": {
                 "snowman": Family(snowman, "snowman", "a snowman", ["snowman", "snowmen", "snow man"], [
                     Variant("top hat snowman", "a classic three-ball snowman with a black top hat and a red scarf",
                             ["top hat snowman", "snowman with a top hat"]),
                     Variant("bobble hat snowman", "a plump two-ball snowman with a green bobble hat and scarf",
                             ["bobble hat snowman", "two-ball snowman", "snowman with a bobble hat"],
                             dict(body=(((0, -0.3, 0), 0.42), ((0, 0.3, 0), 0.27)), hat_kind="bobble",
                                  hat_color=(0.15, 0.6, 0.25), scarf=(0.15, 0.6, 0.25), buttons=(0.15, 0.45),
                                  arms=-0.3)),
                     Variant("bucket snowman", "a snowman wearing a red bucket, with a blue scarf and no arms",
                             ["bucket snowman", "snowman with a bucket"],
                             dict(body=(((0, -0.45, 0), 0.4), ((0, 0.05, 0), 0.26), ((0, 0.42, 0), 0.2)),
                                  hat_kind="bucket", hat_color=RED, hat_trim=(0.6, 0.05, 0.05), scarf=BLUE,
                                  buttons=(-0.2, 0.3), arms=None)),
                     Variant("tall snowman", "a tall, slim four-ball snowman with a striped party hat",
                             ["tall snowman", "four-ball snowman"],
                             dict(body=(((0, -0.62, 0), 0.26), ((0, -0.22, 0), 0.22), ((0, 0.12, 0), 0.19),
                                        ((0, 0.42, 0), 0.15)),
                                  hat_kind="party", hat_color=PURPLE, hat_trim=YELLOW, scarf=YELLOW,
                                  buttons=(-0.2, 0.3), arms=1.5)),
                     Variant("chubby snowman", "a chubby snowman with a big belly, a tiny head and pink earmuffs",
                             ["chubby snowman", "snowman with earmuffs"],
                             dict(body=(((0, -0.4, 0), 0.5), ((0, 0.22, 0), 0.3), ((0, 0.6, 0), 0.16)),
                                  hat_kind=None, earmuffs=PINK, scarf=PINK, buttons=(-0.2, 0.15, 0.5))),
                     Variant("straw hat snowman", "a snowman in a wide straw sun hat with an orange scarf",
                             ["straw hat snowman", "snowman with a straw hat"],
                             dict(body=(((0, -0.45, 0), 0.3), ((0, 0.05, 0), 0.27), ((0, 0.5, 0), 0.24)),
                                  hat_kind="straw", hat_color=(0.9, 0.78, 0.45), hat_trim=RED, scarf=ORANGE,
                                  arms=0.0, nose=0.3)),
                     Variant("scarf snowman", "a bareheaded snowman with a long red-and-white striped scarf and black "
                             "earmuffs", ["scarf snowman", "snowman with a striped scarf"],
                             dict(body=(((0, -0.42, 0), 0.34), ((0, 0.08, 0), 0.25), ((0, 0.46, 0), 0.22)),
                                  hat_kind=None, earmuffs=BLACK, scarf=tiles([RED, WHITE], period=0.03),
                                  scarf_tail=True, buttons=(-0.1, 0.3), arms=0.3)),
                     Variant("witch snowman", "a snowman in a tall purple witch hat and a lime green scarf",
                             ["witch snowman", "snowman with a witch hat", "snow witch"],
                             dict(body=(((0, -0.48, 0), 0.4), ((0, 0.04, 0), 0.24), ((0, 0.38, 0), 0.19)),
                                  hat_kind="witch", hat_color=PURPLE, hat_trim=LIME, scarf=LIME, arms=1.2)),
                     Variant("crowned snowman", "a plump two-ball snowman with a golden crown and a purple scarf",
                             ["crowned snowman", "snow king", "snowman with a crown"],
                             dict(body=(((0, -0.28, 0), 0.44), ((0, 0.34, 0), 0.25)), hat_kind="crown",
                                  hat_color=GOLD, hat_trim=RED, scarf=PURPLE, buttons=(0.1, 0.4), arms=0.5)),
                     Variant("cap snowman", "a small-headed snowman in a red baseball cap with a yellow scarf",
                             ["cap snowman", "snowman in a cap", "snowman with a cap"],
                             dict(body=(((0, -0.42, 0), 0.38), ((0, 0.1, 0), 0.28), ((0, 0.47, 0), 0.16)),
                                  hat_kind="cap", hat_color=RED, scarf=YELLOW, buttons=(-0.3, 0.1, 0.5), arms=-0.2)),
                     Variant("bow snowman", "a snowman with a big head, a pink bow on top and a teal scarf",
                             ["bow snowman", "snowman with a bow", "snow girl"],
                             dict(body=(((0, -0.5, 0), 0.3), ((0, -0.05, 0), 0.24), ((0, 0.42, 0), 0.3)),
                                  hat_kind="bow", hat_color=PINK, hat_trim=PINK, scarf=TEAL, buttons=(0.0, 0.4),
                                  arms=0.9, nose=0.25)),
                     Variant("carrot-nose snowman", "a bareheaded snowman with a long carrot nose, a navy scarf "
                             "and arms raised high", ["carrot-nose snowman", "bald snowman", "hatless snowman"],
                             dict(body=(((0, -0.4, 0), 0.4), ((0, 0.12, 0), 0.28), ((0, 0.5, 0), 0.2)),
                                  hat_kind=None, scarf=NAVY, buttons=(-0.3, 0.1, 0.5), arms=2.0, nose=0.55)),
                 ]),
                 "mushroom": Family(mushroom, "mushroom", "a mushroom", ["mushroom", "toadstool"], [
                     Variant("red toadstool", "a red toadstool with white spots",
                             ["red toadstool", "red mushroom", "fly agaric"]),
                     Variant("porcini mushroom", "a fat brown porcini with a bulbous stalk and no spots",
                             ["porcini", "brown mushroom", "cep", "bolete"],
                             dict(cap=(0.45, 0.26, 0.12), spot=None, cap_size=(0.55, 0.42),
                                  stalk=((0.0, -0.6), (0.25, -0.6), (0.33, -0.4), (0.28, -0.15), (0.2, 0.05),
                                         (0.0, 0.05)))),
                     Variant("blue mushroom", "a tall blue mushroom with a flat cap and yellow spots",
                             ["blue mushroom", "blue toadstool"],
                             dict(cap=BLUE, spot=YELLOW, spot_size=0.1, cap_size=(0.7, 0.22),
                                  stalk_size=(0.7, 1.6))),
                     Variant("twin mushrooms", "two orange mushrooms, a big one and a small one leaning away",
                             ["twin mushrooms", "two mushrooms", "pair of mushrooms"],
                             dict(cap=ORANGE, spot=(1.0, 0.95, 0.8), spot_size=0.08,
                                  cluster=(((-0.15, 0.0, 0.0), 0.9, 8.0), ((0.5, -0.25, 0.1), 0.55, -20.0)))),
                     Variant("purple mushroom", "a slender purple mushroom with a tall bell-shaped cap",
                             ["purple mushroom", "purple toadstool"],
                             dict(cap=PURPLE, spot=None, cap_size=(0.4, 0.6), stalk_size=(0.6, 1.3))),
                     Variant("button mushroom", "a squat white button mushroom with a thick stalk",
                             ["button mushroom", "white mushroom"],
                             dict(cap=(0.92, 0.88, 0.82), spot=None, cap_size=(0.5, 0.42), stalk_size=(1.3, 0.75),
                                  stalk_color=(0.8, 0.74, 0.62))),
                     Variant("pointy mushroom", "a mushroom with a tall pointed green cone cap with white spots",
                             ["pointy mushroom", "green mushroom", "conical mushroom"],
                             dict(cap=spots(ring(7, 0.42, 0.08) + ring(5, 0.26, 0.29, 0.6) + ring(3, 0.14, 0.48, 0.3),
                                            0.065, (0.25, 0.62, 0.2), WHITE), spot=None, cap_size=(0.5, 0.75),
                                  cap_profile=((0.0, 0.0), (1.0, 0.0), (0.6, 0.3), (0.28, 0.65), (0.0, 1.0)),
                                  stalk_size=(0.8, 0.9))),
                     Variant("mushroom trio", "a cluster of three yellow mushrooms of different heights",
                             ["mushroom trio", "three mushrooms", "yellow mushroom"],
                             dict(cap=(0.98, 0.8, 0.15), spot=None, cap_size=(0.5, 0.35),
                                  cluster=(((0.0, 0.1, -0.1), 0.8, 0.0), ((-0.42, -0.25, 0.15), 0.55, 15.0),
                                           ((0.4, -0.35, 0.2), 0.45, -15.0)))),
                     Variant("pink mushroom", "a pink mushroom with a wide flat cap and purple spots",
                             ["pink mushroom", "pink toadstool"],
                             dict(cap=PINK, spot=PURPLE, spot_size=0.1, cap_size=(0.78, 0.25), stalk_size=(0.9, 1.1))),
                     Variant("toadstool ring", "a ring of five little red-and-white toadstools",
                             ["toadstool ring", "fairy ring", "five mushrooms"],
                             dict(spot_size=0.16, cluster=tuple(((0.45 * math.sin(a), -0.3, 0.45 * math.cos(a)), 0.45,
                                                                 0.0) for a in (0.3, 1.56, 2.81, 4.07, 5.33)))),
                     Variant("leaning mushroom", "a teal mushroom with a domed cap, leaning to one side",
                             ["leaning mushroom", "teal mushroom", "crooked mushroom"],
                             dict(cap=TEAL, spot=None, cap_size=(0.5, 0.5), stalk_size=(0.8, 1.2),
                                  cluster=(((0.0, 0.0, 0.0), 1.0, 28.0),))),
                     Variant("glowing mushroom", "a dark navy mushroom with glowing lime spots",
                             ["glowing mushroom", "navy mushroom", "night mushroom"],
                             dict(cap=NAVY, spot=LIME, spot_size=0.14, cap_size=(0.62, 0.4),
                                  stalk_color=(0.75, 0.8, 0.9))),
                 ]),
                 "rubber_duck": Family(rubber_duck, "rubber duck", "a rubber duck",
                                       ["duck", "rubber duck", "bath duck"], [
                     Variant("yellow duck", "a classic yellow rubber duck", ["yellow duck", "yellow rubber duck"]),
                     Variant("pink duck", "a pink rubber duck with a small head and a purple bow",
                             ["pink duck", "pink rubber duck"],
                             dict(color=PINK, wing=(0.95, 0.45, 0.6), beak=RED, head=((0.0, 0.25, 0.28), 0.19),
                                  hat_kind="bow", hat_color=PURPLE, hat_trim=PURPLE)),
                     Variant("white duck", "a long white rubber duck in a blue baseball cap",
                             ["white duck", "white rubber duck", "duck in a cap"],
                             dict(color=WHITE, wing=(0.82, 0.82, 0.86), body=(0.38, 0.3, 0.6), hat_kind="cap",
                                  hat_color=BLUE)),
                     Variant("blue duck", "a blue rubber duck with a big head and a golden crown",
                             ["blue duck", "king duck", "duck with a crown"],
                             dict(color=BLUE, wing=NAVY, beak=YELLOW, head=((0.0, 0.35, 0.2), 0.3), hat_kind="crown",
                                  hat_color=GOLD, hat_trim=RED)),
                     Variant("polka dot duck", "a red rubber duck covered in white polka dots",
                             ["polka dot duck", "red duck", "spotted duck"],
                             dict(color=RED, wing=(0.65, 0.05, 0.05), beak=YELLOW, dots=WHITE)),
                     Variant("green duckling", "a round green duckling with a huge head and a party hat",
                             ["green duck", "duckling"],
                             dict(color=(0.35, 0.75, 0.3), wing=(0.25, 0.6, 0.2), body=(0.38, 0.34, 0.4),
                                  head=((0.0, 0.38, 0.15), 0.3), hat_kind="party", hat_color=ORANGE, hat_trim=WHITE)),
                     Variant("cool duck", "a purple rubber duck wearing black sunglasses",
                             ["cool duck", "purple duck", "duck with sunglasses", "duck in sunglasses"],
                             dict(color=(0.6, 0.35, 0.85), wing=(0.45, 0.22, 0.7), beak=ORANGE, glasses=BLACK)),
                     Variant("top hat duck", "an orange rubber duck in a black top hat with a red beak",
                             ["top hat duck", "orange duck", "duck in a top hat"],
                             dict(color=(1.0, 0.55, 0.15), wing=(0.9, 0.4, 0.05), beak=RED, body=(0.42, 0.26, 0.48),
                                  head=((0.0, 0.28, 0.2), 0.22), hat_kind="top", hat_color=BLACK)),
                     Variant("witch duck", "a black rubber duck in a tall purple witch hat",
                             ["witch duck", "black duck", "duck in a witch hat"],
                             dict(color=(0.15, 0.15, 0.18), wing=(0.3, 0.3, 0.35), beak=ORANGE, hat_kind="witch",
                                  hat_color=PURPLE, hat_trim=LIME)),
                     Variant("teal duck", "a teal rubber duck with yellow spots in a straw hat",
                             ["teal duck", "duck in a straw hat"],
                             dict(color=TEAL, wing=(0.05, 0.45, 0.45), beak=YELLOW, dots=YELLOW, hat_kind="straw",
                                  hat_color=SAND, hat_trim=RED)),
                     Variant("brown duck", "a long brown rubber duck in a red bobble hat",
                             ["brown duck", "duck in a bobble hat"],
                             dict(color=(0.55, 0.35, 0.2), wing=BROWN, body=(0.42, 0.26, 0.62), hat_kind="bobble",
                                  hat_color=RED, hat_trim=WHITE)),
                     Variant("grey duck", "a grey rubber duck with a small head, a navy bucket hat and no frills",
                             ["grey duck", "gray duck", "duck in a bucket hat"],
                             dict(color=(0.7, 0.72, 0.76), wing=(0.55, 0.57, 0.62), beak=RED,
                                  head=((0.0, 0.22, 0.3), 0.18), hat_kind="bucket", hat_color=NAVY, hat_trim=NAVY)),
                 ]),
                 "rocket": Family(rocket, "rocket", "a toy rocket", ["rocket", "spaceship", "space ship"], [
                     Variant("blue rocket", "a blue rocket with a red nose and three red fins", ["blue rocket"]),
                     Variant("checkered rocket", "a long red-and-white checkered rocket with four fins",
                             ["checkered rocket", "chequered rocket", "checked rocket"],
                             dict(color=tiles([RED, WHITE], period=0.12, around=8), trim=RED, fins=4,
                                  size=(0.9, 1.35))),
                     Variant("stubby rocket", "a short, fat yellow rocket with big blue fins and a flame",
                             ["stubby rocket", "yellow rocket"],
                             dict(color=YELLOW, trim=BLUE, size=(1.3, 0.8), fin_size=1.2, flame=True,
                                  window=(0.7, 0.9, 1.0),
                                  nose=tuple(dome(0.2, 0.25, 0.0)))),
                     Variant("green rocket", "a slim green rocket with three portholes and four orange fins",
                             ["green rocket"],
                             dict(color=GREEN, trim=ORANGE, fins=4, size=(0.75, 1.4), windows=(-0.25, 0.0, 0.2))),
                     Variant("silver rocket", "a silver rocket with three navy side boosters",
                             ["silver rocket", "rocket with boosters"],
                             dict(color=(0.75, 0.77, 0.8), trim=NAVY, boosters=3)),
                     Variant("striped rocket", "a white rocket with purple stripes, four fins and a flame",
                             ["striped rocket", "purple rocket"],
                             dict(color=tiles([WHITE, PURPLE], period=0.15), trim=PURPLE, fins=4, flame=True)),
                     Variant("five-finned rocket", "an orange rocket with a white nose cone and five white fins",
                             ["five-finned rocket", "orange rocket", "rocket with five fins"],
                             dict(color=ORANGE, trim=WHITE, fins=5, fin_size=1.15, windows=(0.12, -0.15))),
                     Variant("pink rocket", "a chubby pink rocket with a long pointed teal nose, four teal fins, "
                             "two side boosters and a flame",
                             ["pink rocket"],
                             dict(color=PINK, trim=TEAL, fins=4, size=(1.15, 0.9), boosters=2, booster_turn=90,
                                  flame=True,
                                  window=WHITE, nose=((0.2, 0.0), (0.15, 0.2), (0.08, 0.42), (0.0, 0.6)))),
                     Variant("red rocket", "a long red rocket with a yellow nose, yellow fins and a flame",
                             ["red rocket"],
                             dict(color=RED, trim=YELLOW, size=(0.85, 1.3), flame=True, windows=(0.1, -0.2))),
                     Variant("six-finned rocket", "a navy rocket with a gold nose and six small gold fins",
                             ["six-finned rocket", "navy rocket", "rocket with six fins"],
                             dict(color=NAVY, trim=GOLD, fins=6, fin_size=0.8, window=WHITE)),
                     Variant("teal rocket", "a teal rocket with a pink nose, pink fins and four pink side boosters",
                             ["teal rocket", "rocket with four boosters"],
                             dict(color=TEAL, trim=PINK, boosters=4, booster_turn=45)),
                     Variant("black rocket", "a black rocket with a round lime nose and four lime fins",
                             ["black rocket"],
                             dict(color=(0.15, 0.15, 0.18), trim=LIME, fins=4, nose=tuple(dome(0.2, 0.2, 0.0)),
                                  window=LIME)),
                 ]),
             }},
    "garden": {"name": "Potted plants", "prompt": "a plant in a pot", "theme": "a potted plant",
               "theme_aliases": ["plant", "potted plant", "houseplant", "pot"],
               "families": {
                   "cactus": Family(cactus, "cactus", "a cactus in a pot", ["cactus", "cacti", "succulent"], [
                       Variant("two-armed cactus", "a tall cactus with two arms and a pink flower in a terracotta pot",
                               ["two-armed cactus"]),
                       Variant("barrel cactus",
                               "a squat, round ribbed cactus with a ring of yellow flowers in a blue pot",
                               ["barrel cactus", "round cactus"],
                               dict(green=tiles([(0.22, 0.55, 0.27), (0.3, 0.66, 0.33)], around=24),
                                    columns=((0.0, 0.0, 0.36, 0.8),), arms=(), flower=YELLOW, flowers=7,
                                    pot_color=BLUE, pot_size=(0.3, 0.42))),
                       Variant("three-armed cactus", "a very tall dark green cactus with three arms in a white pot",
                               ["three-armed cactus"],
                               dict(green=(0.1, 0.42, 0.2), columns=((0.0, 0.0, 0.15, 1.4),),
                                    arms=((-1, 0, 0.15, 0.3, 0.45), (1, 0, 0.35, 0.28, 0.4),
                                          (0.6, 0.8, -0.05, 0.25, 0.3)),
                                    arm_radius=0.085, flower=None, pot_color=WHITE)),
                       Variant("one-armed cactus",
                               "a short, thick cactus with one arm and a red flower in a yellow pot",
                               ["one-armed cactus"],
                               dict(columns=((0.0, 0.0, 0.24, 0.85),), arms=((0.7, 0.7, 0.05, 0.5, 0.38),),
                                    arm_radius=0.11, flower=RED, pot_color=YELLOW)),
                       Variant("prickly pear", "a prickly pear of flat oval pads with red fruits in a grey pot",
                               ["prickly pear", "opuntia", "paddle cactus"],
                               dict(columns=(), arms=(), pot_color=GREY, flower=RED, green=(0.35, 0.62, 0.3),
                                    pads=(((0.0, -0.02, 0.0), 0.3, 0.0, 0.0), ((-0.22, 0.42, 0.0), 0.22, 30.0, 20.0),
                                          ((0.2, 0.45, 0.05), 0.22, -35.0, -20.0),
                                          ((0.02, 0.6, -0.05), 0.2, 5.0, 80.0)))),
                       Variant("cactus trio", "three small cacti of different heights in a wide, low purple pot",
                               ["cactus trio", "three cacti"],
                               dict(columns=((-0.25, 0.05, 0.12, 0.7), (0.05, -0.15, 0.14, 0.95),
                                             (0.25, 0.15, 0.11, 0.5)),
                                    arms=(), green=(0.35, 0.65, 0.3), flower=(1.0, 0.45, 0.25), pot_color=PURPLE,
                                    pot_size=(0.22, 0.45))),
                       Variant("four-armed cactus", "a blue-green cactus with four arms and white flowers in a "
                               "red-and-white striped pot",
                               ["four-armed cactus", "candelabra cactus"],
                               dict(green=(0.2, 0.55, 0.5), columns=((0.0, 0.0, 0.14, 1.1),),
                                    arms=((-0.98, 0.2, -0.1, 0.38, 0.28), (-0.98, -0.2, 0.35, 0.2, 0.24),
                                          (0.98, -0.2, -0.05, 0.38, 0.32), (0.98, 0.2, 0.4, 0.2, 0.2)),
                                    arm_radius=0.075, flower=WHITE, pot_color=tiles([RED, WHITE], around=12))),
                       Variant("moon cactus", "a moon cactus: a red ribbed ball grafted on a short green stem "
                               "in a small teal pot",
                               ["moon cactus", "grafted cactus"],
                               dict(columns=((0.0, 0.0, 0.1, 0.55),), arms=(), flower=None,
                                    graft=tiles([RED, (0.65, 0.05, 0.1)], around=14), graft_radius=0.3,
                                    pot_color=TEAL, pot_size=(0.3, 0.26))),
                       Variant("column cactus", "a single tall cactus column with no arms and a white flower "
                               "in a black pot", ["column cactus", "armless cactus"],
                               dict(columns=((0.0, 0.0, 0.17, 1.3),), arms=(), flower=WHITE, pot_color=BLACK)),
                       Variant("twin cacti", "two cacti side by side, the taller with one arm, in an orange pot",
                               ["twin cacti", "two cacti"],
                               dict(columns=((-0.12, 0.0, 0.13, 1.1), (0.18, 0.05, 0.12, 0.65)),
                                    arms=((-1, 0, 0.15, 0.25, 0.3),), arm_radius=0.07, flower=None,
                                    pot_color=ORANGE, pot_size=(0.3, 0.4))),
                       Variant("fork cactus", "a short cactus with two thick upturned arms and a yellow flower "
                               "in a pink pot", ["fork cactus", "u-shaped cactus"],
                               dict(columns=((0.0, 0.0, 0.2, 0.7),), arms=((-1, 0, -0.05, 0.3, 0.45),
                                                                           (1, 0, -0.05, 0.3, 0.45)),
                                    arm_radius=0.12, flower=YELLOW, pot_color=PINK)),
                       Variant("five-armed cactus", "a light green cactus with five short arms and orange flowers "
                               "in a green pot", ["five-armed cactus"],
                               dict(green=LIME, columns=((0.0, 0.0, 0.16, 1.0),),
                                    arms=tuple((math.sin(a), math.cos(a), 0.05 + 0.09 * k, 0.2, 0.22)
                                               for k, a in enumerate((0.6, 1.86, 3.1, 4.36, 5.6))),
                                    arm_radius=0.07, flower=ORANGE, flowers=3, pot_color=GREEN)),
                   ]),
                   "potted_tree": Family(potted_tree, "potted tree", "a small tree in a pot",
                                         ["tree", "potted tree", "bonsai"], [
                       Variant("apple tree", "a round apple tree with red apples in a blue pot", ["apple tree"]),
                       Variant("orange tree", "a wide orange tree full of oranges in a terracotta pot",
                               ["orange tree", "citrus tree"],
                               dict(crown=blobs((((0.0, 0.3, 0.0), 0.3), ((-0.3, 0.2, 0.0), 0.22),
                                                 ((0.3, 0.2, 0.0), 0.22)), [DARK_LEAF]),
                                    fruit=ORANGE, fruit_on=None, fruit_size=0.06,
                                    fruits=tuple(ring(5, 1.0, 0.15) + ring(4, 1.0, 0.38, 0.6)),
                                    pot_color=TERRACOTTA, trunk=((0.08, 0.0), (0.06, 0.35)))),
                       Variant("cherry blossom", "a wide cherry tree in pink blossom in a white pot",
                               ["cherry blossom", "cherry tree", "blossom tree", "sakura"],
                               dict(crown=blobs((((0.0, 0.45, 0.0), 0.25), ((-0.35, 0.35, 0.1), 0.2),
                                                 ((0.35, 0.38, -0.05), 0.22), ((0.05, 0.4, 0.28), 0.18),
                                                 ((-0.1, 0.42, -0.28), 0.18)), BLOSSOM),
                                   fruit=None, pot_color=WHITE, trunk=((0.09, 0.0), (0.05, 0.65)))),
                       Variant("christmas tree", "a little fir tree with gold baubles and a star in a red pot",
                               ["christmas tree", "xmas tree", "fir tree"],
                               dict(crown=(), tiers=((-0.15, 0.42, 0.45), (0.12, 0.33, 0.4), (0.37, 0.23, 0.35)),
                                    fruit=GOLD, fruit_on=None,
                                    fruits=tuple(ring(5, 1.0, -0.05) + ring(3, 1.0, 0.22, 0.5)),
                                    fruit_size=0.045, topper=GOLD, pot_color=RED, trunk=((0.06, 0.0), (0.05, 0.2)))),
                       Variant("autumn tree", "a tall tree in red, orange and yellow autumn leaves in a grey pot",
                               ["autumn tree", "fall tree"],
                               dict(crown=blobs((((0.0, 0.5, 0.0), 0.25), ((0.15, 0.3, 0.12), 0.2),
                                                 ((-0.15, 0.32, -0.1), 0.2), ((-0.1, 0.22, 0.15), 0.17),
                                                 ((0.12, 0.7, -0.05), 0.17), ((0.15, 0.25, -0.15), 0.17)), AUTUMN),
                                   fruit=None, pot_color=GREY, trunk=((0.06, 0.0), (0.05, 0.5)))),
                       Variant("ball topiary", "a two-ball topiary on a tall straight trunk in a black pot",
                               ["topiary", "ball topiary"],
                               dict(crown=blobs((((0.0, 0.12, 0.0), 0.18), ((0.0, 0.65, 0.0), 0.25)), [LIGHT_LEAF]),
                                    fruit=None, pot_color=BLACK, trunk=((0.04, 0.0), (0.04, 0.8)),
                                    pot_size=(0.28, 0.25))),
                       Variant("palm tree", "a palm tree with drooping fronds and coconuts in a sand-coloured pot",
                               ["palm tree", "coconut palm", "coconut tree"],
                               dict(crown=(), fronds=tuple(((0.0, 0.55, 0.0), 60 * k + 10, 32 + 14 * (k % 2), 0.55)
                                                           for k in range(6)),
                                    fruit=BROWN, fruit_on=((0.0, 0.47, 0.0), 0.09),
                                    fruits=tuple(ring(3, 1.0, -0.1, 0.7)),
                                    fruit_size=0.075, pot_color=SAND, trunk=((0.06, 0.0), (0.04, 0.86)),
                                    pot_size=(0.26, 0.26))),
                       Variant("cypress tree", "a tall, slim, dark green cypress in a yellow pot",
                               ["cypress tree", "cypress"],
                               dict(crown=(((0.0, 0.3, 0.0), (0.21, 0.45, 0.21),
                                            spots([(0.21 * u, 0.45 * v, 0.21 * w) for u, v, w in fibonacci(40)], 0.05,
                                                  DARK_LEAF, LEAF)),),
                                    tiers=((0.35, 0.175, 0.6),), tier_color=DARK_LEAF, fruit=None, pot_color=YELLOW,
                                    trunk=((0.05, 0.0), (0.04, 0.15)))),
                       Variant("lemon tree", "a tall oval lemon tree with yellow lemons in a white pot",
                               ["lemon tree"],
                               dict(crown=(((0.0, 0.42, 0.0), (0.26, 0.4, 0.26), LEAF),), fruit=YELLOW,
                                    fruit_on=None, fruit_size=0.055,
                                    fruits=tuple(ring(4, 1.0, 0.2) + ring(4, 1.0, 0.45, 0.8) + ring(3, 1.0, 0.65)),
                                    pot_color=WHITE, trunk=((0.05, 0.0), (0.04, 0.3)))),
                       Variant("blue spruce", "a blue-grey spruce of four tiers in a terracotta pot",
                               ["blue spruce", "spruce"],
                               dict(crown=(), tiers=((-0.2, 0.45, 0.4), (0.05, 0.38, 0.38), (0.28, 0.3, 0.33),
                                                     (0.48, 0.2, 0.3)),
                                    tier_color=(0.35, 0.55, 0.6), fruit=None, pot_color=TERRACOTTA,
                                    trunk=((0.06, 0.0), (0.05, 0.15)))),
                       Variant("jacaranda", "a wide jacaranda in purple bloom in a grey pot",
                               ["jacaranda", "purple tree"],
                               dict(crown=blobs((((0.0, 0.5, 0.0), 0.25), ((-0.38, 0.38, 0.05), 0.2),
                                                 ((0.38, 0.42, -0.05), 0.2), ((0.0, 0.4, 0.3), 0.18),
                                                 ((0.05, 0.42, -0.3), 0.18)), ((0.6, 0.45, 0.85), (0.5, 0.35, 0.8))),
                                    fruit=None, pot_color=GREY, trunk=((0.08, 0.0), (0.05, 0.6)))),
                       Variant("acacia", "a flat-topped acacia on a tall trunk in a sand-coloured pot",
                               ["acacia", "umbrella tree"],
                               dict(crown=(((0.0, 0.72, 0.0), (0.5, 0.12, 0.5), (0.45, 0.6, 0.2)),), fruit=None,
                                    pot_color=SAND, trunk=((0.07, 0.0), (0.04, 0.72)), pot_size=(0.28, 0.28))),
                   ]),
                   "sunflower": Family(sunflower, "sunflower", "sunflowers in a pot", ["sunflower"], [
                       Variant("two sunflowers", "two sunflowers, a big and a small one, in a mauve pot",
                               ["two sunflowers", "pair of sunflowers"]),
                       Variant("giant sunflower", "one huge sunflower and a small one in a terracotta pot",
                               ["giant sunflower", "huge sunflower"],
                               dict(heads=(((0.0, 0.55, 0.05), 0, 0.75), ((-0.25, 0.0, 0.12), -40, 0.28)), stems=None,
                                    petals=12, leaf_size=1.4, pot_color=TERRACOTTA)),
                       Variant("three sunflowers", "three sunflowers fanned out at different heights in a blue pot",
                               ["three sunflowers"],
                               dict(heads=(((-0.32, 0.35, 0.05), -35, 0.36), ((0.0, 0.65, 0.0), 0, 0.4),
                                           ((0.32, 0.15, 0.08), 35, 0.34)), stems=None, petals=12, pot_color=BLUE)),
                       Variant("red sunflowers", "two dark red sunflowers side by side in a yellow pot",
                               ["red sunflowers"],
                               dict(heads=(((-0.22, 0.4, 0.05), -25, 0.38), ((0.22, 0.3, 0.0), 25, 0.36)), stems=None,
                                    petal=(0.7, 0.1, 0.1), disc=(0.2, 0.1, 0.05), pot_color=YELLOW)),
                       Variant("orange sunflowers", "two many-petalled orange sunflowers in a black pot",
                               ["orange sunflowers"],
                               dict(heads=(((0.05, 0.5, 0.1), 10, 0.42), ((-0.2, 0.15, -0.15), -120, 0.36)), stems=None,
                                    petal=ORANGE, petals=18, pot_color=BLACK)),
                       Variant("sunflower bunch", "a bunch of four sunflowers facing every way in a white pot",
                               ["sunflower bunch", "bunch of sunflowers", "four sunflowers"],
                               dict(heads=(((0.13, 0.0, 0.3), 23, 0.38), ((0.3, 0.45, -0.14), 115, 0.38),
                                           ((-0.12, 0.1, -0.31), 200, 0.38), ((-0.3, 0.55, 0.12), 292, 0.38)),
                                    petals=11, stems=None, pot_color=WHITE, leaves=())),
                       Variant("tall sunflower", "a single sunflower on a very tall leafy stem in a small red pot",
                               ["tall sunflower", "single sunflower", "one sunflower"],
                               dict(heads=(((0.0, 0.8, 0.06), 0, 0.3),), stems=None, petals=16, pot_color=RED,
                                    leaves=(((0.11, -0.1, 0.0), -55), ((-0.11, 0.15, 0.0), 55),
                                            ((0.11, 0.4, 0.0), -55)),
                                    leaf_size=0.8, pot_size=(0.24, 0.22))),
                       Variant("ring of fire sunflowers", "three bicolour sunflowers, red around the centre and "
                               "yellow at the tips, in a green pot",
                               ["ring of fire sunflowers", "bicolour sunflowers", "bicolor sunflowers"],
                               dict(heads=(((-0.32, 0.2, 0.08), -25, 0.36), ((0.32, 0.25, 0.0), 25, 0.36),
                                           ((0.0, 0.5, -0.08), 0, 0.36)), stems=None, petals=12,
                                    petal=split((0.75, 0.12, 0.05), (1.0, 0.82, 0.1), at=0.04), pot_color=GREEN)),
                       Variant("lemon sunflowers", "two pale lemon sunflowers with green centres in a teal pot",
                               ["lemon sunflowers", "pale sunflowers"],
                               dict(heads=(((-0.15, 0.45, 0.08), -15, 0.45), ((0.25, 0.12, 0.05), 30, 0.34)),
                                    stems=None, petal=(1.0, 0.95, 0.6), disc=(0.3, 0.45, 0.15), pot_color=TEAL)),
                       Variant("five sunflowers", "five small sunflowers in a ring in an orange pot",
                               ["five sunflowers"],
                               dict(heads=tuple(((0.3 * math.sin(a), 0.3 + 0.08 * (k % 2), 0.3 * math.cos(a)),
                                                 math.degrees(a), 0.26) for k, a in
                                                enumerate((0.0, 1.26, 2.51, 3.77, 5.03))),
                                    stems=None, petals=10, pot_color=ORANGE, leaves=())),
                       Variant("pink sunflowers", "two pink sunflowers, one high and one low, in a navy pot",
                               ["pink sunflowers"],
                               dict(heads=(((0.1, 0.6, 0.05), 5, 0.4), ((-0.25, 0.05, 0.1), -30, 0.34)), stems=None,
                                    petal=(1.0, 0.5, 0.65), disc=(0.45, 0.15, 0.25), pot_color=NAVY)),
                       Variant("back-to-back sunflowers", "two big sunflowers facing opposite ways in a lime pot",
                               ["back-to-back sunflowers", "opposite sunflowers"],
                               dict(heads=(((0.0, 0.45, 0.12), 0, 0.42), ((0.0, 0.4, -0.12), 180, 0.42)), stems=None,
                                    pot_color=LIME)),
                   ]),
                   "tulips": Family(tulips, "tulips", "tulips in a pot", ["tulip"], [
                       Variant("mixed tulips", "a bunch of five tulips in mixed colours in a cream pot",
                               ["mixed tulips", "colourful tulips", "colorful tulips"]),
                       Variant("red tulips", "three tall red tulips in a navy pot", ["red tulips"],
                               dict(blooms=tuple((p, RED) for p in ((-0.25, 0.5, 0.05), (0.1, 0.68, -0.1),
                                                                    (0.18, 0.35, 0.18))),
                                    cup=1.5, pot_color=NAVY)),
                       Variant("yellow tulips", "six small yellow tulips in a wide terracotta pot", ["yellow tulips"],
                               dict(blooms=tuple((p, YELLOW) for p in ring(3, 0.34, 0.05) + ring(2, 0.16, 0.3, 0.8)
                                                 + [(0.0, 0.45, -0.05)]),
                                    cup=0.95, pot_color=TERRACOTTA, pot_size=(0.26, 0.38))),
                       Variant("purple tulips", "five purple tulips in a tall white pot", ["purple tulips"],
                               dict(blooms=tuple((p, PURPLE) for p in ring(4, 0.25, 0.25, 0.4) + [(0.0, 0.6, 0.0)]),
                                    pot_color=WHITE, pot_size=(0.55, 0.24))),
                       Variant("striped tulips", "red-and-yellow striped flame tulips in a green pot",
                               ["striped tulips", "flame tulips"],
                               dict(blooms=tuple((p, tiles([RED, YELLOW], around=10))
                                                 for p in ((-0.25, 0.25, 0.05), (0.22, 0.4, -0.05), (0.0, 0.55, 0.15))),
                                    cup=1.4, pot_color=GREEN)),
                       Variant("pink tulips", "four big pink tulips among many leaves in a black pot", ["pink tulips"],
                               dict(blooms=tuple((p, PINK) for p in ((-0.2, 0.3, 0.1), (0.2, 0.38, 0.0),
                                                                     (0.0, 0.5, -0.15), (0.0, 0.2, 0.2))),
                                    cup=1.6, leaf_size=1.4, leaf_turns=(0, 90), pot_color=BLACK)),
                       Variant("white tulips", "a bunch of seven white tulips in a red pot", ["white tulips"],
                               dict(blooms=tuple((p, WHITE)
                                                 for p in ring(4, 0.36, 0.12, 0.4) + ring(3, 0.16, 0.5, 1.0)),
                                    cup=1.0, leaf_turns=(0, 90), pot_color=RED)),
                       Variant("orange tulips", "two very tall orange tulips with long leaves in a small purple pot",
                               ["orange tulips", "two tulips"],
                               dict(blooms=(((-0.12, 0.75, 0.05), ORANGE), ((0.14, 0.55, -0.05), ORANGE)),
                                    cup=1.3, leaf_size=1.6, pot_color=PURPLE, pot_size=(0.26, 0.22))),
                       Variant("blue tulips", "four blue tulips in a yellow pot", ["blue tulips"],
                               dict(blooms=tuple((p, BLUE) for p in ((-0.2, 0.35, 0.0), (0.2, 0.4, 0.05),
                                                                     (0.0, 0.55, -0.12), (0.05, 0.25, 0.2))),
                                    cup=1.3, pot_color=YELLOW)),
                       Variant("single tulip", "one huge magenta tulip in a small grey pot",
                               ["single tulip", "one tulip", "magenta tulip"],
                               dict(blooms=(((0.0, 0.45, 0.0), (0.8, 0.1, 0.5)),), cup=2.2, leaf_size=1.2,
                                    pot_color=GREY, pot_size=(0.26, 0.24))),
                       Variant("peach tulips", "eight small peach tulips in a blue pot", ["peach tulips"],
                               dict(blooms=tuple((p, (1.0, 0.7, 0.5))
                                                 for p in ring(5, 0.32, 0.1) + ring(3, 0.14, 0.35)),
                                    cup=0.9, pot_color=BLUE, pot_size=(0.3, 0.36))),
                       Variant("black tulips", "three tall near-black tulips in a pink pot",
                               ["black tulips", "dark tulips"],
                               dict(blooms=tuple((p, (0.25, 0.05, 0.15)) for p in ((-0.18, 0.6, 0.0),
                                                                                  (0.15, 0.7, 0.05),
                                                                                  (0.0, 0.45, 0.15))),
                                    cup=1.4, leaf_size=1.3, pot_color=PINK)),
                   ]),
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


def build_family(family: Family, set_index: int, object_index: int) -> list[GaussianScene]:
    """The family's variants; variant k's seed is 1000·set + 100·k + object (k = 0: the original object)."""
    return [build_object(family.builder(**v.params), seed=1000 * set_index + 100 * k + object_index)
            for k, v in enumerate(family.variants)]


def build_all() -> dict[str, dict[str, list[GaussianScene]]]:
    """Every variant in memory: {set_id: {family_id: [scene per variant]}}."""
    return {set_id: {fid: build_family(family, s, i) for i, (fid, family) in enumerate(spec["families"].items())}
            for s, (set_id, spec) in enumerate(SETS.items())}


def set_meta(spec: dict) -> dict:
    """A set's ``set.json``: theme, and per family its caption, aliases and variants' files and texts."""
    families = [{"id": fid, "name": f.name, "caption": f.caption, "aliases": f.aliases,
                 "variants": [{"file": f"{fid}_{k}.ply", "name": v.name, "description": v.description,
                               "aliases": v.aliases} for k, v in enumerate(f.variants)]}
                for fid, f in spec["families"].items()]
    return {"name": spec["name"], "prompt": spec["prompt"], "theme": spec["theme"],
            "theme_aliases": spec["theme_aliases"], "families": families}


def build_sets(out_dir: Path = SCENES_DIR) -> dict[str, dict[str, list[GaussianScene]]]:
    """Write every set to ``out_dir/<set_id>/`` (``<family>_<k>.ply`` + set.json; other PLYs
    there are removed); returns the scenes as ``build_all``."""
    built = build_all()
    for set_id, families in built.items():
        folder = out_dir / set_id
        folder.mkdir(parents=True, exist_ok=True)
        files = set()
        for fid, scenes in families.items():
            for k, scene in enumerate(scenes):
                save_ply(scene, folder / f"{fid}_{k}.ply")
                files.add(f"{fid}_{k}.ply")
        for stale in folder.glob("*.ply"):
            if stale.name not in files:
                stale.unlink()
        (folder / "set.json").write_text(json.dumps(set_meta(SETS[set_id]), indent=2) + "\n")
    return built


def pairwise_psnr(scenes: list[GaussianScene], res: int = 64) -> Tensor:
    """[n, n] PSNR (dB) between the scenes' renders over the PSNR views (``cfd.framing``), white background."""
    from cfd.cameras import psnr_cameras
    from cfd.render import render

    with torch.no_grad():
        images = torch.stack([torch.stack([render(s, cam).rgb for cam in psnr_cameras(res)]).flatten()
                              for s in scenes]).double()
    mse = ((images[:, None] - images[None]) ** 2).mean(dim=2)
    return -10 * torch.log10(mse)


def vocabulary_problems() -> list[str]:
    """Variant names or aliases that are not unique, or that a family's or another variant's text mentions."""
    from cfd.vocabulary import _mentions, words

    texts = [(f"family {fid}", a) for spec in SETS.values() for fid, f in spec["families"].items() for a in f.aliases]
    texts += [(f"variant {v.name!r}", a) for spec in SETS.values() for f in spec["families"].values()
              for v in f.variants for a in (v.name, *v.aliases)]
    problems = []
    names = [v.name for spec in SETS.values() for f in spec["families"].values() for v in f.variants]
    problems += [f"variant name {n!r} is not unique" for n in sorted(set(names)) if names.count(n) > 1]
    for owner, alias in texts:
        if owner.startswith("variant"):
            problems += [f"{owner}: {alias!r} is mentioned by {other}'s {text!r}"
                         for other, text in texts if other != owner and _mentions(words(text), alias)]
    return problems


def check(built: dict[str, dict[str, list[GaussianScene]]], limit: float = MAX_PAIR_PSNR) -> bool:
    """Print each family's pairwise PSNR matrix and its worst pair, and any vocabulary
    problem; True if every pair is at most ``limit`` dB and the vocabulary is clean."""
    ok = True
    for set_id, families in built.items():
        for fid, scenes in families.items():
            names = [v.name for v in SETS[set_id]["families"][fid].variants]
            psnr = pairwise_psnr(scenes)
            worst = max((float(psnr[i, j]), names[i], names[j])
                        for i in range(len(names)) for j in range(i + 1, len(names)))
            ok &= worst[0] <= limit
            print(f"{set_id}/{fid}: max pairwise PSNR {worst[0]:.1f} dB ({worst[1]} vs {worst[2]})"
                  + ("" if worst[0] <= limit else f"  > {limit:.0f} dB"))
            width = max(len(n) for n in names)
            for i, n in enumerate(names):
                print(f"  {n:>{width}} " + " ".join("    -" if i == j else f"{float(psnr[i, j]):5.1f}"
                                                    for j in range(len(names))))
    for problem in vocabulary_problems():
        print(f"vocabulary: {problem}")
        ok = False
    return ok


def preview(sets: dict[str, dict[str, list[GaussianScene]]], path: Path, size: int = 96,
            azimuths=(0, 90, 180, 270), elevation: float = 15.0, per_family: bool = False) -> None:
    """PNG grid at the training radius/fov: one row per variant (all families), one
    column per azimuth; ``per_family``: one row per family, one column per
    variant, each from ``azimuths[0]``."""
    from PIL import Image

    from cfd.cameras import CameraRanges, orbit_camera
    from cfd.render import render

    ranges = CameraRanges()
    cams = [orbit_camera(a, elevation, ranges.eval_radius, ranges.eval_fov, size, size) for a in azimuths]
    rows = []
    with torch.no_grad():
        for families in sets.values():
            for scenes in families.values():
                if per_family:
                    rows.append(torch.cat([render(scene, cams[0]).rgb for scene in scenes], dim=1))
                else:
                    rows += [torch.cat(list(render(scene, cams).rgb), dim=1) for scene in scenes]
    grid = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SCENES_DIR, help="output folder (default: assets/scenes)")
    parser.add_argument("--preview", type=Path, help="also write a preview PNG grid here (a row per variant)")
    parser.add_argument("--gallery", type=Path,
                        help="also write a PNG grid here: a row per family, a column per variant (the README's)")
    parser.add_argument("--check", action="store_true",
                        help=f"build in memory (write nothing but the preview), print each family's pairwise PSNR; "
                             f"exit 1 if a pair is above {MAX_PAIR_PSNR:.0f} dB or an alias is ambiguous")
    args = parser.parse_args(argv)
    sets = build_all() if args.check else build_sets(args.out)
    for set_id, families in sets.items():
        print(f"{set_id}: " + ", ".join(f"{fid} ({len(scenes)} variants, {min(map(len, scenes))}–"
                                       f"{max(map(len, scenes))} splats)" for fid, scenes in families.items()))
    if args.preview:
        preview(sets, args.preview)
        print(f"preview: {args.preview}")
    if args.gallery:
        preview(sets, args.gallery, size=128, azimuths=(30,), per_family=True)
        print(f"gallery: {args.gallery}")
    if args.check and not check(sets):
        sys.exit(1)


if __name__ == "__main__":
    main()
