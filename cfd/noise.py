"""Multi-view consistent noise: a white-noise field on the object's surface.

Construction (its invariants: docs/design.md, section 3). Each output pixel is supersampled s×s; every
sub-pixel that hits the surface (alpha > 0.5) is lifted to its surface point
(ray origin + expected depth × direction) and quantised into a *cell* of a
parameterisation centred on the object (``scene_centre``: the opacity-weighted
mean of the splats; a run fixes its centre once, see
``cfd.distill.noise_source``):

- ``shell_cells`` (the default): the direction from the centre on an
  equi-angular cube map, cut by radius into shells [c·ρᵏ, c·ρᵏ⁺¹) (c = cell
  size, ρ = SHELL_RATIO = 1.3); each shell's angular grid is one cell size wide
  at the shell's middle radius. A cell is about c across at every radius, so
  the consistency does not depend on the object's size or position; points on
  one ray at different radii get different cells; and the shells are thick
  (0.26·r), so the jitter of a splat surface's expected depth between views,
  which moves points along the ray, rarely changes a point's cell.
- ``lattice_cells``: a plain 3D lattice, the benchmark's baseline.

Why these choices (shells over the two parameterisations this replaced, the
shell ratio, centring on the object, the cell size in output pixels): measured
as cross-view correlation with ``python -m cfd.bench noise`` and as PSNR on the
toy benchmark; the figures are in docs/noise.md, "Cross-view correlation and cost".

Every cell holds an i.i.d. N(0, 1) value per channel, a counter-based hash of
(seed, cell, channel) — no tables, any number of cells. Each cell seen by a
view is *owned* by exactly one pixel (the one with most of its sub-samples),
and a pixel's noise is the sum of its owned cells divided by √count: every
pixel and channel of a view is exactly N(0, 1) and independent of the others,
and a surface region carries the same values into every view that sees it.
Sub-pixels that miss the surface contribute one image-space background cell
per pixel (fixed for the run); a pixel left with no cell gets its own
image-space cell too.

The computation has fixed shapes (sort-based ownership, no compaction), so on
CUDA it makes no host sync, and its sums run on integers (int64 fixed point),
so a seed gives the same noise bit for bit on a GPU too (float atomics would
not).

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

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Camera
from .gaussians import GaussianScene
from .schedule import GammaSchedule

SURFACE_ALPHA = 0.5
CELL_PIXELS = 0.625              # default cell: 0.625 output pixels wide at the origin's distance (docs/noise.md)
SHELL_RATIO = 1.3                # outer / inner radius of a shell of ``shell_cells``
TREE_LEVELS = 16                 # the SDE field is defined for steps 0 … 2^16
FIXED_POINT = 2.0 ** 32          # per-pixel sums run in int64 units of 2^-32: exact, in any order
_TAG_BACKGROUND = 1 << 61        # cell ids use bits 0–60; image-space cells are tagged above them
_TAG_ORPHAN = 1 << 62
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


def mix64_int(x: int) -> int:
    """``mix64`` of one Python int (as the int64 it returns), with no tensor op."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return _signed(x ^ (x >> 31))


def hash_normal(keys: Tensor) -> Tensor:
    """One N(0,1) float32 per int64 key (Box–Muller on two 24-bit uniforms)."""
    h = mix64(keys)
    u1 = (_shr(h, 40).float() + 0.5) / 2**24
    u2 = ((h & 0xFFFFFF).float() + 0.5) / 2**24
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


# ------------------------------------------------------------------ cells

def scene_centre(scene: GaussianScene) -> tuple[float, float, float]:
    """The opacity-weighted mean of the splat centres (the origin for an empty scene)."""
    w = scene.opacities.detach()
    centre = (scene.means.detach() * w[:, None]).sum(0) / w.sum().clamp_min(1e-12)
    return tuple(centre.tolist())


