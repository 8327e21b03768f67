"""Exports of a splat scene: orbit videos (mp4), noise videos, the viewer PLY and
a GLB mesh.

- ``write_video``: frames → H.264 / yuv420p mp4 that browsers play.
- ``orbit_frames`` / ``orbit_video``: renders along ``cameras.orbit_cameras``.
- ``noise_frames`` / ``noise_video``: the noise a run added (its own noise
  source, ``cfd.distill.noise_source``) along the same orbit, optionally next
  to the render: CFD's noise sticks to the surface, SDS's flickers.
- ``save_viewer_ply``: the PLY for gradio's ``gr.Model3D`` splat viewer
  (gsplat.js): DC colour only, rotated to gsplat.js's y-down world.
- ``density_grid`` / ``splat_mesh`` / ``export_glb``: a coloured triangle mesh
  from the splats' opacity density field (marching cubes), saved as glTF binary.

Every file is written to a temporary name in the target folder and renamed, so
a failure never leaves half a file behind. Nothing here imports gradio.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .cameras import Camera, orbit_cameras
from .files import atomic_path
from .framing import BACKGROUND, ELEVATION_DEG, FOV_DEG, RADIUS, VIEWER_SCALE
from .gaussians import GaussianScene, quat_to_rotmat, save_ply
from .noise import SURFACE_ALPHA, NoiseSource, Surface
from .render import render

__all__ = [
    "to_uint8", "write_video", "write_gif", "orbit_frames", "orbit_video", "noise_to_display", "noise_frames", "noise_video",
    "flip_scene_y", "save_viewer_ply", "density_grid", "splat_mesh", "export_glb", "DEFAULT_LEVEL", "preload",
]

Progress = Callable[[int, int], None]  # progress(done, total)


def preload() -> None:
    """Import the libraries of the exports ahead (trimesh alone takes ~1.2 s to
    import: otherwise the first GLB of a process pays it)."""
    import imageio_ffmpeg  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401
    import scipy.spatial  # noqa: F401
    import skimage.measure  # noqa: F401
    import trimesh  # noqa: F401


# --------------------------------------------------------------------- videos

def to_uint8(image) -> np.ndarray:
    """uint8 numpy array (0..255) of float-in-[0,1] image data (a tensor or an
    array of any shape, e.g. one [H,W,3] image or [F,H,W,3] frames): clipped,
    NaN → 0, rounded. uint8 input is returned as is. The one conversion every
    picture the app, the CLI and the benchmarks save goes through."""
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    image = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    return np.round(image * 255.0).astype(np.uint8)


def _to_uint8_frames(frames) -> np.ndarray:
    """uint8 [F,H,W,3] numpy array from uint8 or float-in-[0,1] frames (numpy or
    tensor, [F,H,W,3]; a single channel [F,H,W] or [F,H,W,1] becomes grey)."""
    if isinstance(frames, Tensor):
        frames = frames.detach().cpu().numpy()
    elif not isinstance(frames, np.ndarray):
        frames = np.stack([f.detach().cpu().numpy() if isinstance(f, Tensor) else np.asarray(f) for f in frames])
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"write_video: frames must be [F,H,W,3], got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("write_video: no frames")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(to_uint8(frames[..., :3]))


def write_video(frames, path, fps: float = 24, *, crf: int = 18, preset: str = "fast") -> Path:
    """Write ``frames`` as a browser-playable H.264 mp4 and return its path.

    frames: [F,H,W,3] uint8 (0..255) or float in [0,1] (numpy array, tensor or a
        sequence of [H,W,3] frames), or an iterator of such [B,H,W,3] chunks,
        streamed: each chunk goes to the encoder as uint8 when it comes, so no
        more than a chunk is held (``orbit_chunks``, ``noise_chunks``). Odd
        heights/widths are padded by one replicated row/column (yuv420p needs
        even sizes); nothing is rescaled.
    path: target file (``.mp4``); written to a temporary name, then renamed.
    fps: frames per second. crf/preset: x264 quality (lower crf = better) and speed ("fast":
        the size of "medium" at a quarter of its time on our 256² orbits).
    Output: codec libx264, pixel format yuv420p, ``+faststart`` (moov atom first,
    so browsers start playing before the download finishes).
    """
    import imageio_ffmpeg

    chunks = iter(frames) if isinstance(frames, Iterator) else iter([frames])
    first = next(chunks, None)
    video = _to_uint8_frames([] if first is None else first)
    del first   # from here on only the chunk being sent is held
    _, h, w, _ = video.shape
    size = (w + w % 2, h + h % 2)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), size, pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=fps, codec="libx264",
            quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(int(crf)), "-preset", preset, "-movflags", "+faststart"],
        )
        try:
            writer.send(None)  # start ffmpeg
            while video is not None:
                if video.shape[1:3] != (h, w):
                    raise ValueError(f"write_video: a chunk of {video.shape[2]}×{video.shape[1]} frames in a "
                                     f"{w}×{h} video")
                if h % 2 or w % 2:
                    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                for frame in video:
                    writer.send(frame.tobytes())
                chunk = next(chunks, None)
                video = None if chunk is None else _to_uint8_frames(chunk)
        finally:
            writer.close()
    return Path(path)


def write_gif(frames, path, fps: float = 12) -> Path:
    """Write ``frames`` (as for ``write_video``) as a looping animated GIF (small
    orbit loops that play anywhere an image shows, e.g. a gallery tile); returns
    the path. Written to a temporary name, then renamed."""
    from PIL import Image

    images = [Image.fromarray(f) for f in _to_uint8_frames(frames)]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(20, round(1000 / fps)), disposal=1)
    return Path(path)


def orbit_frames(scene: GaussianScene, n_frames: int = 48, res: int = 256, elevation_deg: float = ELEVATION_DEG,
                 radius: float = RADIUS, fov_deg: float = FOV_DEG, background=BACKGROUND, *,
                 progress: Progress | None = None) -> Tensor:
    """Renders of ``scene`` along ``cameras.orbit_cameras(n_frames, res, elevation_deg,
    radius, fov_deg)`` (azimuth 0 first, then increasing).

    Returns float [F, res, res, 3] in [0,1] on the CPU, without grad.
    ``progress(done, total)`` is called after each frame.
    """
    return torch.cat(list(orbit_chunks(scene, n_frames, res, elevation_deg, radius, fov_deg, background,
                                       progress=progress)))


def orbit_chunks(scene: GaussianScene, n_frames: int = 48, res: int = 256, elevation_deg: float = ELEVATION_DEG,
                 radius: float = RADIUS, fov_deg: float = FOV_DEG, background=BACKGROUND, *,
                 progress: Progress | None = None) -> Iterator[Tensor]:
    """``orbit_frames`` as it is rendered: float [B, res, res, 3] chunks of at most
    RENDER_BATCH frames (for ``write_video`` to stream)."""
    cams = orbit_cameras(n_frames, res, elevation_deg, radius, fov_deg)
    for done, out in _batched_renders(scene, cams, background):
        yield out.rgb.clamp(0, 1).cpu()
        if progress is not None:
            progress(done, len(cams))


RENDER_BATCH = 8   # cameras per render call of the exports


def _batched_renders(scene: GaussianScene, cams: list[Camera], background=BACKGROUND):
    """(frames done, RenderOutput of the next ≤ RENDER_BATCH cameras) along ``cams``, without grad.
    No grad mode is held across a yield: interleaved generators (``noise_chunks``
    beside ``orbit_chunks``) would otherwise restore each other's modes out of
    order and leave gradients off for the caller."""
    for i in range(0, len(cams), RENDER_BATCH):
        chunk = cams[i:i + RENDER_BATCH]
        with torch.no_grad():
            out = render(scene, chunk, background)
        yield i + len(chunk), out


def orbit_video(scene: GaussianScene, path, n_frames: int = 48, res: int = 256, elevation_deg: float = ELEVATION_DEG,
                radius: float = RADIUS, fov_deg: float = FOV_DEG, background=BACKGROUND, fps: float = 24, *,
                progress: Progress | None = None) -> Path:
    """``orbit_frames`` written as an mp4 (see ``write_video``); returns the path."""
    chunks = orbit_chunks(scene, n_frames, res, elevation_deg, radius, fov_deg, background, progress=progress)
    return write_video(chunks, path, fps=fps)


# ---------------------------------------------------------------- noise video

NOISE_SPAN = 1.5                    # |noise| shown at full colour (σ); beyond is clipped
NOISE_NEGATIVE = (0.13, 0.30, 0.85)  # −NOISE_SPAN … 0 … +NOISE_SPAN: blue … white … red
NOISE_POSITIVE = (0.85, 0.30, 0.13)
NEUTRAL_GREY = 0.5                  # pixels off the object


def noise_to_display(noise: Tensor, mask: Tensor | None = None, display_res: int | None = None) -> Tensor:
    """Map a noise image [C,H,W] (≈ N(0,1)) to a displayable [H',W',3] in [0,1].

    The first channel goes through a diverging colour map, −NOISE_SPAN σ blue,
    0 white, +NOISE_SPAN σ red (clipped; red − blue is linear in the value);
    pixels where ``mask`` [H,W] is False (off the object) are neutral grey.
    ``display_res`` (square) upsamples with nearest neighbour so every noise
    pixel stays a crisp block; H', W' are display_res or H, W.
    """
    if noise.dim() != 3:
        raise ValueError(f"noise must be [C,H,W], got {tuple(noise.shape)}")
    v = (noise[0].float() / NOISE_SPAN).clamp(-1, 1)[..., None]
    end = torch.where(v > 0, torch.tensor(NOISE_POSITIVE), torch.tensor(NOISE_NEGATIVE))
    img = 1 + v.abs() * (end - 1)
    if mask is not None:
        img = torch.where(mask[..., None], img, torch.tensor(NEUTRAL_GREY))
    if display_res is not None and tuple(img.shape[:2]) != (display_res, display_res):
        img = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=(display_res, display_res),
                                              mode="nearest")[0].permute(1, 2, 0)
    return img.contiguous()


def noise_frames(scene: GaussianScene, source: NoiseSource, n_frames: int = 48, res: int = 64,
                 display_res: int = 256, *, supersample: int = 4, channels: int = 4, steps: int = 1,
                 renders: Tensor | str | None = None, progress: Progress | None = None) -> Tensor:
    """The noise a run added, along the default orbit of ``orbit_frames`` (the
    framing of ``cfd.framing``).

    ``source`` is the run's noise source (``cfd.distill.noise_source``); frame k
    shows its draw for that view at the step it stands for, round(k·(steps−1)/
    (n_frames−1)): surface noise sticks to the object (cfd) or drifts as its
    refreshes did over the run (cfd-sde), i.i.d. noise is fresh every frame
    (sds, iid), a fixed image stays on the screen (fixed2d). The noise is drawn
    at res×res (the run's noise grid; the surface rendered at ``supersample``×)
    and shown at display_res by ``noise_to_display``, pixels off the object grey.

    renders: frames [F, display_res, W, 3] (e.g. ``orbit_frames``) shown left of
    the noise, or "orbit": the orbit rendered here at display_res. Returns float
    [F, display_res, W + display_res, 3] in [0,1], on the CPU; ``progress(done,
    total)`` is called after each frame.
    """
    return torch.cat(list(noise_chunks(scene, source, n_frames, res, display_res, supersample=supersample,
                                       channels=channels, steps=steps, renders=renders, progress=progress)))


def noise_chunks(scene: GaussianScene, source: NoiseSource, n_frames: int = 48, res: int = 64,
                 display_res: int = 256, *, supersample: int = 4, channels: int = 4, steps: int = 1,
                 renders: Tensor | str | None = None, progress: Progress | None = None) -> Iterator[Tensor]:
    """``noise_frames`` as it is drawn: float chunks of at most RENDER_BATCH
    frames (for ``write_video`` to stream; with ``renders="orbit"`` nothing
    is held beyond a chunk)."""
    cams = [cam.scaled(supersample) for cam in orbit_cameras(n_frames, res)]
    shown = orbit_chunks(scene, n_frames, display_res) if isinstance(renders, str) else None   # same batches
    k = 0
    for done, out in _batched_renders(scene, cams):
        chunk = []
        with torch.no_grad():   # not held across the yield (``_batched_renders``)
            for depth, alpha, cam_ss in zip(out.depth, out.alpha, cams[k:done]):
                surfaces = [Surface(depth, alpha, cam_ss)] if source.needs_surface else None
                noise = source.sample(round(k * (steps - 1) / max(n_frames - 1, 1)), (1, channels, res, res),
                                      surfaces)[0].cpu()
                on_object = torch.nn.functional.avg_pool2d((alpha > SURFACE_ALPHA).float()[None], supersample)[0]
                chunk.append(noise_to_display(noise, on_object.cpu() > 0.5, display_res))
                k += 1
        chunk = torch.stack(chunk)
        if shown is not None:
            chunk = torch.cat([next(shown), chunk], dim=2)
        elif renders is not None:
            chunk = torch.cat([renders[done - len(chunk):done], chunk], dim=2)
        yield chunk
        if progress is not None:
            progress(done, len(cams))


def noise_video(scene: GaussianScene, path, source: NoiseSource, n_frames: int = 48, res: int = 64,
                display_res: int = 256, fps: float = 24, **kwargs) -> Path:
    """``noise_frames`` written as an mp4 (see ``write_video``); returns the path.
    Extra keyword arguments go to ``noise_frames``."""
    return write_video(noise_chunks(scene, source, n_frames, res, display_res, **kwargs), path, fps=fps)


# ----------------------------------------------------------------- viewer PLY

def flip_scene_y(scene: GaussianScene) -> GaussianScene:
    """``scene`` rotated 180° about the x axis: means (x,y,z) → (x,−y,−z) and each
    splat's orientation q → q_x(180°)·q = (−x, w, −z, y) in (w,x,y,z) order.

    A proper rotation (det +1), so the splats keep their shapes; scales and
    opacities are untouched. View-dependent SH (degree > 0) is *not* rotated —
    call it on a degree-0 scene (``save_viewer_ply`` does). The same image comes
    from the camera with ``viewmat @ diag(1,−1,−1,1)``.
    """
    s = scene.detach()
    w, x, y, z = s.quats.unbind(-1)
    quats = torch.stack([-x, w, -z, y], dim=-1)
    means = s.means * s.means.new_tensor([1.0, -1.0, -1.0])
    return GaussianScene(means, s.log_scales.clone(), quats, s.opacity_logits.clone(), s.sh.clone())


def save_viewer_ply(scene: GaussianScene, path, flip_y: bool = True, scale: float = VIEWER_SCALE) -> Path:
    """Write the PLY for gradio's ``gr.Model3D`` splat viewer (gsplat.js) and
    return its path.

    gsplat.js reads only x/y/z, scale_*, rot_*, f_dc_*, opacity, so SH is cut to
    degree 0 (the DC term carries the colour); otherwise the INRIA layout of
    ``save_ply`` (float32, little endian, with nx/ny/nz = 0).

    flip_y: gsplat.js is built for INRIA/COLMAP captures, whose world is y-down:
        its projection maps camera +y to screen-down and its OrbitControls keep
        world +y pointing down the screen. Our scenes are +y-up, so by default
        the scene is rotated 180° about x (``flip_scene_y``: y → −y and z → −z,
        means and quaternions together; a rotation, not a mirror, so nothing is
        reflected). This also brings our front (+z, azimuth 0) to −z, where
        gsplat.js's orbit camera starts (alpha = 0). ``flip_y=False`` writes the
        world coordinates unchanged (equal to ``save_ply`` of the degree-0 scene).
    scale: uniform scale about the origin (means and splat sizes), for the viewer
        only: gradio's viewer has a fixed camera (radius 5, focal ≈ 1132 px) that
        ignores ``camera_position``, so a unit-ball object would fill its canvas.
    """
    s = scene.detach().to("cpu").with_sh_degree(0)
    if flip_y:
        s = flip_scene_y(s)
    if scale != 1.0:
        s = GaussianScene(s.means * scale, s.log_scales + math.log(scale), s.quats, s.opacity_logits, s.sh)
    path = Path(path)
    save_ply(s, path)
    return path


# ------------------------------------------------------------------------ GLB

DEFAULT_LEVEL = 0.5
"""Default iso-level of the opacity density field: where one fully opaque splat
reaches half its peak (≈ 1.18 σ from its centre) and where the accumulated
opacity of a surface of overlapping splats crosses ½ — roughly where a ray
would be half stopped. Fuzzy, semi-transparent results reach it inside their
bulk; if the field never reaches it, ``splat_mesh`` uses half the field's
maximum instead."""


def _precisions(scene: GaussianScene, extra_var: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-splat inverse covariances [N,3,3], the standard deviations along the
    world axes [N,3], and amplitude factors [N] (mass kept when ``extra_var`` is
    added to every covariance as an anti-aliasing blur)."""
    R = quat_to_rotmat(scene.quats.double())
    var = scene.log_scales.double().mul(2).exp() + extra_var  # [N,3] (isotropic blur commutes with R)
    prec = R @ torch.diag_embed(1.0 / var) @ R.transpose(1, 2)
    axis_std = ((R * R) @ var[:, :, None])[:, :, 0].sqrt()  # sqrt(diag Σ)
    amp = (scene.log_scales.double().mul(2).exp() / var).prod(-1).sqrt()
    return prec.float(), axis_std.float(), amp.float()


def _contributing(scene: GaussianScene, min_contribution: float) -> GaussianScene:
    """The splats of ``scene`` (float32, on the CPU) whose opacity exceeds ``min_contribution``."""
    s = scene.detach().to("cpu").map(lambda t: t.float())
    if len(s) == 0:
        raise ValueError("density_grid: the scene has no splats")
    keep = s.opacities > min_contribution
    if not keep.any():
        raise ValueError("density_grid: every splat is transparent (opacity ≤ %g)" % min_contribution)
    return s.select(keep)


def _grid_box(s: GaussianScene, reach: Tensor, resolution: int, margin: float) -> tuple[Tensor, float, tuple]:
    """(origin [3], voxel size h, (nx, ny, nz)) of ``density_grid``'s grid, from
    the splats' unblurred ±``reach``σ extents (the blur needs h, h needs the box)."""
    _, axis_std0, _ = _precisions(s, 0.0)
    lo = (s.means - reach[:, None] * axis_std0).min(0).values
    hi = (s.means + reach[:, None] * axis_std0).max(0).values
    side = float((hi - lo).max())
    if not math.isfinite(side) or side <= 0:
        raise ValueError("density_grid: the scene has no extent")
    lo, hi = lo - margin * side, hi + margin * side
    h = side * (1 + 2 * margin) / (resolution - 1)
    dims = torch.clamp(((hi - lo) / h).ceil().long() + 1, min=2)
    return lo, h, tuple(int(d) for d in dims)


def density_grid(scene: GaussianScene, resolution: int = 128, margin: float = 0.05, *,
                 sigmas: float = 3.0, min_contribution: float = 1e-3, antialias: bool = True,
                 colors: bool = False, chunk: int = 1 << 21
                 ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None]:
    """Sample the opacity density d(x) = Σᵢ oᵢ exp(−½ (x−μᵢ)ᵀ Σᵢ⁻¹ (x−μᵢ)) on a
    regular grid.

    Grid: cubic voxels of size ``h`` over the bounding box of the splats' ±3σ
    extents (splats that contribute), grown by ``margin`` × its largest side on
    every side; ``resolution`` points along the largest side. Point (i,j,k)
    sits at origin + h·(i,j,k) (world units).

    Each splat is evaluated only in its window of ±min(sigmas, √(2 ln(oᵢ/
    min_contribution))) standard deviations (per world axis, as a cube of
    voxels), splats grouped by window size and chunked (``chunk`` evaluations at
    a time). Splats whose opacity is below ``min_contribution`` are skipped.
    ``antialias`` adds a blur of variance (h/2)² to each covariance and scales
    oᵢ to keep its mass, so splats smaller than a voxel are not lost between
    grid points.

    Returns (field [nx,ny,nz] float32, origin [3] float, h, colour_sum
    [nx,ny,nz,3] float32 of Σᵢ dᵢ(x)·cᵢ if ``colors`` else None).
    """
    if resolution < 4:
        raise ValueError(f"density_grid: resolution must be ≥ 4, got {resolution}")
    s = _contributing(scene, min_contribution)
    opac = s.opacities
    reach = torch.sqrt(2 * torch.log(opac / min_contribution)).clamp(max=sigmas)  # [N] in σ
    lo, h, (nx, ny, nz) = _grid_box(s, reach, resolution, margin)

    prec, axis_std, amp = _precisions(s, (h / 2) ** 2 if antialias else 0.0)
    log_amp = torch.log(opac * (amp if antialias else 1.0))
    half = torch.clamp((reach[:, None] * axis_std / h).ceil().long(), min=1)  # [N,3] voxels
    k_all = half.max(1).values.clamp(max=max(nx, ny, nz))
    centre = torch.round((s.means - lo) / h).long()  # [N,3]
    col = s.colors if colors else None

    field = torch.zeros(nx * ny * nz)
    csum = torch.zeros(nx * ny * nz, 3) if colors else None
    dims_t = torch.tensor([nx, ny, nz])
    strides = torch.tensor([ny * nz, nz, 1])
    order = torch.argsort(k_all)
    ks, counts = torch.unique_consecutive(k_all[order], return_counts=True)
    start = 0
    for k, count in zip(ks.tolist(), counts.tolist()):
        group = order[start:start + count]
        start += count
        r = torch.arange(-k, k + 1)
        per = max(1, chunk // (2 * k + 1) ** 3)
        for c0 in range(0, count, per):
            idx = group[c0:c0 + per]
            _splat_windows(field, csum, idx, r, centre, lo, h, dims_t, strides, s.means, prec, log_amp, col)
        del r
    origin = lo.double().numpy()
    out_c = csum.reshape(nx, ny, nz, 3).numpy() if colors else None
    return field.reshape(nx, ny, nz).numpy(), origin, float(h), out_c


def _splat_windows(field: Tensor, csum: Tensor | None, idx: Tensor, r: Tensor, centre: Tensor, lo: Tensor,
                   h: float, dims: Tensor, strides: Tensor, means: Tensor, prec: Tensor, log_amp: Tensor,
                   col: Tensor | None) -> None:
    """Add the splats ``idx`` (B of them, one window size K = len(r)) to the
    flat ``field`` (and ``csum``) over their cube windows centre + r³.

    Separable: per-axis voxel indices and offsets d [B,K] are combined by
    broadcasting and the exponent log oᵢ − ½ dᵀΣᵢ⁻¹d is expanded into its six
    terms, so the full [B,K,K,K] size is touched by four element-wise ops, the
    index sum and the scatter. Voxels outside the grid are clamped to the border
    with an offset of 10⁴ world units, which makes their weight exactly 0."""
    vox = centre[idx, :, None] + r  # [B,3,K]
    outside = (vox < 0) | (vox >= dims[None, :, None])
    vox = torch.minimum(vox.clamp(min=0), dims[None, :, None] - 1)
    d = lo[None, :, None] + vox.float() * h - means[idx, :, None]  # [B,3,K]
    d.masked_fill_(outside, 1e4)
    P = prec[idx] * -0.5
    B, K = len(idx), len(r)
    dx, dy, dz = d[:, 0].view(B, K, 1, 1), d[:, 1].view(B, 1, K, 1), d[:, 2].view(B, 1, 1, K)
    p = lambda i, j: P[:, i, j].view(B, 1, 1, 1)  # noqa: E731
    e_xy = (p(0, 0) * dx * dx + p(1, 1) * dy * dy + 2 * p(0, 1) * dx * dy
            + log_amp[idx].view(B, 1, 1, 1))  # [B,K,K,1]
    lin_z = 2 * p(0, 2) * dx + 2 * p(1, 2) * dy  # [B,K,K,1]
    val = (lin_z + p(2, 2) * dz).mul_(dz).add_(e_xy).exp_().reshape(-1)  # [B·K³]
    ix = (vox * strides[None, :, None]).int()
    flat = (ix[:, 0].view(B, K, 1, 1) + ix[:, 1].view(B, 1, K, 1)) + ix[:, 2].view(B, 1, 1, K)
    flat = flat.reshape(-1)
    field.index_add_(0, flat, val)
    if csum is not None:
        csum.index_add_(0, flat, val.view(B, -1, 1).mul(col[idx].view(B, 1, 3)).reshape(-1, 3))

def _drop_fragments(vertices: np.ndarray, faces: np.ndarray, min_fraction: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Remove connected components with fewer than ``min_fraction`` × (faces of
    the largest component) faces; re-index the kept vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nv = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(nv, nv))
    n_comp, labels = connected_components(graph, directed=False)
    if n_comp <= 1:
        return vertices, faces
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label, minlength=n_comp)
    keep_comp = sizes >= min_fraction * sizes.max()
    keep_face = keep_comp[face_label]
    faces = faces[keep_face]
    used = np.zeros(nv, dtype=bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces]


def _vertex_colors(scene: GaussianScene, vertices: np.ndarray, k: int = 16) -> np.ndarray:
    """[V,3] colour in [0,1] at each vertex: Σ wᵢ cᵢ / Σ wᵢ over its ``k``
    nearest splat centres (cKDTree), wᵢ = the splat's density contribution
    oᵢ exp(−½ dᵀΣᵢ⁻¹d) at the vertex; the nearest splat's colour where all
    weights vanish."""
    from scipy.spatial import cKDTree

    s = scene.detach().to("cpu").map(lambda t: t.float())
    keep = s.opacities > 1e-3
    s = s.select(keep) if keep.any() else s
    k = min(k, len(s))
    tree = cKDTree(s.means.numpy().astype(np.float64))
    _, nn = tree.query(vertices, k=k, workers=-1)
    nn = torch.from_numpy(np.asarray(nn).reshape(len(vertices), k))
    prec, _, _ = _precisions(s, 0.0)
    p6 = torch.stack([prec[:, 0, 0], prec[:, 1, 1], prec[:, 2, 2],
                      2 * prec[:, 0, 1], 2 * prec[:, 0, 2], 2 * prec[:, 1, 2]], dim=1)[nn]  # [V,k,6]
    dx, dy, dz = (torch.from_numpy(vertices).float()[:, None, :] - s.means[nn]).unbind(-1)  # [V,k]
    m = (p6[..., 0] * dx * dx + p6[..., 1] * dy * dy + p6[..., 2] * dz * dz
         + p6[..., 3] * dx * dy + p6[..., 4] * dx * dz + p6[..., 5] * dy * dz)
    logw = torch.log(s.opacities[nn]) - 0.5 * m
    w = torch.softmax(logw, dim=1)  # normalised Σ wᵢ, robust to underflow
    rgb = (w[:, :, None] * s.colors[nn]).sum(1)
    dead = ~torch.isfinite(rgb).all(-1)
    rgb[dead] = s.colors[nn[dead, 0]]
    return rgb.clamp(0, 1).numpy()


def splat_mesh(scene: GaussianScene, resolution: int = 128, level: float | None = None, *,
               margin: float = 0.05, min_fragment: float = 0.01, antialias: bool = True):
    """A coloured triangle mesh of the splats' opacity density field.

    Samples ``density_grid(scene, resolution, margin)``, pads it with a zero
    border (so every surface closes), runs marching cubes at ``level`` (default
    ``DEFAULT_LEVEL`` = 0.5; if the field's maximum is below it, half the maximum
    is used), drops connected components with fewer than ``min_fragment`` × the
    largest component's faces (0 keeps everything), and colours each vertex
    from the splats that make it (``_vertex_colors``).

    Returns a ``trimesh.Trimesh`` in world coordinates (+y up, units of the
    scene) with RGBA uint8 vertex colours and outward-facing triangles. Raises
    ValueError for an empty scene or one that gives no surface.
    """
    import trimesh
    from skimage.measure import marching_cubes

    field, origin, h, _ = density_grid(scene, resolution, margin, antialias=antialias)
    peak = float(field.max())
    if not peak > 1e-6:
        raise ValueError("splat_mesh: the density field is empty (no opaque splats); no surface to extract")
    iso = DEFAULT_LEVEL if level is None else float(level)
    if level is None and peak <= iso:
        iso = 0.5 * peak
    if not 0 < iso < peak:
        raise ValueError(f"splat_mesh: level {iso:g} is outside the density field's range (0, {peak:g}); "
                         "no surface")
    padded = np.pad(field, 1)
    # the density is high inside: "ascent" winds the triangles counter-clockwise seen
    # from outside (glTF's front faces), so normals point out and the volume is positive
    verts, faces, _, _ = marching_cubes(padded, level=iso, spacing=(h, h, h),
                                        gradient_direction="ascent", allow_degenerate=False)
    if len(faces) == 0:
        raise ValueError(f"splat_mesh: no surface at level {iso:g}")
    verts = verts.astype(np.float64) + (origin - h)  # undo the padding
    faces = faces.astype(np.int64)
    if min_fragment > 0:
        verts, faces = _drop_fragments(verts, faces, min_fragment)
    rgb = _vertex_colors(scene, verts)
    rgba = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    return trimesh.Trimesh(vertices=verts.astype(np.float32), faces=faces, vertex_colors=rgba, process=False)


def export_glb(scene: GaussianScene, path, resolution: int = 128, level: float | None = None, **kwargs):
    """Mesh the splats with ``splat_mesh(scene, resolution, level, **kwargs)`` and
    write it as glTF binary (``.glb``) with per-vertex colours (COLOR_0).

    glTF is +y up like our world, so coordinates are written unchanged. The file
    goes to a temporary name first, then is renamed. Returns the mesh.
    """
    mesh = splat_mesh(scene, resolution, level, **kwargs)
    with atomic_path(path) as tmp:
        mesh.export(str(tmp), file_type="glb")
    return mesh
