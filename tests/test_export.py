"""cfd.export: mp4 videos, noise videos, the viewer PLY and the GLB mesh."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfd.cameras import Camera, orbit
from cfd.export import (NEUTRAL_GREY, NOISE_NEGATIVE, NOISE_POSITIVE, NOISE_SPAN, export_glb, flip_scene_y,
                        noise_chunks, noise_frames, noise_to_display, noise_video, orbit_frames, orbit_video,
                        save_viewer_ply,
                        write_video)
from cfd.gaussians import GaussianScene, init_scene, load_ply, make_scene, quat_to_rotmat
from cfd.noise import NoiseSource
from cfd.render import render
from patterns import fibonacci_sphere

INRIA_DC_NAMES = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def shell_scene(n: int = 2000, radius: float = 0.5, sigma: float = 0.02, color=None) -> GaussianScene:
    """Overlapping opaque splats on a sphere; red top / blue bottom unless ``color``."""
    means = fibonacci_sphere(n, radius)
    if color is None:
        colors = torch.where(means[:, 1:2] > 0, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    else:
        colors = torch.tensor([color]).expand(n, 3)
    return make_scene(means, torch.full((n, 3), sigma), colors, torch.full((n,), 0.95))


@pytest.fixture(scope="module")
def small_scene() -> GaussianScene:
    scene = init_scene(200, seed=3, radius=0.5, opacity=0.8, color_jitter=0.4)
    g = torch.Generator().manual_seed(0)
    scene.quats = torch.randn(200, 4, generator=g)
    scene.log_scales = scene.log_scales + 0.3 * torch.randn(200, 3, generator=g)
    return scene


# --------------------------------------------------------------------- videos

def test_write_video_is_browser_h264_with_even_size(tmp_path):
    import imageio.v3 as iio
    import imageio_ffmpeg

    frames = np.random.default_rng(0).random((25, 33, 47, 3)).astype(np.float32)
    path = write_video(frames, tmp_path / "v.mp4", fps=24)
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (48, 34)  # (width, height), padded to even, not rescaled
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 25
    video = iio.imread(str(path), plugin="FFMPEG")
    assert video.shape == (25, 34, 48, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind
    with pytest.raises(ValueError):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "empty.mp4")


def test_write_video_streams_chunks_holding_one_at_a_time(tmp_path):
    """An iterator of frame chunks is encoded as it comes: each chunk is released
    before the next is made (480 frames at 1024² would not fit otherwise), and
    the video is the one the stacked frames give."""
    import weakref

    import imageio.v3 as iio

    frames = torch.rand(20, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    alive = []

    def chunks():
        for i in range(0, 20, 4):
            chunk = frames[i:i + 4].clone()
            alive.append(weakref.ref(chunk))
            yield chunk
            del chunk
            assert all(ref() is None for ref in alive[:-1]), "an earlier chunk is still held"

    streamed = iio.imread(str(write_video(chunks(), tmp_path / "s.mp4")), plugin="FFMPEG")
    stacked = iio.imread(str(write_video(frames, tmp_path / "a.mp4")), plugin="FFMPEG")
    assert len(alive) == 5 and streamed.shape == (20, 32, 48, 3) and np.array_equal(streamed, stacked)
    with pytest.raises(ValueError, match="a chunk of 16×16 frames in a 48×32 video"):
        write_video(iter([frames[:2], torch.zeros(2, 16, 16, 3)]), tmp_path / "bad.mp4")


def test_orbit_frames_start_with_a_direct_render(small_scene):
    frames = orbit_frames(small_scene, n_frames=4, res=48)
    assert frames.shape == (4, 48, 48, 3) and not frames.requires_grad
    direct = render(small_scene, orbit(4, 15, 2.5, 49, 48, 48)[0]).rgb
    assert torch.equal(frames[0], direct.clamp(0, 1))
    assert not torch.equal(frames[0], frames[1])


def test_orbit_video_is_h264_with_all_frames(tmp_path, small_scene):
    import imageio.v3 as iio
    import imageio_ffmpeg

    path = orbit_video(small_scene, tmp_path / "orbit.mp4", n_frames=24, res=32)
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"] == "h264" and meta["size"] == (32, 32) and meta["fps"] == 24
    video = iio.imread(str(path), plugin="FFMPEG")
    assert video.shape == (24, 32, 32, 3)
    first = orbit_frames(small_scene, n_frames=1, res=32)[0].numpy()
    assert np.abs(video[0].astype(float) / 255 - first).mean() < 0.03  # lossy, but close


# ---------------------------------------------------------------- noise video

def test_noise_to_display_maps_the_first_channel_and_greys_the_background():
    noise = torch.tensor([[[0.0, NOISE_SPAN], [-NOISE_SPAN, 9.0]]]).repeat(3, 1, 1)
    noise[1:] = -5.0  # only the first channel is shown
    img = noise_to_display(noise, display_res=4)
    assert img.shape == (4, 4, 3)
    assert torch.equal(img[0, 0], torch.ones(3))  # 0 → white
    assert torch.allclose(img[0, 2], torch.tensor(NOISE_POSITIVE))
    assert torch.allclose(img[2, 0], torch.tensor(NOISE_NEGATIVE))
    assert torch.allclose(img[2, 2], torch.tensor(NOISE_POSITIVE))  # clipped
    assert torch.equal(img[::2, ::2], img[1::2, 1::2])  # crisp blocks
    half = noise_to_display(torch.full((1, 1, 1), -NOISE_SPAN / 2))[0, 0]
    assert torch.isclose(half[0] - half[2], (img[2, 0, 0] - img[2, 0, 2]) / 2)  # red − blue is linear in the noise
    masked = noise_to_display(noise, mask=torch.tensor([[True, False], [False, True]]))
    assert torch.equal(masked[0, 1], torch.full((3,), NEUTRAL_GREY)) and torch.equal(masked[0, 0], img[0, 0])
    with pytest.raises(ValueError):
        noise_to_display(noise[0])


def shown_noise(frames: torch.Tensor, res: int) -> torch.Tensor:
    """[F, 1, res, res]: what a noise video shows at each noise pixel (red − blue at the block centres)."""
    f = frames.shape[1] // res
    centres = frames[:, f // 2::f, f // 2::f]
    return (centres[..., 0] - centres[..., 2])[:, None]


@pytest.mark.parametrize("method", ["cfd", "sds", "fixed2d"])
def test_noise_video_shows_the_runs_noise_on_the_object_only(method):
    from cfd.bench import shell_scene as sphere
    from cfd.distill import DistillConfig, noise_source
    from cfd.noise import cross_view_correlation

    scene, res, n = sphere(), 32, 48
    config = DistillConfig(method=method, res=res, supersample=4)
    source = noise_source(type("PixelGuidance", (), {"latent_factor": 1})(), config)
    frames = noise_frames(scene, source, n_frames=n, res=res, display_res=4 * res, supersample=4, steps=config.steps)
    shown = shown_noise(frames, res)
    cams = orbit(n, 15, 2.5, 49, res, res)
    outs = [render(scene, cam) for cam in cams]
    rho = np.mean([cross_view_correlation(shown[k], shown[k + 1], cams[k], cams[k + 1], outs[k].depth, outs[k].alpha,
                                          outs[k + 1].depth, outs[k + 1].alpha)[0] for k in range(n - 1)])
    if method == "cfd":
        assert rho >= 0.4, rho  # consecutive frames 7.5° apart: the noise moves with the surface (measured 0.63)
    elif method == "sds":
        assert abs(rho) < 0.05, rho  # fresh noise every frame
    # the background shows no noise, the object does
    centres = frames[:, 2::4, 2::4]
    alpha = torch.stack([o.alpha for o in outs])
    assert (alpha < 0.01).any() and (centres[alpha < 0.01] == NEUTRAL_GREY).all()
    coloured = (centres != NEUTRAL_GREY).any(-1)
    inside = -torch.nn.functional.max_pool2d(-alpha, 3, stride=1, padding=1) > 0.99  # opaque, off the silhouette
    assert inside.sum() > 3000 and coloured[inside].all()
    if method == "fixed2d":  # one image, fixed on the screen
        both = coloured[0] & coloured[1]
        assert both.sum() > 150 and torch.equal(shown[0, 0][both], shown[1, 0][both])


def test_noise_frames_draw_each_frame_at_its_step_next_to_the_renders(tmp_path, small_scene):
    class Recorder(NoiseSource):
        def __init__(self):
            self.steps = []

        def sample(self, step, shape, surfaces=None):
            self.steps.append(step)
            return torch.randn(shape)

    source = Recorder()
    renders = orbit_frames(small_scene, n_frames=5, res=32)
    frames = noise_frames(small_scene, source, n_frames=5, res=8, display_res=32, steps=301, renders=renders)
    assert source.steps == [0, 75, 150, 225, 300]  # frame k ↔ step round(k·(steps−1)/(frames−1))
    assert frames.shape == (5, 32, 64, 3) and torch.equal(frames[:, :, :32], renders)

    path = noise_video(small_scene, tmp_path / "noise.mp4", Recorder(), n_frames=2, res=8, display_res=32)
    import imageio_ffmpeg
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 2


def test_noise_chunks_render_the_orbit_beside_the_noise_and_leave_gradients_on(small_scene):
    """``renders="orbit"`` renders the orbit chunk by chunk (two interleaved
    generators): the same frames as ``orbit_frames``, and the caller's grad mode
    is untouched while chunks are streamed and afterwards."""
    from cfd.noise import IIDNoise

    assert torch.is_grad_enabled()
    chunks, seen = noise_chunks(small_scene, IIDNoise(0), n_frames=12, res=8, display_res=32, renders="orbit"), []
    for chunk in chunks:
        seen.append(torch.is_grad_enabled())
        assert chunk.shape[1:] == (32, 64, 3)
    frames = torch.cat(list(noise_chunks(small_scene, IIDNoise(0), n_frames=12, res=8, display_res=32,
                                         renders="orbit")))
    assert seen == [True, True] and torch.is_grad_enabled()
    assert torch.equal(frames[:, :, :32], orbit_frames(small_scene, n_frames=12, res=32))


# ----------------------------------------------------------------- viewer PLY

def test_viewer_ply_has_only_dc_fields(tmp_path, small_scene):
    from plyfile import PlyData

    scene = small_scene.with_sh_degree(3)
    scene.sh[:, 1:] = 0.3
    path = save_viewer_ply(scene, tmp_path / "viewer.ply", scale=1.0)
    vertex = PlyData.read(str(path))["vertex"]
    assert [p.name for p in vertex.properties] == INRIA_DC_NAMES
    assert all(np.dtype(p.val_dtype) == np.float32 for p in vertex.properties)
    loaded = load_ply(path)
    assert loaded.sh_degree == 0
    assert torch.equal(loaded.sh[:, 0], scene.sh[:, 0])  # colour kept in the DC term
    assert torch.equal(loaded.log_scales, scene.log_scales)
    assert torch.equal(loaded.opacity_logits, scene.opacity_logits)
    # flipped: y and z negated
    assert torch.equal(loaded.means, scene.means * torch.tensor([1.0, -1.0, -1.0]))
    unflipped = load_ply(save_viewer_ply(scene, tmp_path / "plain.ply", flip_y=False, scale=1.0))
    assert torch.equal(unflipped.means, scene.means) and torch.equal(unflipped.quats, scene.quats)
    # the viewer scale shrinks positions and sizes together (a similarity, same look)
    half = load_ply(save_viewer_ply(scene, tmp_path / "half.ply", flip_y=False, scale=0.5))
    torch.testing.assert_close(half.means, scene.means * 0.5)
    torch.testing.assert_close(half.log_scales.exp(), scene.log_scales.exp() * 0.5)


def test_viewer_flip_is_a_proper_rotation(small_scene):
    flipped = flip_scene_y(small_scene)
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    R, R2 = quat_to_rotmat(small_scene.quats), quat_to_rotmat(flipped.quats)
    assert torch.allclose(R2, F @ R, atol=1e-6)
    assert torch.allclose(torch.linalg.det(R2), torch.ones(len(R2)), atol=1e-5)
    assert torch.allclose(flip_scene_y(flipped).means, small_scene.means)

    flip4 = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    for cam in orbit(3, 20, 2.5, 49, 48, 40):
        moved = Camera(cam.viewmat @ flip4, cam.K, cam.width, cam.height)
        a, b = render(small_scene, cam), render(flipped, moved)
        assert torch.allclose(a.rgb, b.rgb, atol=1e-4)
        assert torch.allclose(a.alpha, b.alpha, atol=1e-4)


# ------------------------------------------------------------------------ GLB

@pytest.fixture(scope="module")
def shell_mesh(tmp_path_factory):
    import trimesh

    path = tmp_path_factory.mktemp("glb") / "shell.glb"
    export_glb(shell_scene(), path, resolution=96)
    return trimesh.load(str(path), force="mesh")


def test_glb_of_a_sphere_shell(shell_mesh):
    mesh = shell_mesh
    assert len(mesh.faces) > 1000
    assert mesh.is_watertight
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - 0.5).max() < 0.05, (r.min(), r.max())
    assert mesh.visual.kind == "vertex"


def test_glb_keeps_plus_y_up_and_splat_colours(shell_mesh):
    v = np.asarray(shell_mesh.vertices)
    c = np.asarray(shell_mesh.visual.vertex_colors)[:, :3].astype(float) / 255
    top, bottom = v[:, 1] > 0.1, v[:, 1] < -0.1
    assert top.sum() > 100 and bottom.sum() > 100
    assert np.abs(c[top] - [1, 0, 0]).max() < 0.02
    assert np.abs(c[bottom] - [0, 0, 1]).max() < 0.02


def test_glb_colour_of_a_single_colour_shell(tmp_path):
    mesh = export_glb(shell_scene(1200, sigma=0.03, color=(0.2, 0.6, 0.4)), tmp_path / "g.glb", resolution=48)
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float) / 255
    assert np.abs(rgb - [0.2, 0.6, 0.4]).max() < 0.01


def test_glb_errors(tmp_path):
    empty = make_scene(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match="no splats"):
        export_glb(empty, tmp_path / "e.glb")
    with pytest.raises(ValueError):
        export_glb(shell_scene(), tmp_path / "e.glb", resolution=32, level=100.0)
    assert not any(tmp_path.iterdir())
    # a faint scene never reaches the default level: half its peak is used instead
    faint = shell_scene(400, sigma=0.03, color=(0.5, 0.5, 0.5))
    faint.opacity_logits = torch.full_like(faint.opacity_logits, -4.0)
    mesh = export_glb(faint, tmp_path / "faint.glb", resolution=32)
    assert len(mesh.faces) > 0 and (tmp_path / "faint.glb").exists()


def _density_at(scene: GaussianScene, points: np.ndarray, chunk: int = 512) -> np.ndarray:
    """The opacity density Σ oᵢ exp(−½ dᵀΣᵢ⁻¹d) at ``points`` [P,3], by brute force."""
    s = scene.detach().map(lambda t: t.double())
    R = quat_to_rotmat(s.quats)
    prec = R @ torch.diag_embed(torch.exp(-2 * s.log_scales)) @ R.transpose(1, 2)
    pts = torch.from_numpy(np.asarray(points, dtype=np.float64))
    out = []
    for p in pts.split(chunk):
        d = p[:, None, :] - s.means[None]  # [P,N,3]
        m = torch.einsum("pni,nij,pnj->pn", d, prec, d)
        out.append((s.opacities[None] * torch.exp(-0.5 * m)).sum(1))
    return torch.cat(out).numpy()


def _solid_ball(n: int = 3000, radius: float = 0.4) -> GaussianScene:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    p = p * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    return make_scene(p, torch.full((n, 3), 0.05), torch.rand(n, 3, generator=g), torch.full((n,), 0.9))


@pytest.mark.parametrize("which", ["ball", "rubber duck"])
def test_glb_is_outward_facing_with_positive_volume(tmp_path, which):
    """The GLB is not inside-out: positive signed volume, ≥ 95 % of the faces have
    the density falling along their normal (outward), watertight (closed field)."""
    import trimesh

    from cfd.scenes import find_scene_sets

    if which == "ball":
        scene = _solid_ball()
    else:
        scene = load_ply(next(o.path for s in find_scene_sets(originals=True) for o in s.objects if o.name == which))
    export_glb(scene, tmp_path / "m.glb", resolution=64)
    mesh = trimesh.load(str(tmp_path / "m.glb"), force="mesh")
    assert mesh.is_watertight
    assert mesh.volume > 0, mesh.volume
    centres, normals = mesh.triangles_center, mesh.face_normals
    eps = 0.01
    outside = _density_at(scene, centres + eps * normals)
    inside = _density_at(scene, centres - eps * normals)
    outward = float((outside < inside).mean())
    assert outward >= 0.95, outward
    if which == "ball":
        assert float((np.einsum("ij,ij->i", normals, centres) > 0).mean()) >= 0.95