def shell_cells(q: Tensor, cell_size: float) -> Tensor:
    """[M,3] points relative to the centre → [M] int64 cell ids (bits 0–60).

    The direction on an equi-angular cube map (six faces, each a square grid
    of equal angles), cut by radius into shells [c·ρᵏ, c·ρᵏ⁺¹) (c = cell_size,
    ρ = SHELL_RATIO; points closer than c share shell 0). Shell k's faces have
    ⌈r_k·(π/2)/c⌉ cells per side, r_k its middle radius, so a cell is about c
    across at every radius.
    """
    r = q.norm(dim=-1).clamp_min(cell_size)
    axis = q.abs().argmax(-1)
    major = torch.gather(q, 1, axis[:, None])[:, 0]
    face = 2 * axis + (major < 0).long()
    other = torch.stack([torch.where(axis == 0, q[:, 1], q[:, 0]),
                         torch.where(axis == 2, q[:, 1], q[:, 2])], -1)
    angle = torch.atan(other / major.abs().clamp_min(1e-12)[:, None]) / (math.pi / 2) + 0.5   # in [0, 1]
    shell = torch.floor(torch.log(r / cell_size) / math.log(SHELL_RATIO))
    side = torch.ceil(SHELL_RATIO ** (shell + 0.5) * (math.pi / 2))[:, None]          # cells per face side
    iuv = torch.minimum(torch.floor(angle * side), side - 1).long()
    return (face << 58) | (shell.long() << 40) | (iuv[:, 0] << 20) | iuv[:, 1]


def lattice_cells(q: Tensor, cell_size: float) -> Tensor:
    """[M,3] points → [M] int64 ids of a plain 3D lattice (the benchmark's baseline)."""
    ijk = (q / cell_size).floor().long() + (1 << 19)
    return (ijk[:, 0] << 40) | (ijk[:, 1] << 20) | ijk[:, 2]


CELL_METHODS = {"shells": shell_cells, "lattice": lattice_cells}


# ------------------------------------------------------------- cell values

def cell_values(cells: Tensor, seed: int, channels: int, step: int = 0,
                gamma: float | GammaSchedule = 0.0) -> Tensor:
    """[M] int64 cell ids → [M, C] N(0,1) values of the field at ``step``.

    γ = 0: the ODE field, a pure function of (seed, cell, channel).
    γ > 0 (a constant, or a ``GammaSchedule`` of per-step γ_k): the SDE field
    after ``step`` refreshes n ← √(1−γ_k) n + √γ_k ξ, evaluated exactly on a
    dyadic tree of AR(1) bridges (see the module doc).
    """
    base = mix64(cells ^ mix64_int(seed))
    keys = base[:, None] + _channel_offsets(channels, cells.device)  # [M, C]
    value = hash_normal(keys)  # node 0: W(T_0) = W(1)
    if not isinstance(gamma, GammaSchedule):
        if gamma <= 0:
            return value
        gamma = GammaSchedule(gamma, steps=1)  # checks 0 < γ < 1
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
    x_hi = math.sqrt(decay(lo, hi)) * x_lo + math.sqrt(keep(lo, hi)) * hash_normal(keys + 1).double()
    node = 1
    while step not in (lo, hi):
        mid = (lo + hi) // 2
        mean = (math.sqrt(decay(lo, mid)) * keep(mid, hi) * x_lo
                + math.sqrt(decay(mid, hi)) * keep(lo, mid) * x_hi) / keep(lo, hi)
        std = math.sqrt(keep(lo, mid) * keep(mid, hi) / keep(lo, hi))
        x_mid = mean + std * hash_normal(keys + 2 * node + 2).double()
        node = 2 * node + (step >= mid)
        if step >= mid:
            lo, x_lo = mid, x_mid
        else:
            hi, x_hi = mid, x_mid
    return (x_lo if step == lo else x_hi).float()


@functools.cache
def _channel_offsets(channels: int, device: torch.device) -> Tensor:
    """[C] int64 key offsets of the channels, built once per device."""
    return torch.arange(channels, dtype=torch.int64, device=device) * _GOLDEN


