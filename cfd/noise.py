"""Multi-view consistent noise: a white-noise field on the object's surface.

Construction (DESIGN.md §5). Each output pixel is supersampled s×s; every
sub-pixel that hits the surface (alpha > 0.5) is lifted to its surface point
(ray origin + expected depth × direction) and quantised into a *cell*. Cells
come from a cube-map parameterisation of the direction from the origin (six
faces, a square grid on each; ``method="cubemap"``), so the jitter of a splat
surface's expected depth between views — which moves points along the viewing
ray, mostly towards or away from the origin — rarely moves a point into
another cell. (A plain 3D lattice, ``method="lattice"``, is kept for the
benchmark: every depth wobble can move its points across cell boundaries; it
measured 0.52–0.53 cross-view correlation against the cube map's 0.55–0.59.)

Every cell holds an i.i.d. N(0, 1) value per channel, a counter-based hash of
(seed, cell, channel) — no tables, any number of cells. Each cell seen by a
view is *owned* by exactly one pixel (the one with most of its sub-samples),
and a pixel's noise is the sum of its owned cells divided by √count: every
pixel and channel of a view is exactly N(0, 1) and independent of the others,
and a surface region carries the same values into every view that sees it.
Sub-pixels that miss the surface contribute one image-space background cell
per pixel (fixed for the run); a pixel left with no cell gets its own
image-space cell too.

SDE mode refreshes the field by n ← √(1−γ)·n + √γ·ξ per step. Per cell this is
the AR(1) process n_k = ρ^k W(ρ^{−2k}) with ρ = √(1−γ) and W a Brownian motion,
which we evaluate at any step k exactly with a dyadic Brownian tree of
counter-based hashes: O(log k) work, N(0, 1) marginals, correlation ρ^|k−j|.
A per-step γ_k (``schedule.GammaSchedule``) is the same process in the clock
s_k = Σ_{i≤k} −log(1−γ_i): every bridge of the tree uses the clock differences
of its ends instead of step counts, so it stays exact, with correlation
exp(−½|s_k − s_j|) between steps j and k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Camera
from .gaussians import GaussianScene
from .schedule import GammaSchedule

SURFACE_ALPHA = 0.5
CELL_FACTOR = 2.0                # default cell: 2 sub-pixels wide (best measured consistency)
TREE_LEVELS = 16                 # the SDE field is defined for steps 0 … 2^16
_TAG_BACKGROUND = 1 << 61
_TAG_ORPHAN = 1 << 60
_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit unsigned constant as the int64 torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_M1, _M2, _GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser: a bijective, well-mixing hash of int64 → int64."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def hash_normal(keys: Tensor) -> Tensor:
    """One N(0,1) float32 per int64 key (Box–Muller on two 24-bit uniforms)."""
    h = mix64(keys)
    u1 = (_shr(h, 40).float() + 0.5) / 2**24
    u2 = ((h & 0xFFFFFF).float() + 0.5) / 2**24
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


# ------------------------------------------------------------------ cells

def cubemap_cells(points: Tensor, cell_size: float, reference_radius: float = 0.5) -> Tensor:
    """[M,3] surface points → [M] int64 cube-map cell ids. The grid has
    round(2·reference_radius / cell_size) cells per face side, so cells are
    ``cell_size`` wide on a sphere of ``reference_radius``."""
    a = points.abs()
    axis = a.argmax(-1)
    major = torch.gather(points, 1, axis[:, None])[:, 0]
    face = 2 * axis + (major < 0).long()
    other = torch.stack([torch.where(axis == 0, points[:, 1], points[:, 0]),
                         torch.where(axis == 2, points[:, 1], points[:, 2])], -1)
    uv = other / major.abs().clamp_min(1e-12)[:, None]                  # in [-1, 1]
    grid = max(1, round(2 * reference_radius / cell_size))
    iuv = ((uv + 1) * (grid / 2)).floor().long().clamp(0, grid - 1)
    return (face << 48) | (iuv[:, 0] << 24) | iuv[:, 1]


def lattice_cells(points: Tensor, cell_size: float) -> Tensor:
    """[M,3] points → [M] int64 ids of a plain 3D lattice (benchmark baseline)."""
    ijk = (points / cell_size).floor().long() + (1 << 19)
    return (ijk[:, 0] << 40) | (ijk[:, 1] << 20) | ijk[:, 2]


CELL_METHODS = {"cubemap": cubemap_cells, "lattice": lattice_cells}


# ------------------------------------------------------------- cell values

def cell_values(cells: Tensor, seed: int, channels: int, step: int = 0,
                gamma: float | GammaSchedule = 0.0) -> Tensor:
    """[M] int64 cell ids → [M, C] N(0,1) values of the field at ``step``.

    γ = 0: the ODE field, a pure function of (seed, cell, channel).
    γ > 0 (a constant, or a ``GammaSchedule`` of per-step γ_k): the SDE field
    after ``step`` refreshes n ← √(1−γ_k) n + √γ_k ξ, evaluated exactly on a
    dyadic tree of AR(1) bridges (see the module doc).
    """
    base = mix64(cells ^ mix64(torch.tensor(seed, dtype=torch.int64)))
    keys = base[:, None] + torch.arange(channels, dtype=torch.int64, device=cells.device) * _GOLDEN  # [M, C]
    value = hash_normal(mix64(keys))  # node 0: W(T_0) = W(1)
    if not isinstance(gamma, GammaSchedule):
        if gamma <= 0 or step == 0:
            return value
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1) for the SDE field, got {gamma}")
        gamma = GammaSchedule(gamma, steps=1)
    if step == 0:
        return value
    if step > 1 << TREE_LEVELS:
        raise ValueError(f"the SDE field is defined up to step {1 << TREE_LEVELS}, got {step}")

    def decay(j: int, k: int) -> float:  # Π_{i=j+1..k} (1−γ_i) = ρ^(2(k−j)) for a constant γ
        return math.exp(-gamma.log_decay(j, k))

    def keep(j: int, k: int) -> float:   # 1 − decay, accurate for tiny γ
        return -math.expm1(-gamma.log_decay(j, k))

    # walk down a dyadic tree of steps, sampling each midpoint from the exact
    # AR(1) bridge between the two ends (Markov: only they matter)
    lo, hi = 0, 1 << TREE_LEVELS
    x_lo = value.double()
    x_hi = math.sqrt(decay(lo, hi)) * x_lo + math.sqrt(keep(lo, hi)) * hash_normal(mix64(keys + 1)).double()
    node = 1
    while step not in (lo, hi):
        mid = (lo + hi) // 2
        mean = (math.sqrt(decay(lo, mid)) * keep(mid, hi) * x_lo
                + math.sqrt(decay(mid, hi)) * keep(lo, mid) * x_hi) / keep(lo, hi)
        std = math.sqrt(keep(lo, mid) * keep(mid, hi) / keep(lo, hi))
        x_mid = mean + std * hash_normal(mix64(keys + 2 * node + 2)).double()
        node = 2 * node + (step >= mid)
        if step >= mid:
            lo, x_lo = mid, x_mid
        else:
            hi, x_hi = mid, x_mid
    return (x_lo if step == lo else x_hi).float()


# ------------------------------------------------------------ the noise

def default_cell_size(camera: Camera, supersample: int) -> float:
    """CELL_FACTOR × the world size of one sub-pixel at the distance of the
    origin (``camera`` at output resolution). Pass an explicit cell size to make
    views with different zoom share cells."""
    distance = float(camera.position.norm())
    return CELL_FACTOR * distance / (float(camera.K[1, 1]) * supersample)


def assign_cells(cells: Tensor, pixels: Tensor, n_pixels: int) -> tuple[Tensor, Tensor]:
    """Give every distinct cell of a view to exactly one pixel.

    cells [M] int64, pixels [M] long: the cell and pixel of each sub-sample.
    Returns the unique cells [U] and their owner pixels [U]: the pixel holding
    most of the cell's sub-samples (ties: the lowest pixel index).
    """
    uniq_cells, cell_idx = torch.unique(cells, return_inverse=True)
    pairs, counts = torch.unique(cell_idx * n_pixels + pixels, return_counts=True)
    pair_cell = pairs // n_pixels
    order = torch.argsort(-counts, stable=True)
    order = order[torch.argsort(pair_cell[order], stable=True)]
    first = torch.ones(len(order), dtype=torch.bool, device=cells.device)
    first[1:] = pair_cell[order][1:] != pair_cell[order][:-1]
    return uniq_cells, (pairs[order] % n_pixels)[first]


def noise_from_surface(depth: Tensor, alpha: Tensor, camera: Camera, seed: int, *, supersample: int,
                       channels: int = 4, cell_size: float | None = None, method: str = "cubemap",
                       step: int = 0, gamma: float | GammaSchedule = 0.0) -> Tensor:
    """Consistent noise from an already rendered surface.

    depth, alpha: [s·H, s·W] expected camera z and opacity of a render by
    ``camera`` (at that supersampled resolution), s = ``supersample``.
    Returns [C, H, W] float32 noise, each pixel and channel N(0,1), independent
    within the view. ``cell_size``: world units (default: one sub-pixel at the
    origin's distance, see ``default_cell_size``).
    """
    sH, sW = depth.shape
    s = supersample
    if sH % s or sW % s:
        raise ValueError(f"render size {sW}×{sH} is not a multiple of supersample={s}")
    H, W = sH // s, sW // s
    n_pix = H * W
    dev = depth.device  # runs where the render is (no host round trip on CUDA)
    depth, alpha = depth.detach().float(), alpha.detach().float()
    cam = camera.to(dev)
    if cell_size is None:
        cell_size = default_cell_size(cam.scaled(1 / s), s)
    rows = torch.arange(sH, device=dev) // s
    cols = torch.arange(sW, device=dev) // s
    pixel_of = (rows[:, None] * W + cols[None, :]).reshape(-1)

    surface = (alpha > SURFACE_ALPHA).reshape(-1)
    origin, dirs = cam.pixel_rays()
    points = origin + depth.reshape(-1, 1)[surface] * dirs.reshape(-1, 3)[surface]
    cells = CELL_METHODS[method](points, cell_size)
    pix = pixel_of[surface]

    uniq_cells, owner = assign_cells(cells, pix, n_pix)

    # background sub-samples: one image-space cell per pixel; pixels with no cell get their own
    has_background = torch.zeros(n_pix, dtype=torch.bool, device=dev)
    has_background[pixel_of[~surface]] = True
    n_cells = torch.zeros(n_pix, dtype=torch.long, device=dev).index_add_(0, owner, torch.ones_like(owner))
    orphan = (n_cells == 0) & ~has_background
    pixel_ids = torch.arange(n_pix, dtype=torch.int64, device=dev)
    extra_keys = torch.cat([_TAG_BACKGROUND | pixel_ids[has_background], _TAG_ORPHAN | pixel_ids[orphan]])
    extra_pix = torch.cat([pixel_ids[has_background], pixel_ids[orphan]])

    keys = torch.cat([uniq_cells, extra_keys])
    pix_all = torch.cat([owner, extra_pix])
    values = cell_values(keys, seed, channels, step, gamma)                # [M', C]
    total = torch.zeros(n_pix, channels, device=dev).index_add_(0, pix_all, values)
    count = torch.zeros(n_pix, device=dev).index_add_(0, pix_all, torch.ones(len(pix_all), device=dev))
    noise = total / count.sqrt()[:, None]
    return noise.T.reshape(channels, H, W).contiguous()


def consistent_noise(scene: GaussianScene, camera: Camera, seed: int, channels: int = 4,
                     supersample: int = 4, **kwargs) -> Tensor:
    """[C, H, W] consistent noise of ``scene`` seen by ``camera`` (H, W = the
    camera's size). Renders depth and alpha itself at ``supersample``× the
    resolution; keyword arguments go to ``noise_from_surface`` (cell_size,
    method, step, gamma)."""
    from .render import render

    cam_ss = camera.scaled(supersample)
    with torch.no_grad():
        out = render(scene.detach(), cam_ss)
    return noise_from_surface(out.depth, out.alpha, cam_ss, seed, supersample=supersample,
                              channels=channels, **kwargs)


# ------------------------------------------------- noise sources of the loop

@dataclass(frozen=True)
class Surface:
    """What a consistent source needs of a view: its supersampled render."""

    depth: Tensor    # [s·h, s·w]
    alpha: Tensor    # [s·h, s·w]
    camera: Camera   # at s·h × s·w


class NoiseSource:
    """The noise ε̃ that the loop adds at each step, one per method family."""

    needs_surface = False

    def sample(self, step: int, shape: tuple[int, int, int, int],
               surfaces: list[Surface] | None = None) -> Tensor:
        """[B, C, h, w] noise for ``step`` (surfaces: one per view when needed)."""
        raise NotImplementedError


class IIDNoise(NoiseSource):
    """Fresh i.i.d. N(0, 1) every step (SDS, and the ``iid`` ablation)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, step, shape, surfaces=None):
        return torch.randn(shape, generator=self.generator)


class FixedImageNoise(NoiseSource):
    """One 2D noise image reused for every view and step (``fixed2d`` ablation)."""

    def __init__(self, seed: int):
        self.seed = seed

    def sample(self, step, shape, surfaces=None):
        one = torch.randn((1,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(self.seed))
        return one.expand(shape).clone()


class SurfaceNoise(NoiseSource):
    """Consistent noise on the surface (``cfd``); with γ > 0 refreshed every step
    by n ← √(1−γ) n + √γ ξ (``cfd-sde``; γ a constant or a ``GammaSchedule``)."""

    needs_surface = True

    def __init__(self, seed: int, supersample: int, cell_size: float, gamma: float | GammaSchedule = 0.0,
                 method: str = "cubemap"):
        self.seed, self.supersample, self.cell_size = seed, supersample, cell_size
        self.gamma, self.method = gamma, method

    def sample(self, step, shape, surfaces=None):
        return torch.stack([noise_from_surface(s.depth, s.alpha, s.camera, self.seed, supersample=self.supersample,
                                               channels=shape[1], cell_size=self.cell_size, method=self.method,
                                               step=step, gamma=self.gamma) for s in surfaces])


def cross_view_correlation(noise_a: Tensor, noise_b: Tensor, camera_a: Camera, camera_b: Camera,
                           depth_a: Tensor, alpha_a: Tensor, depth_b: Tensor, alpha_b: Tensor,
                           depth_tolerance: float = 0.05) -> tuple[float, int]:
    """Correlation between view A's noise and view B's noise at each pixel's
    reprojection (nearest pixel, through A's expected depth), over pixels that
    are opaque (alpha > 0.99) in both views and not occluded in B.

    noise_*: [C, H, W]; depth_*, alpha_*: [H, W] renders at the same size.
    Returns (Pearson correlation, number of pixels used).
    """
    H, W = depth_a.shape
    origin, dirs = camera_a.pixel_rays()
    points = origin + depth_a[..., None] * dirs
    p_cam = points @ camera_b.viewmat[:3, :3].T + camera_b.viewmat[:3, 3]
    uvw = p_cam @ camera_b.K.T
    col = (uvw[..., 0] / uvw[..., 2]).floor().long()
    row = (uvw[..., 1] / uvw[..., 2]).floor().long()
    inside = (row >= 0) & (row < H) & (col >= 0) & (col < W) & (alpha_a > 0.99)
    r, c = row.clamp(0, H - 1), col.clamp(0, W - 1)
    ok = inside & (alpha_b[r, c] > 0.99) & ((depth_b[r, c] - p_cam[..., 2]).abs() < depth_tolerance)
    a, b = noise_a[:, ok].reshape(-1), noise_b[:, r[ok], c[ok]].reshape(-1)
    if a.numel() < 2:
        return float("nan"), 0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1]), int(ok.sum())
