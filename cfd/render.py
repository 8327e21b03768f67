"""Differentiable rendering of Gaussian splats.

``render`` is the one public entry; it renders one camera, or C cameras of one
size in one call (like gsplat's ``rasterization`` with C cameras). On CUDA
tensors it calls gsplat's fused kernels (``gsplat.rasterization``); on CPU it
runs ``render_cpu``, our own tiled compositor with the kernel's semantics:

- EWA projection with gsplat's pinhole clamping and a 0.3 px² blur (eps2d);
- gsplat's opacity-aware screen extent: per axis ceil(e σ) with e = min(3.33,
  √(2 ln(o / α_min))), the box outside which α < 1/255; splats nearer than
  0.01 or with opacity below 1/255 culled;
- α = min(0.999, o·exp(−½ dᵀ Σ⁻¹ d)), contributions with α < 1/255 skipped;
- front-to-back by camera depth, a pixel stops before its transmittance would
  fall to ≤ 1e-4;
- colour = SH (any degree) + 0.5, clamped at 0; depth = Σ wᵢ zᵢ / Σ wᵢ.

Both CPU stages have a C++ kernel with a hand-written backward beside a pure-
torch reference it is tested against: the projection (``cfd/_project_cpu.cpp``;
``project_torch``, autograd) and the compositor (``cfd/_composite_cpu.cpp``:
gsplat's rasterizer on the CPU, each pixel walks its tile's splats up to its own
early stop; ``composite_torch``, which evaluates padded buckets of tiles in
bulk), both fed by one front-to-back (tile, splat) intersection list. The
kernels run in parallel and are bit-identical for any number of threads. They
are one library, built ahead of serving (``build_cpu_kernel``: ``make``, the
app's start-up, ``python -m cfd.cpu_kernel``) and only loaded here; ``project``
and ``composite`` take them when built (else warn once and fall back);
``CFD_CPU_KERNEL=torch`` forces pure torch.

A batch of C views is one compositing problem on CPU: the projection is
vectorised over views, each (view, splat) pair is one projected splat and the
tiles of view v are numbered v · n_tiles + tile, so the tile intersection and
the compositor run once for all views.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Camera
from .gaussians import SH_C0, GaussianScene, quat_to_rotmat

NEAR_PLANE = 0.01
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EXTENT_SIGMAS = 3.33
# the pure-torch compositor's per-bucket temporaries [B, K, ts, ts] hold at most this many floats
# (2 MiB: cache-sized, which was faster than unbounded buckets: docs/performance.md,
# "The CPU renderer")
BUCKET_ELEMENTS = 1 << 19


@dataclass
class RenderOutput:
    """What ``render`` returns. For a batch of C cameras every field has a leading
    view axis C, in the cameras' order; for one camera it has none ((C,) below).

    rgb:     [(C,) H, W, 3] colour in [0, 1], composited over the background.
    alpha:   [(C,) H, W] accumulated opacity in [0, 1].
    depth:   [(C,) H, W] expected camera z, Σ wᵢ zᵢ / Σ wᵢ (0 where nothing is hit).
    means2d: [(C,) N, 2] projected splat centres in pixels (x right, y down, pixel
             (i, j) centred at (i + 0.5, j + 0.5)); gsplat returns [C, N, 2] for one
             camera too (C = 1). Its gradient is retained for densification: read it
             with ``means2d_grad_norm`` after backward.
    radii:   [(C,) N] int32 screen extent in pixels, the larger of the two axes
             (0 = culled: not visible in that view).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor

    def means2d_grad_norm(self, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """[(C,) N] norm of the loss gradient w.r.t. each projected centre (pixels),
        per view for a batch, each axis multiplied by ``scale`` (x, y) first, after
        backward; zeros when none reached them. Drives densification."""
        grad = self.means2d.grad
        if grad is None:
            return torch.zeros(self.radii.shape, device=self.radii.device)
        grad = grad.reshape(*self.radii.shape, 2)
        return torch.stack([grad[..., 0] * scale[0], grad[..., 1] * scale[1]], -1).norm(dim=-1)


@dataclass(frozen=True)
class _Views:
    """One camera (C = 1) or C cameras of one size, stacked for vectorised rendering.

    viewmats [C,4,4] world→camera and Ks [C,3,3] pixel intrinsics (``Camera``'s
    conventions); width, height in pixels; ``lead`` is the leading shape of every
    per-view output: () for one camera, (C,) for a sequence.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int
    lead: tuple[int, ...]

    @staticmethod
    def of(cameras: "Camera | Sequence[Camera] | _Views", device) -> "_Views":
        """``cameras`` stacked on ``device`` (a ``_Views`` passes through). ValueError
        for an empty sequence or cameras of different sizes."""
        if isinstance(cameras, _Views):
            return cameras
        single = isinstance(cameras, Camera)
        cams = [cameras] if single else list(cameras)
        if not cams:
            raise ValueError("render: an empty sequence of cameras")
        sizes = sorted({(c.width, c.height) for c in cams})
        if len(sizes) > 1:
            raise ValueError("render: the cameras of a batch must share one size, got "
                             + ", ".join(f"{w}×{h}" for w, h in sizes))
        (width, height), = sizes
        return _Views(torch.stack([c.viewmat for c in cams]).to(device), torch.stack([c.K for c in cams]).to(device),
                      width, height, () if single else (len(cams),))

    def shaped(self, x: Tensor) -> Tensor:
        """x [C, ...] as [*lead, ...]: without the view axis for one camera."""
        return x.reshape(self.lead + x.shape[1:])


def render(scene: GaussianScene, camera: Camera | Sequence[Camera], background=(1.0, 1.0, 1.0), *,
           tile_size: int = 8) -> RenderOutput:
    """Render ``scene`` from one camera, or from C cameras in one call.

    scene:      N splats; its device picks the backend: gsplat's fused kernels on
                CUDA, our CPU compositor (``render_cpu``, square tiles of
                ``tile_size`` pixels) elsewhere. Cameras move to its device.
    camera:     a ``Camera`` → a ``RenderOutput`` without view axis (rgb [H,W,3],
                alpha [H,W], depth [H,W], means2d [N,2] ([1,N,2] from gsplat),
                radii [N]); a list or tuple of C ``Camera`` of one width and height →
                one ``RenderOutput`` with a leading view axis (rgb [C,H,W,3], alpha
                [C,H,W], depth [C,H,W], means2d [C,N,2], radii [C,N]), view c seen
                from camera[c]. Conventions: ``RenderOutput``.
    background: a constant colour behind every view: 3 floats or a [3] tensor.

    Differentiable in every scene parameter and the background. View c of a batch
    equals ``render(scene, camera[c])`` (bit for bit on CPU); the gradient of a
    loss summed over the views equals the sum of the per-view gradients up to
    float rounding. Raises ValueError, naming the sizes, for an empty sequence or
    cameras of different sizes.
    """
    bg = torch.as_tensor(background, dtype=torch.float32, device=scene.device)
    views = _Views.of(camera, scene.device)
    if scene.device.type == "cuda":
        return _render_gsplat(scene, views, bg)
    return render_cpu(scene, views, bg, tile_size=tile_size)


# ----------------------------------------------------------------- CUDA path

def _render_gsplat(scene: GaussianScene, views: _Views, bg: Tensor) -> RenderOutput:
    """All views in one ``gsplat.rasterization`` call (viewmats [C,4,4], Ks [C,3,3])."""
    from gsplat import rasterization

    colors, alphas, meta = rasterization(
        scene.means, scene.rotations, scene.scales, scene.opacities, scene.sh,
        views.viewmats, views.Ks, views.width, views.height,
        sh_degree=scene.sh_degree, near_plane=NEAR_PLANE, eps2d=EPS2D,
        render_mode="RGB+ED", packed=False,
    )                                    # colors [C,H,W,4] (RGB, expected depth), alphas [C,H,W,1]
    alpha = alphas[..., 0]
    means2d = meta["means2d"]            # [C,N,2]
    if means2d.requires_grad:
        means2d.retain_grad()
    rgb = colors[..., :3] + (1 - alpha)[..., None] * bg
    depth = torch.where(alpha > 0, colors[..., 3], torch.zeros_like(alpha))
    radii = meta["radii"]                # [C,N,2] per axis in gsplat 1.5 ([C,N] before)
    radii = radii.amax(-1) if radii.dim() == 3 else radii
    return RenderOutput(views.shaped(rgb), views.shaped(alpha), views.shaped(depth), means2d, views.shaped(radii))


# ------------------------------------------------------------------ CPU path

def project(scene: GaussianScene, cameras: Camera | Sequence[Camera]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of every splat into every view, vectorised over the views.

    ``cameras``: one ``Camera``, or a sequence of C cameras of one size ((C,) below:
    the view axis, only for a sequence). Returns means2d [(C,) N, 2] (pixels),
    conics [(C,) N, 3] (a, b, c of the inverse 2D covariance [[a,b],[b,c]], blur
    included), depths [(C,) N] (camera z) and radii [(C,) N, 2] (per-axis extent in
    pixels of the box where the splat's α ≥ ALPHA_MIN, 0 for culled splats).
    Differentiable in the means, quaternions and scales (hand-written backward).
    Runs the C++ kernel on float32 CPU tensors when it is available
    (``cpu_kernel``), else ``project_torch``, its reference.
    """
    views = _Views.of(cameras, scene.device)
    if scene.device.type != "cpu" or scene.means.dtype != torch.float32 or cpu_kernel() is None:
        return project_torch(scene, views)
    means2d, conics, depths, radii = _ProjectCpp.apply(scene.means, scene.quats, scene.scales,
                                                       scene.opacities.detach(), views.viewmats, views.Ks,
                                                       views.width, views.height)
    return views.shaped(means2d), views.shaped(conics), views.shaped(depths), views.shaped(radii)


def project_torch(scene: GaussianScene, cameras: Camera | Sequence[Camera]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``project`` in pure torch (autograd), the C++ kernel's reference: same
    arguments, semantics and shapes."""
    views = _Views.of(cameras, scene.device)
    R, t = views.viewmats[:, :3, :3], views.viewmats[:, None, :3, 3]        # [C,3,3], [C,1,3]
    K = views.Ks[:, None]                                                   # [C,1,3,3]
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]  # [C,1]
    W, H = views.width, views.height
    # [C,N,3] as C·N small 3×3 products: the same bits for any C (a [N,3] @ [C,3,3] matmul
    # goes through BLAS, whose rounding changes with C and with requires_grad)
    p = (R[:, None] @ scene.means[..., None])[..., 0] + t
    x, y, z = p.unbind(-1)
    zs = z.clamp_min(NEAR_PLANE)
    # gsplat clamps the Jacobian's x/z, y/z to the frustum widened by 30 %
    tx = zs * (x / zs).clamp(-(cx / fx + 0.3 * 0.5 * W / fx), (W - cx) / fx + 0.3 * 0.5 * W / fx)
    ty = zs * (y / zs).clamp(-(cy / fy + 0.3 * 0.5 * H / fy), (H - cy) / fy + 0.3 * 0.5 * H / fy)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(*zs.shape, 2, 3)
    M = J @ R[:, None] @ quat_to_rotmat(scene.quats) * scene.scales[:, None, :]  # J R_w Rot S  [C,N,2,3]
    cov = M @ M.mT
    a, b, c = cov[..., 0, 0] + EPS2D, cov[..., 0, 1], cov[..., 1, 1] + EPS2D
    det = (a * c - b * b).clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        o = scene.opacities.double()
        extent = torch.sqrt(2 * torch.log(o.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(EXTENT_SIGMAS).float()
        radii = torch.stack([torch.ceil(extent * a.sqrt()), torch.ceil(extent * c.sqrt())], -1)
        m = means2d
        visible = ((z > NEAR_PLANE) & (scene.opacities >= ALPHA_MIN) & (m[..., 0] + radii[..., 0] > 0)
                   & (m[..., 0] - radii[..., 0] < W) & (m[..., 1] + radii[..., 1] > 0) & (m[..., 1] - radii[..., 1] < H))
        radii = radii * visible[..., None]
    return views.shaped(means2d), views.shaped(conics), views.shaped(z), views.shaped(radii)


class _ProjectCpp(torch.autograd.Function):
    """``project`` by the C++ kernel: means2d [C,N,2], conics [C,N,3], depths
    [C,N], radii [C,N,2] (not differentiable) of means [N,3], quats [N,4],
    scales [N,3]."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height):
        kernel = cpu_kernel()
        inputs = (means.contiguous(), quats.contiguous(), scales.contiguous())
        cams = (viewmats.contiguous(), Ks.contiguous())
        out = kernel.project_forward(*inputs, opacities.contiguous(), *cams, width, height, NEAR_PLANE, EPS2D,
                                     EXTENT_SIGMAS, ALPHA_MIN)
        ctx.kernel, ctx.size = kernel, (width, height)
        ctx.save_for_backward(*inputs, *cams)
        ctx.mark_non_differentiable(out[3])
        return out

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _):
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        C, N = len(viewmats), len(means)
        grads = [means.new_zeros(shape) if g is None else g.contiguous()   # an output no loss reached
                 for g, shape in ((grad_means2d, (C, N, 2)), (grad_conics, (C, N, 3)), (grad_depths, (C, N)))]
        grad_means, grad_quats, grad_scales = ctx.kernel.project_backward(means, quats, scales, viewmats, Ks, *grads,
                                                                          *ctx.size, NEAR_PLANE, EPS2D)
        return grad_means, grad_quats, grad_scales, None, None, None, None, None


def sh_colors(scene: GaussianScene, cameras: Camera | Sequence[Camera]) -> Tensor:
    """[(C,) N, 3] view-dependent colour: SH evaluated towards each camera, + 0.5,
    ≥ 0 (the view axis only for a sequence of cameras, as in ``project``)."""
    views = _Views.of(cameras, scene.device)
    if scene.sh_degree == 0:
        return (scene.sh[:, 0] * SH_C0 + 0.5).clamp_min(0).expand(*views.lead, len(scene), 3)
    from gsplat.cuda._torch_impl import _spherical_harmonics  # pure torch; gsplat is pinned

    R, t = views.viewmats[:, :3, :3], views.viewmats[:, :3, 3:]
    dirs = scene.means - (-R.mT @ t).mT                                     # [C,N,3] from each camera centre
    sh = scene.sh.expand(len(dirs), *scene.sh.shape)
    return views.shaped((_spherical_harmonics(scene.sh_degree, dirs, sh) + 0.5).clamp_min(0))


def render_cpu(scene: GaussianScene, cameras: Camera | Sequence[Camera], background: Tensor, *,
               tile_size: int = 8) -> RenderOutput:
    """The CPU renderer of one camera or C cameras of one size; same semantics and
    shapes as ``render``. All views are composited in one go (``composite``)."""
    views = _Views.of(cameras, scene.device)
    means2d, conics, depths, radii = project(scene, views)
    if means2d.requires_grad:
        means2d.retain_grad()
    colors = sh_colors(scene, views)
    features = torch.cat([colors, depths[..., None], torch.ones_like(depths[..., None])], -1)
    out = composite(features, means2d, conics, scene.opacities.expand_as(depths), depths, radii,
                    views.width, views.height, tile_size)
    alpha = out[..., 4]
    rgb = out[..., :3] + (1 - alpha)[..., None] * background
    depth = torch.where(alpha > 0, out[..., 3] / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    return RenderOutput(rgb, alpha, depth, means2d, radii.amax(-1).int())


def composite(features: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, depths: Tensor,
              radii: Tensor, width: int, height: int, tile_size: int = 8) -> Tensor:
    """Front-to-back alpha compositing of projected splats, Σᵢ wᵢ fᵢ per pixel, for
    one image or a batch of independent images at once.

    features [..., N, F], means2d [..., N, 2], conics [..., N, 3], opacities
    [..., N], depths [..., N] (sort key only), radii [..., N, 2] (0 = culled); the
    leading shape ... (e.g. (C,) views, or none) indexes the images. Returns
    [..., H, W, F]. Differentiable in features, means2d, conics and opacities
    (hand-written backward). All images share one tile intersection and one
    compositor pass: image v's splats are splats v·N … v·N + N − 1 of one list.
    Runs the C++ kernel on float32 CPU tensors when it is available
    (``cpu_kernel``), else the pure-torch compositor of ``composite_torch``.
    """
    cpp = features.device.type == "cpu" and features.dtype == torch.float32 and cpu_kernel() is not None
    function = _CompositeCpp if cpp else _Composite
    return _composite(function, features, means2d, conics, opacities, depths, radii, width, height, tile_size)


def composite_torch(features: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, depths: Tensor,
                    radii: Tensor, width: int, height: int, tile_size: int = 8) -> Tensor:
    """``composite`` by the pure-torch compositor, the C++ kernel's reference:
    same arguments, semantics and shapes."""
    return _composite(_Composite, features, means2d, conics, opacities, depths, radii, width, height, tile_size)


def _composite(function: type[torch.autograd.Function], features: Tensor, means2d: Tensor, conics: Tensor,
               opacities: Tensor, depths: Tensor, radii: Tensor, width: int, height: int,
               tile_size: int) -> Tensor:
    """``composite`` by ``function`` (``_Composite`` or ``_CompositeCpp``)."""
    lead, F = features.shape[:-2], features.shape[-1]
    views = math.prod(lead)
    isect = _intersect_tiles(means2d.detach().reshape(-1, 2), radii.reshape(-1, 2), depths.detach().reshape(-1),
                             width, height, tile_size, views)
    out = function.apply(features.reshape(-1, F), means2d.reshape(-1, 2), conics.reshape(-1, 3),
                         opacities.reshape(-1), isect)
    ts, ty, tx = tile_size, isect.tiles_y, isect.tiles_x
    out = out.reshape(views, ty, tx, ts, ts, F).permute(0, 1, 3, 2, 4, 5).reshape(views, ty * ts, tx * ts, F)
    return out[:, :height, :width].reshape(*lead, height, width, F)


@dataclass
class _Intersections:
    """The (tile, splat) pairs of V images, front to back within each tile: tile
    t's splats are tile_splats[tile_start[t] : tile_start[t + 1]]; tile t is tile
    t % (tiles_x · tiles_y) of image t // (tiles_x · tiles_y), row-major."""

    tile_start: Tensor   # [n_tiles + 1] int64
    tile_splats: Tensor  # [P] int64 splat index of each pair
    tiles_x: int         # per image
    tiles_y: int
    tile_size: int       # pixels per tile side
    width: int           # of each image, pixels
    height: int

    @property
    def n_tiles(self) -> int:
        """Tiles of all images: V · tiles_x · tiles_y."""
        return len(self.tile_start) - 1

    @property
    def geometry(self) -> tuple[int, int, int, int, int]:
        """(tile_size, tiles_x, tiles_y, width, height), as the C++ kernel takes them."""
        return self.tile_size, self.tiles_x, self.tiles_y, self.width, self.height


def _intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                     tile_size: int, views: int = 1) -> _Intersections:
    """Which splats touch which tiles, sorted front to back within each tile.

    means2d [V·N, 2], radii [V·N, 2], depths [V·N]: the projected splats of V =
    ``views`` images of width × height, view-major (splat v·N + i is splat i in
    image v); a splat touches only its own image's tiles, numbered
    v · tiles_x · tiles_y + tile.
    """
    n = means2d.shape[0]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    per_view = tiles_x * tiles_y
    vis = torch.nonzero(radii[:, 0] > 0)[:, 0]
    m, r = means2d[vis], radii[vis]
    lo = torch.floor((m - r) / tile_size).clamp_min(0).long()
    hi = torch.ceil((m + r) / tile_size).long()
    hi[:, 0].clamp_(max=tiles_x)
    hi[:, 1].clamp_(max=tiles_y)
    span_x, span_y = (hi - lo).clamp_min(0).unbind(-1)
    count = span_x * span_y
    corner = vis // (n // views) * per_view + lo[:, 1] * tiles_x + lo[:, 0]  # the first tile of each box
    owner = torch.repeat_interleave(count)  # [P] the visible splat of each pair

    def per_pair(x: Tensor) -> Tensor:  # per visible splat → per pair; index_select: faster than x[owner]
        return x.index_select(0, owner)

    k = torch.arange(len(owner)) - per_pair(torch.cumsum(count, 0) - count)  # the pair's place in its box
    sx = per_pair(span_x)
    row = k // sx
    tile = per_pair(corner) + row * tiles_x + k - row * sx
    # one stable sort of gsplat's keys tile << 32 | depth: a float's bits, negatives'
    # magnitude bits flipped, order like the floats as int32; + 2³¹ makes them ≥ 0
    bits = depths[vis].contiguous().view(torch.int32).long()
    depth_key = (bits ^ (bits >> 31 & 0x7FFFFFFF)) + 2**31
    order = torch.argsort(tile << 32 | per_pair(depth_key), stable=True)  # equal depths keep splat order
    per_tile = torch.bincount(tile, minlength=views * per_view)
    tile_start = torch.cat([per_tile.new_zeros(1), torch.cumsum(per_tile, 0)])
    return _Intersections(tile_start, per_pair(vis).index_select(0, order), tiles_x, tiles_y, tile_size,
                          width, height)


# ------------------------------------------------------------ C++ compositor

def cpu_kernel():
    """The C++ kernels' ops (``torch.ops.cfd_composite_cpu_<hash>``: the
    compositor's forward, backward; project_forward, project_backward), or None:
    when ``CFD_CPU_KERNEL=torch`` asks for pure torch, or when the kernels are
    not built (warned once). Never builds and
    never waits: the build happens ahead of serving (``build_cpu_kernel``)."""
    choice = os.environ.get("CFD_CPU_KERNEL", "")
    if choice == "torch":
        return None
    if choice:
        raise ValueError(f"CFD_CPU_KERNEL={choice!r}: set it to 'torch' (the pure-torch compositor) or unset it")
    from . import cpu_kernel as kernel  # imported here: `python -m cfd.cpu_kernel` imports cfd first

    return kernel.load()


def build_cpu_kernel(timeout_s: float = 300.0) -> bool:
    """Build the C++ kernels ahead of serving (at install, at start-up): in a
    child process, under a file lock the OS releases if its holder dies, stopped
    after ``timeout_s``; keyed by a hash of the sources, torch's version and flags.
    True once built (at once when it already is); False with one warning on a
    failure or a timeout, after which ``project`` and ``composite`` use pure torch. Safe to call
    from several threads and processes at once. ``cfd.cpu_kernel.build``."""
    from . import cpu_kernel as kernel

    return kernel.build(timeout_s)


class _CompositeCpp(torch.autograd.Function):
    """``_Composite``'s Σᵢ wᵢ fᵢ by the C++ kernel: out [n_tiles, ts², F]."""

    @staticmethod
    def forward(ctx, features, means2d, conics, opacities, isect):
        kernel = cpu_kernel()
        inputs = (features.contiguous(), means2d.contiguous(), conics.contiguous(), opacities.log().contiguous())
        out, final_T, n_used = kernel.forward(isect.tile_start, isect.tile_splats, *inputs, *isect.geometry,
                                              ALPHA_MIN, ALPHA_MAX, T_MIN)
        ctx.kernel, ctx.isect = kernel, isect
        ctx.save_for_backward(*inputs, opacities, final_T, n_used)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        *inputs, opacities, final_T, n_used = ctx.saved_tensors
        isect = ctx.isect
        grad_f, grad_m, grad_c, grad_logo = ctx.kernel.backward(
            isect.tile_start, isect.tile_splats, *inputs, grad_out.contiguous(), final_T, n_used, *isect.geometry,
            ALPHA_MIN, ALPHA_MAX, T_MIN)
        return grad_f, grad_m, grad_c, grad_logo / opacities, None


# ----------------------------------------------------- pure-torch compositor

@dataclass
class _Bucket:
    """Tiles with similar splat counts, padded to K splats each."""

    tiles: Tensor   # [B] tile indices (view · tiles per view + tile in the view)
    splats: Tensor  # [B, K] splat index per slot, front to back; V·N (a dummy) for padding
    x0: Tensor      # [B] x of the tile's first pixel centre in its view
    y0: Tensor      # [B] y of the tile's first pixel centre in its view


def _buckets(isect: _Intersections, n: int, growth: float = 1.5) -> list[_Bucket]:
    """The occupied tiles of ``isect`` (whose splats number ``n``), grouped into
    buckets of tiles whose pair counts differ by at most ``growth``× (little
    padding), each bucket at most ``BUCKET_ELEMENTS`` pixel-slots (B · K ·
    tile_size²) unless one tile alone holds more."""
    ts, splat = isect.tile_size, isect.tile_splats
    per_view = isect.tiles_x * isect.tiles_y
    start, per_tile = isect.tile_start[:-1], isect.tile_start.diff()
    buckets = []
    occupied = torch.nonzero(per_tile)[:, 0]
    level = torch.ceil(torch.log(per_tile[occupied].double()) / math.log(growth)).long()
    for lv in torch.unique(level).tolist():
        same = occupied[level == lv]
        for tiles in same.split(max(1, BUCKET_ELEMENTS // (int(per_tile[same].max()) * ts**2))):
            K = int(per_tile[tiles].max())
            slot = torch.arange(K)
            valid = slot[None, :] < per_tile[tiles][:, None]
            pair = (start[tiles][:, None] + slot[None, :]).clamp_max(max(len(splat) - 1, 0))
            splats = torch.where(valid, splat[pair], torch.full_like(pair, n))
            local = tiles % per_view
            buckets.append(_Bucket(tiles, splats, (local % isect.tiles_x * ts).float() + 0.5,
                                   (local // isect.tiles_x * ts).float() + 0.5))
    return buckets


def _pad(x: Tensor, value: float = 0.0) -> Tensor:
    """x with one dummy row appended (the target of padded slots)."""
    return torch.cat([x, x.new_full((1,) + x.shape[1:], value)])


class _Composite(torch.autograd.Function):
    """Σᵢ wᵢ fᵢ per pixel, with wᵢ = αᵢ Πⱼ<ᵢ (1 − αⱼ): out [n_tiles, ts², F];
    layout per bucket [B, K, ts, ts]."""

    @staticmethod
    def forward(ctx, features, means2d, conics, opacities, isect):
        ts = isect.tile_size
        offsets = torch.arange(ts, dtype=torch.float32)
        f_pad, m_pad, c_pad = _pad(features), _pad(means2d), _pad(conics)
        logo_pad = _pad(opacities.log(), -math.inf)
        out = features.new_zeros(isect.n_tiles, ts * ts, features.shape[1])
        buckets, saved = _buckets(isect, len(features)), []
        for bk in buckets:
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
        ctx.tile_size, ctx.buckets, ctx.saved = ts, buckets, saved
        ctx.save_for_backward(features, means2d, conics, opacities)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, means2d, conics, opacities = ctx.saved_tensors
        N, ts = features.shape[0], ctx.tile_size
        f_pad, c_pad = _pad(features), _pad(conics)
        grad_f, grad_m = torch.zeros_like(f_pad), torch.zeros_like(_pad(means2d))
        grad_c, grad_logo = torch.zeros_like(c_pad), features.new_zeros(N + 1)
        for bk, (alpha, T, w, dx, dy) in zip(ctx.buckets, ctx.saved):
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