@functools.cache
def _pixel_keys(n_pixels: int, supersample: int, views: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The constant index tensors of ``views`` views of one noise grid, built once:
    the pixel of each pixel-major sub-sample [M] (view v's pixels are v·n_pixels
    + 0 … n_pixels − 1), its background cell [M] and each pixel's orphan cell
    [n_pixels] (image-space cells: the same in every view)."""
    pixels = torch.arange(views * n_pixels * supersample ** 2, device=device) // supersample ** 2
    return pixels, _TAG_BACKGROUND | (pixels % n_pixels), _TAG_ORPHAN | torch.arange(n_pixels, device=device)


# ------------------------------------------------------------ the noise

def default_cell_size(camera: Camera) -> float:
    """CELL_PIXELS × the world size of one output pixel at the distance of the
    origin (``camera`` at output resolution): the same for every orbit view of
    one radius. Pass an explicit cell size to make views with different zoom
    share cells."""
    distance = float(camera.position.norm())
    return CELL_PIXELS * distance / float(camera.K[1, 1])


@functools.lru_cache(maxsize=16)
def _surface_points(depth: Tensor, camera: Camera, centre) -> Tensor:
    """[sH, sW, 3] points ray origin + depth × direction (``Camera.pixel_rays``
    of the camera at depth's size), relative to ``centre``, on depth's device."""
    origin, dirs = camera.pixel_rays(depth.device)
    origin = [p - c for p, c in zip(origin.tolist(), centre)]
    return torch.stack([origin[k] + depth * dirs[..., k] for k in range(3)], -1)


def assign_cells(cells: Tensor, pixels: Tensor, n_pixels: int, view_pixels: int | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Give every distinct cell of a view to exactly one pixel: the pixel
    holding most of the cell's sub-samples (ties: the lowest pixel index).

    cells [M] int64, pixels [M] long, non-decreasing: the cell and the pixel of
    each sub-sample, of ``n_pixels`` pixels in all; ``view_pixels``: pixels per
    view when the sub-samples are of several views (pixel // view_pixels is the
    view; a cell is owned once per view that sees it). Every shape is fixed (no
    host sync on CUDA) and every reduction is on integers (deterministic).
    Returns, over the sub-samples sorted by cell: the cells [M], ``first`` [M]
    (True at the first sub-sample of each distinct cell of a view) and the pixel
    that owns each sub-sample's cell [M].
    """
    cells, order = torch.sort(cells, stable=True)  # stable: pixels (and views) stay sorted within a cell
    pixels = pixels[order]
    first = torch.ones_like(cells, dtype=torch.bool)
    first[1:] = cells[1:] != cells[:-1]
    if view_pixels is not None and view_pixels < n_pixels:
        views = pixels // view_pixels
        first[1:] |= views[1:] != views[:-1]
    new_pair = first.clone()
    new_pair[1:] |= pixels[1:] != pixels[:-1]
    cell_id, pair_id = first.cumsum(0) - 1, new_pair.cumsum(0) - 1
    samples = torch.zeros_like(pair_id).index_add_(0, pair_id, torch.ones_like(pair_id))[pair_id]
    score = samples * n_pixels + (n_pixels - 1 - pixels)  # most sub-samples first, then the lowest pixel
    best = torch.zeros_like(score).scatter_reduce_(0, cell_id, score, "amax")
    return cells, first, n_pixels - 1 - best[cell_id] % n_pixels


def noise_from_surface(depth: Tensor, alpha: Tensor, camera: Camera, seed: int, *, supersample: int,
                       channels: int = 4, cell_size: float | None = None, centre=(0.0, 0.0, 0.0),
                       method: str = "shells", step: int = 0, gamma: float | GammaSchedule = 0.0) -> Tensor:
    """Consistent noise from an already rendered surface.

    depth, alpha: [s·H, s·W] expected camera z and opacity of a render by
    ``camera`` (at that supersampled resolution), s = ``supersample``.
    Returns [C, H, W] float32 noise on depth's device, each pixel and channel
    N(0,1), independent within the view. ``cell_size``: world units (default:
    see ``default_cell_size``); ``centre``: of the cell parameterisation
    (``method``, a key of CELL_METHODS). One view of ``noise_from_surfaces``.
    """
    return noise_from_surfaces(depth[None], alpha[None], [camera], seed, supersample=supersample,
                               channels=channels, cell_size=cell_size, centre=centre, method=method, step=step,
                               gamma=gamma)[0]


def noise_from_surfaces(depth: Tensor, alpha: Tensor, cameras: list[Camera], seed: int, *, supersample: int,
                        channels: int = 4, cell_size: float | None = None, centre=(0.0, 0.0, 0.0),
                        method: str = "shells", step: int = 0, gamma: float | GammaSchedule = 0.0) -> Tensor:
    """``noise_from_surface`` of B views at once: depth, alpha [B, s·H, s·W] of
    renders by ``cameras`` (B of them, all of one size) → [B, C, H, W]. Each view's
    noise is exactly what it gets alone: cells are owned per view (the sort keeps
    the views apart), image-space cells are the same in every view, and the sums
    are integers."""
    B, sH, sW = depth.shape
    s = supersample
    if sH % s or sW % s:
        raise ValueError(f"render size {sW}×{sH} is not a multiple of supersample={s}")
    H, W = sH // s, sW // s
    n_pix = H * W
    dev = depth.device
    if cell_size is None:
        cell_size = default_cell_size(cameras[0].scaled(1 / s))

    def pixel_major(x: Tensor) -> Tensor:  # [B, sH, sW, ...] → [B·H·W·s², ...]: sub-sample i lies in pixel i // s²
        return x.reshape(B, H, s, W, s, *x.shape[3:]).transpose(2, 3).reshape(B * n_pix * s * s, *x.shape[3:])

    points = pixel_major(torch.stack([_surface_points(d.detach().float(), cam, centre)
                                      for d, cam in zip(depth, cameras)]))
    hit = pixel_major(alpha.detach()) > SURFACE_ALPHA
    pixels, background, orphans = _pixel_keys(n_pix, s, B, depth.device)
    # sub-samples that miss the surface fall in their pixel's image-space background cell
    cells = torch.where(hit, CELL_METHODS[method](points, cell_size), background)
    cells, first, owner = assign_cells(cells, pixels, B * n_pix, n_pix)
    # a pixel that owns no cell (its sub-samples' cells went to neighbours) gets an image-space cell of its own:
    # its value is drawn in the same call as the cells'
    values = cell_values(torch.cat([cells, orphans]), seed, channels, step, gamma)
    values, orphan = values[:len(cells)] * first[:, None], values[len(cells):]  # each distinct cell once per view
    total = torch.zeros(B * n_pix, channels, dtype=torch.int64, device=dev).index_add_(
        0, owner, (values.double() * FIXED_POINT).round().long())
    count = torch.zeros(B * n_pix, dtype=torch.int64, device=dev).index_add_(0, owner, first.long())
    mean = total.double() / FIXED_POINT / count.clamp_min(1).double().sqrt()[:, None]
    noise = torch.where((count > 0)[:, None], mean, orphan.double().repeat(B, 1))
    return noise.float().reshape(B, H, W, channels).permute(0, 3, 1, 2).contiguous()


def consistent_noise(scene: GaussianScene, camera: Camera, seed: int, channels: int = 4,
                     supersample: int = 4, *, centre=None, **kwargs) -> Tensor:
    """[C, H, W] consistent noise of ``scene`` seen by ``camera`` (H, W = the
    camera's size). Renders depth and alpha itself at ``supersample``× the
    resolution. ``centre``: of the cells (default: ``scene_centre(scene)``);
    other keyword arguments go to ``noise_from_surface`` (cell_size, method,
    step, gamma)."""
    from .render import render

    cam_ss = camera.scaled(supersample)
    with torch.no_grad():
        out = render(scene.detach(), cam_ss)
    return noise_from_surface(out.depth, out.alpha, cam_ss, seed, supersample=supersample, channels=channels,
                              centre=scene_centre(scene) if centre is None else centre, **kwargs)


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

    def __init__(self, seed: int, supersample: int, cell_size: float, centre=(0.0, 0.0, 0.0),
                 gamma: float | GammaSchedule = 0.0, method: str = "shells"):
        self.seed, self.supersample, self.cell_size, self.centre = seed, supersample, cell_size, tuple(centre)
        self.gamma, self.method = gamma, method

    def sample(self, step, shape, surfaces=None):
        return noise_from_surfaces(torch.stack([s.depth for s in surfaces]), torch.stack([s.alpha for s in surfaces]),
                                   [s.camera for s in surfaces], self.seed, supersample=self.supersample,
                                   channels=shape[1], cell_size=self.cell_size, centre=self.centre,
                                   method=self.method, step=step, gamma=self.gamma)


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
