"""Differentiable rendering of Gaussian splats.

``render`` is the one public entry. On CUDA tensors it calls gsplat's fused
kernels (``gsplat.rasterization``); on CPU it runs ``render_torch``, our own
tiled pure-torch compositor with the kernel's semantics:

- EWA projection with gsplat's pinhole clamping and a 0.3 px² blur (eps2d);
- per-axis screen extent ceil(3.33 σ), splats nearer than 0.01 culled;
- α = min(0.999, o·exp(−½ dᵀ Σ⁻¹ d)), contributions with α < 1/255 skipped;
- front-to-back by camera depth, a pixel stops before its transmittance would
  fall to ≤ 1e-4;
- colour = SH (any degree) + 0.5, clamped at 0; depth = Σ wᵢ zᵢ / Σ wᵢ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Camera
from .gaussians import GaussianScene, quat_to_rotmat

NEAR_PLANE = 0.01
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EXTENT_SIGMAS = 3.33


@dataclass
class RenderOutput:
    """rgb [H,W,3] in [0,1] over the background; alpha [H,W] in [0,1]; depth [H,W]
    expected camera z (0 where nothing is hit); means2d [N,2] projected centres in
    pixels ([1,N,2] from gsplat; grad retained for densification, read it with
    ``means2d_grad_norm``); radii [N] screen extent in pixels (0 = not visible)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor

    def means2d_grad_norm(self, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """[N] norm of the loss gradient w.r.t. the projected centres (pixels), each
        axis multiplied by ``scale`` (x, y) first, after backward; zeros when none
        reached them. Drives densification."""
        grad = self.means2d.grad
        if grad is None:
            return torch.zeros(self.radii.shape[0], device=self.radii.device)
        grad = grad.reshape(-1, 2)
        return torch.stack([grad[:, 0] * scale[0], grad[:, 1] * scale[1]], -1).norm(dim=-1)


def render(scene: GaussianScene, camera: Camera, background=(1.0, 1.0, 1.0), *,
           tile_size: int = 8) -> RenderOutput:
    """Render ``scene`` from ``camera`` over a constant ``background`` colour
    (3 floats or a [3] tensor). Differentiable in every scene parameter and the
    background. Dispatches on the scene's device: gsplat kernels on CUDA, our
    pure-torch compositor elsewhere."""
    bg = torch.as_tensor(background, dtype=torch.float32, device=scene.device)
    if scene.device.type == "cuda":
        return _render_gsplat(scene, camera.to(scene.device), bg)
    return render_torch(scene, camera.to(scene.device), bg, tile_size=tile_size)


# ----------------------------------------------------------------- CUDA path

def _render_gsplat(scene: GaussianScene, camera: Camera, bg: Tensor) -> RenderOutput:
    from gsplat import rasterization

    colors, alphas, meta = rasterization(
        scene.means, scene.rotations, scene.scales, scene.opacities, scene.sh,
        camera.viewmat[None], camera.K[None], camera.width, camera.height,
        sh_degree=scene.sh_degree, near_plane=NEAR_PLANE, eps2d=EPS2D,
        render_mode="RGB+ED", packed=False,
    )
    alpha = alphas[0, ..., 0]
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    rgb = colors[0, ..., :3] + (1 - alpha)[..., None] * bg
    depth = torch.where(alpha > 0, colors[0, ..., 3], torch.zeros_like(alpha))
    radii = meta["radii"][0]
    return RenderOutput(rgb, alpha, depth, means2d, radii.amax(-1) if radii.dim() == 2 else radii)


# ------------------------------------------------------------------ CPU path

def project(scene: GaussianScene, camera: Camera) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of every splat.

    Returns means2d [N,2] (pixels), conics [N,3] (a, b, c of the inverse 2D
    covariance [[a,b],[b,c]], blur included), depths [N] (camera z) and
    radii [N,2] (per-axis extent in pixels, 0 for culled splats).
    """
    R, t = camera.viewmat[:3, :3], camera.viewmat[:3, 3]
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    W, H = camera.width, camera.height
    p = scene.means @ R.T + t
    x, y, z = p.unbind(-1)
    zs = z.clamp_min(NEAR_PLANE)
    # gsplat clamps the Jacobian's x/z, y/z to the frustum widened by 30 %
    tx = zs * (x / zs).clamp(-(cx / fx + 0.3 * 0.5 * W / fx), (W - cx) / fx + 0.3 * 0.5 * W / fx)
    ty = zs * (y / zs).clamp(-(cy / fy + 0.3 * 0.5 * H / fy), (H - cy) / fy + 0.3 * 0.5 * H / fy)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(-1, 2, 3)
    M = J @ R @ quat_to_rotmat(scene.quats) * scene.scales[:, None, :]  # J R_w Rot S
    cov = M @ M.transpose(1, 2)
    a, b, c = cov[:, 0, 0] + EPS2D, cov[:, 0, 1], cov[:, 1, 1] + EPS2D
    det = (a * c - b * b).clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        radii = torch.stack([torch.ceil(EXTENT_SIGMAS * a.sqrt()), torch.ceil(EXTENT_SIGMAS * c.sqrt())], -1)
        m = means2d
        visible = ((z > NEAR_PLANE) & (m[:, 0] + radii[:, 0] > 0) & (m[:, 0] - radii[:, 0] < W)
                   & (m[:, 1] + radii[:, 1] > 0) & (m[:, 1] - radii[:, 1] < H))
        radii = radii * visible[:, None]
    return means2d, conics, z, radii


def sh_colors(scene: GaussianScene, camera: Camera) -> Tensor:
    """[N,3] view-dependent colour: SH evaluated towards the camera, + 0.5, ≥ 0."""
    if scene.sh_degree == 0:
        return (scene.sh[:, 0] * 0.28209479177387814 + 0.5).clamp_min(0)
    from gsplat.cuda._torch_impl import _spherical_harmonics  # pure torch; gsplat is pinned

    dirs = scene.means - camera.position
    return (_spherical_harmonics(scene.sh_degree, dirs, scene.sh) + 0.5).clamp_min(0)


def render_torch(scene: GaussianScene, camera: Camera, background: Tensor, *,
                 tile_size: int = 8) -> RenderOutput:
    """The pure-torch renderer (CPU tensors); same semantics as the gsplat path."""
    means2d, conics, depths, radii = project(scene, camera)
    if means2d.requires_grad:
        means2d.retain_grad()
    colors = sh_colors(scene, camera)
    features = torch.cat([colors, depths[:, None], torch.ones_like(depths[:, None])], -1)
    out = composite(features, means2d, conics, scene.opacities, depths, radii,
                    camera.width, camera.height, tile_size)
    alpha = out[..., 4]
    rgb = out[..., :3] + (1 - alpha)[..., None] * background
    depth = torch.where(alpha > 0, out[..., 3] / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    return RenderOutput(rgb, alpha, depth, means2d, radii.amax(-1).int())


def composite(features: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, depths: Tensor,
              radii: Tensor, width: int, height: int, tile_size: int = 8) -> Tensor:
    """Front-to-back alpha compositing of projected splats, Σᵢ wᵢ fᵢ per pixel.

    features [N,F], means2d [N,2], conics [N,3], opacities [N], depths [N] (sort
    key only), radii [N,2] (0 = culled). Returns [H,W,F]. Differentiable in
    features, means2d, conics and opacities (hand-written backward).
    """
    isect = _intersect_tiles(means2d.detach(), radii, depths.detach(), width, height, tile_size)
    out = _Composite.apply(features, means2d, conics, opacities, isect)
    out = out.reshape(isect.tiles_y, isect.tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
    return out.reshape(isect.tiles_y * tile_size, isect.tiles_x * tile_size, -1)[:height, :width]


@dataclass
class _Bucket:
    """Tiles with similar splat counts, padded to K splats each."""

    tiles: Tensor   # [B] tile indices
    splats: Tensor  # [B, K] splat index per slot, front to back; N (a dummy) for padding
    x0: Tensor      # [B] x of the tile's first pixel centre
    y0: Tensor      # [B] y of the tile's first pixel centre


@dataclass
class _Intersections:
    buckets: list[_Bucket]
    n_tiles: int
    tiles_x: int
    tiles_y: int
    tile_size: int


def _intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                     tile_size: int, growth: float = 1.5) -> _Intersections:
    """Which splats touch which tiles, sorted front to back, grouped into buckets of
    tiles whose pair counts differ by at most ``growth``× (little padding)."""
    n = means2d.shape[0]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles = tiles_x * tiles_y
    idx = torch.nonzero(radii[:, 0] > 0)[:, 0]
    idx = idx[torch.argsort(depths[idx], stable=True)]  # front to back
    m, r = means2d[idx], radii[idx]
    lo = torch.floor((m - r) / tile_size).clamp_min(0).long()
    hi = torch.ceil((m + r) / tile_size).long()
    hi[:, 0].clamp_(max=tiles_x)
    hi[:, 1].clamp_(max=tiles_y)
    span = (hi - lo).clamp_min(0)
    count = span[:, 0] * span[:, 1]
    owner = torch.repeat_interleave(torch.arange(len(idx)), count)
    k = torch.arange(int(count.sum())) - (torch.cumsum(count, 0) - count)[owner]
    sx = span[owner, 0]
    tile = (lo[owner, 1] + k // sx) * tiles_x + lo[owner, 0] + k % sx
    order = torch.argsort(tile, stable=True)  # keeps depth order within a tile
    tile, splat = tile[order], idx[owner[order]]
    per_tile = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(per_tile, 0) - per_tile

    buckets = []
    occupied = torch.nonzero(per_tile)[:, 0]
    level = torch.ceil(torch.log(per_tile[occupied].double()) / math.log(growth)).long()
    for lv in torch.unique(level).tolist():
        tiles = occupied[level == lv]
        K = int(per_tile[tiles].max())
        slot = torch.arange(K)
        valid = slot[None, :] < per_tile[tiles][:, None]
        pair = (start[tiles][:, None] + slot[None, :]).clamp_max(max(len(splat) - 1, 0))
        splats = torch.where(valid, splat[pair], torch.full_like(pair, n))
        buckets.append(_Bucket(tiles, splats, (tiles % tiles_x * tile_size).float() + 0.5,
                               (tiles // tiles_x * tile_size).float() + 0.5))
    return _Intersections(buckets, n_tiles, tiles_x, tiles_y, tile_size)


def _pad(x: Tensor, value: float = 0.0) -> Tensor:
    """x with one dummy row appended (the target of padded slots)."""
    return torch.cat([x, x.new_full((1,) + x.shape[1:], value)])


class _Composite(torch.autograd.Function):
    """Σᵢ wᵢ fᵢ per pixel, with wᵢ = αᵢ Πⱼ<ᵢ (1 − αⱼ); layout per bucket [B, K, ts, ts]."""

    @staticmethod
    def forward(ctx, features, means2d, conics, opacities, isect):
        ts = isect.tile_size
        offsets = torch.arange(ts, dtype=torch.float32)
        f_pad, m_pad, c_pad = _pad(features), _pad(means2d), _pad(conics)
        logo_pad = _pad(opacities.log(), -math.inf)
        out = features.new_zeros(isect.n_tiles, ts * ts, features.shape[1])
        saved = []
        for bk in isect.buckets:
            B, K = bk.splats.shape
            mean, (a, b, c) = m_pad[bk.splats], c_pad[bk.splats].unbind(-1)
            dx = (bk.x0[:, None] - mean[..., 0])[..., None] + offsets  # [B,K,ts] per column
            dy = (bk.y0[:, None] - mean[..., 1])[..., None] + offsets  # [B,K,ts] per row
            power = torch.addcmul((0.5 * a[..., None] * dx * dx)[:, :, None, :]
                                  + (0.5 * c[..., None] * dy * dy)[:, :, :, None],
                                  (b[..., None] * dy)[:, :, :, None], dx[:, :, None, :])
            alpha = power.neg_().add_(logo_pad[bk.splats][..., None, None]).exp_().clamp_max_(ALPHA_MAX)
            alpha = alpha.masked_fill_(alpha < ALPHA_MIN, 0.0).reshape(B, K, ts * ts)
            log_keep = torch.log1p(-alpha)
            log_T_after = torch.cumsum(log_keep, 1)
            alpha.masked_fill_(log_T_after <= math.log(T_MIN), 0.0)  # early stop: a suffix per pixel
            T = log_T_after.sub_(log_keep).exp_()
            w = alpha * T
            out[bk.tiles] = torch.bmm(w.transpose(1, 2), f_pad[bk.splats])
            saved.append((alpha, T, w, dx, dy))
        ctx.isect, ctx.saved = isect, saved
        ctx.save_for_backward(features, means2d, conics, opacities)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, means2d, conics, opacities = ctx.saved_tensors
        isect = ctx.isect
        N, ts = features.shape[0], isect.tile_size
        f_pad, c_pad = _pad(features), _pad(conics)
        grad_f, grad_m = torch.zeros_like(f_pad), torch.zeros_like(_pad(means2d))
        grad_c, grad_logo = torch.zeros_like(c_pad), features.new_zeros(N + 1)
        for bk, (alpha, T, w, dx, dy) in zip(isect.buckets, ctx.saved):
            B, K, S = alpha.shape
            g = grad_out[bk.tiles]                                    # [B,S,F]
            f = f_pad[bk.splats]                                      # [B,K,F]
            grad_f.index_add_(0, bk.splats.reshape(-1), torch.bmm(w, g).reshape(B * K, -1))
            v = torch.bmm(f, g.transpose(1, 2))                       # dL/dw  [B,K,S]
            wv = w * v
            after = wv.sum(1, keepdim=True) - torch.cumsum(wv, 1)     # Σ_{j>i} wⱼ vⱼ
            grad_alpha = v.mul_(T).sub_(after.div_(1 - alpha))
            live = (alpha > 0) & (alpha < ALPHA_MAX)
            G = grad_alpha.mul_(alpha).masked_fill_(~live, 0.0).reshape(B, K, ts, ts)  # = dL/dlog o = −dL/dpower
            G_col, G_row = G.sum(2), G.sum(3)                         # [B,K,ts] over rows / columns
            Gx = (G * dx[:, :, None, :]).sum(3)                       # Σ_c G dx, per row
            a, b, c = c_pad[bk.splats].unbind(-1)
            s_dx, s_dy = (G_col * dx).sum(2), (G_row * dy).sum(2)     # Σ G dx, Σ G dy
            idx = bk.splats.reshape(-1)
            grad_logo.index_add_(0, idx, G.sum((2, 3)).reshape(-1))
            grad_c.index_add_(0, idx, -torch.stack([0.5 * (G_col * dx * dx).sum(2), (Gx * dy).sum(2),
                                                    0.5 * (G_row * dy * dy).sum(2)], -1).reshape(B * K, 3))
            grad_m.index_add_(0, idx, torch.stack([a * s_dx + b * s_dy, b * s_dx + c * s_dy], -1).reshape(B * K, 2))
        return grad_f[:N], grad_m[:N], grad_c[:N], grad_logo[:N] / opacities, None


def composite_reference(features: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor,
                        depths: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """Dense reference for ``composite``: every visible splat at every pixel,
    plain autograd. O(N·H·W) memory — for tests on small scenes only."""
    vis = torch.nonzero(radii[:, 0] > 0)[:, 0]
    vis = vis[torch.argsort(depths[vis].detach(), stable=True)]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    d = torch.stack([xs, ys], -1).reshape(1, -1, 2) - means2d[vis][:, None, :]  # [n, HW, 2]
    a, b, c = conics[vis].unbind(-1)
    power = 0.5 * (a[:, None] * d[..., 0] ** 2 + c[:, None] * d[..., 1] ** 2) + b[:, None] * d[..., 0] * d[..., 1]
    alpha = (opacities[vis][:, None] * torch.exp(-power)).clamp_max(ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    keep = torch.cumprod(1 - alpha, 0)
    alpha = torch.where(keep > T_MIN, alpha, torch.zeros_like(alpha))
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1 - alpha[:-1]]), 0)
    out = torch.einsum("np,nf->pf", alpha * T, features[vis])
    return out.reshape(height, width, -1)
