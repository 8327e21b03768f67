import math
import os
import shutil
import warnings

import pytest
import torch

from cfd import cpu_kernel as kernel
from cfd.cameras import orbit_camera
from cfd.gaussians import init_scene, make_scene
from cfd.render import (ALPHA_MIN, T_MIN, build_cpu_kernel, composite, composite_reference, composite_torch,
                        cpu_kernel, project, project_torch, render)


@pytest.fixture
def cpp(monkeypatch):
    """The C++ compositor in use (``CFD_CPU_KERNEL`` unset), built ahead as ``make``
    and the app's start-up build it (at once where it is built). Skips where there
    is no C++ compiler; where there is one, the kernel must build."""
    monkeypatch.delenv("CFD_CPU_KERNEL", raising=False)
    build_cpu_kernel()
    if cpu_kernel() is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("no C++ compiler: the pure-torch compositor stands in")
        pytest.fail("the C++ compositor did not build: see the warning")


@pytest.fixture(params=["cpp", "torch"])
def compositor(request):
    """``composite`` by the C++ kernel, or ``composite_torch``."""
    if request.param == "torch":
        return composite_torch
    request.getfixturevalue("cpp")
    return composite


def one_splat(pos, scale=0.02, color=(1.0, 0.0, 0.0), opacity=0.5):
    return make_scene(torch.tensor([pos]), torch.full((1, 3), scale), torch.tensor([color]),
                      torch.tensor([opacity]))


@pytest.mark.parametrize("pos", [(0.0, 0.0, 0.0), (0.31, -0.17, 0.2), (-0.4, 0.25, -0.3)])
def test_single_splat_lands_where_the_camera_math_says(pos):
    cam = orbit_camera(25, 10, 2.5, 49, 96, 80)
    scale, opacity = 0.04, 0.5
    out = render(one_splat(pos, scale, opacity=opacity), cam)
    p = cam.viewmat[:3, :3] @ torch.tensor(pos) + cam.viewmat[:3, 3]
    u, v = (cam.K @ p)[:2] / p[2]
    a = out.alpha
    ys, xs = torch.meshgrid(torch.arange(80) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    cu, cv = (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()
    assert abs(cu - u) < 0.25 and abs(cv - v) < 0.25
    # footprint: a Gaussian of variance (f·s/z)² + 0.3 px² blur and peak = opacity
    var = (cam.K[0, 0] * scale / p[2]) ** 2 + 0.3
    var_x = (a * (xs - cu) ** 2).sum() / a.sum()
    assert abs(var_x / var - 1) < 0.05
    assert abs(a.sum() / (opacity * 2 * math.pi * var) - 1) < 0.05


def test_azimuth_90_sees_the_plus_x_side():
    red = one_splat((0.5, 0.0, 0.0), 0.15, (1.0, 0.0, 0.0), 0.99)
    blue = one_splat((-0.5, 0.0, 0.0), 0.15, (0.0, 0.0, 1.0), 0.99)
    scene = type(red).cat([blue, red])
    centre = render(scene, orbit_camera(90, 0, 2.5, 49, 33, 33)).rgb[16, 16]
    assert centre[0] > 0.9 and centre[2] < 0.1
    centre = render(scene, orbit_camera(-90, 0, 2.5, 49, 33, 33)).rgb[16, 16]
    assert centre[2] > 0.9 and centre[0] < 0.1


def test_depth_is_camera_z_of_an_opaque_splat():
    out = render(one_splat((0.0, 0.0, 0.2), 0.3, opacity=0.999), orbit_camera(0, 0, 2.5, 49, 32, 32))
    assert abs(out.depth[16, 16].item() - 2.3) < 1e-4
    assert out.alpha[16, 16] > 0.98
    assert out.alpha[0, 0] == 0 and out.depth[0, 0] == 0  # nothing hit: depth 0


def test_background_shows_where_empty():
    out = render(one_splat((0.0, 0.0, 0.0), 0.01), orbit_camera(0, 0, 2.5, 49, 32, 32), (0.2, 0.4, 0.6))
    assert torch.allclose(out.rgb[0, 0], torch.tensor([0.2, 0.4, 0.6]))


def test_gradients_reach_every_parameter():
    scene = init_scene(200, seed=1, radius=0.5, sh_degree=3, opacity=0.6)
    scene.sh.data[:, 1:] = 0.1 * torch.randn_like(scene.sh[:, 1:])
    scene.quats.data = torch.randn_like(scene.quats)
    scene.requires_grad_(True)
    out = render(scene, orbit_camera(20, 15, 2.5, 49, 48, 48))
    (out.rgb.square().sum() + out.depth.sum()).backward()
    for name, t in scene.tensors().items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
    assert out.means2d_grad_norm().sum() > 0


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_tiled_compositor_matches_dense_reference(tile_size, compositor):
    g = torch.Generator().manual_seed(2)
    scene = init_scene(300, seed=0, radius=0.6, opacity=0.7)
    scene.log_scales.data = torch.log(torch.rand(300, 3, generator=g) * 0.08 + 0.01)
    scene.quats.data = torch.randn(300, 4, generator=g)
    cam = orbit_camera(30, 20, 2.5, 49, 37, 29)
    means2d, conics, depths, radii = project(scene, cam)
    feats = torch.rand(300, 5, generator=g)
    inputs = [t.detach().clone().requires_grad_(True) for t in (feats, means2d, conics, scene.opacities)]
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = compositor(*inputs, depths.detach(), radii, 37, 29, tile_size)
    ref = composite_reference(*ref_inputs, depths.detach(), radii, 37, 29)
    assert (out - ref).abs().max() < 1e-5
    weights = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weights).sum(), ref_inputs)
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_nothing_visible_renders_background_and_backprops():
    scene = one_splat((0.0, 0.0, 5.0)).requires_grad_(True)  # behind the camera
    out = render(scene, orbit_camera(0, 0, 2.5, 49, 16, 16))
    assert torch.all(out.alpha == 0) and torch.allclose(out.rgb, torch.ones(16, 16, 3))
    out.rgb.sum().backward()
    assert torch.all(scene.means.grad == 0)


def batch_scene(sh_degree=3):
    """A small anisotropic scene with view-dependent colour."""
    g = torch.Generator().manual_seed(4)
    scene = init_scene(400, seed=3, radius=0.6, sh_degree=sh_degree, opacity=0.6)
    scene.log_scales.data = torch.log(torch.rand(400, 3, generator=g) * 0.06 + 0.01)
    scene.quats.data = torch.randn(400, 4, generator=g)
    scene.sh.data[:, 1:] = 0.2 * torch.randn(scene.sh[:, 1:].shape, generator=g)
    return scene.requires_grad_(True)


BATCH_CAMERAS = [orbit_camera(10, 5, 2.5, 49, 40, 32), orbit_camera(130, 30, 2.2, 40, 40, 32),
                 orbit_camera(-75, -20, 3.0, 55, 40, 32)]


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_a_batch_renders_each_view_as_its_camera_alone(sh_degree):
    scene, bg = batch_scene(sh_degree), (0.2, 0.5, 0.9)
    out = render(scene, BATCH_CAMERAS, bg)
    assert out.rgb.shape == (3, 32, 40, 3) and out.alpha.shape == out.depth.shape == (3, 32, 40)
    assert out.means2d.shape == (3, 400, 2) and out.radii.shape == (3, 400)
    for i, cam in enumerate(BATCH_CAMERAS):
        one = render(scene, cam, bg)
        for field in ("rgb", "alpha", "depth", "means2d", "radii"):
            assert torch.equal(getattr(out, field)[i], getattr(one, field)), (i, field)
    assert render(scene, tuple(BATCH_CAMERAS[:1]), bg).rgb.shape == (1, 32, 40, 3)


def test_batch_gradients_are_the_sum_of_the_per_view_gradients():
    scene = batch_scene()
    params = list(scene.tensors().values())

    def loss(out):
        return out.rgb.square().sum() + out.depth.sum() + out.alpha.sum()

    batched = render(scene, BATCH_CAMERAS)
    got = torch.autograd.grad(loss(batched), params + [batched.means2d])
    singles = [render(scene, cam) for cam in BATCH_CAMERAS]
    per_view = [torch.autograd.grad(loss(o), params + [o.means2d]) for o in singles]
    for j, name in enumerate(scene.tensors()):
        want = sum(g[j] for g in per_view)
        assert want.abs().max() > 0, name
        assert (got[j] - want).abs().max() <= 1e-5 * want.abs().max(), name
    for i in range(len(BATCH_CAMERAS)):
        want = per_view[i][-1]
        assert (got[-1][i] - want).abs().max() <= 1e-5 * want.abs().max()


def test_means2d_grad_norm_is_per_view_for_a_batch():
    scene = batch_scene()
    out = render(scene, BATCH_CAMERAS)
    assert out.means2d_grad_norm().shape == (3, 400) and not out.means2d_grad_norm().any()
    out.rgb.sum().backward()
    norm = out.means2d_grad_norm((2.0, 3.0))
    g = out.means2d.grad
    assert torch.allclose(norm, (g * torch.tensor([2.0, 3.0])).norm(dim=-1))


def test_cameras_of_different_sizes_are_refused():
    scene = batch_scene()
    with pytest.raises(ValueError, match="40×32, 48×32"):
        render(scene, [BATCH_CAMERAS[0], orbit_camera(0, 0, 2.5, 49, 48, 32)])
    with pytest.raises(ValueError, match="empty"):
        render(scene, [])


EDGE_CAMERA = orbit_camera(0, 0, 2.5, 49, 37, 29)  # 37×29: partial tiles on the right and bottom


def edge_scene():
    """Small random splats and two large ones hanging over EDGE_CAMERA's right and
    bottom edges."""
    edges = make_scene(torch.tensor([[0.9, 0.1, 0.0], [-0.2, -0.8, 0.1]]), torch.tensor([[0.25, 0.1, 0.2]] * 2),
                       torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3]]), torch.tensor([0.8, 0.6]))
    return type(edges).cat([init_scene(100, seed=5, radius=0.6, opacity=0.5), edges]).requires_grad_(True)


def opaque_stack():
    """30 near-opaque anisotropic splats one behind the other on EDGE_CAMERA's axis:
    its centre pixels stop after two or three of them."""
    g = torch.Generator().manual_seed(8)
    z = torch.linspace(0.3, -0.3, 30)
    means = torch.stack([0.02 * torch.sin(7 * z), 0.02 * torch.cos(5 * z), z], -1)
    return make_scene(means, torch.tensor([[0.15, 0.08, 0.1]]).expand(30, 3), torch.rand(30, 3, generator=g),
                      torch.full((30,), 0.99), torch.randn(30, 4, generator=g)).requires_grad_(True)


AGREEMENT_CASES = {
    "one camera, SH 0": lambda: (batch_scene(0), BATCH_CAMERAS[0]),
    "3 cameras, SH 3": lambda: (batch_scene(3), BATCH_CAMERAS),
    "splats partly off-screen": lambda: (edge_scene(), EDGE_CAMERA),
    "opaque stack": lambda: (opaque_stack(), EDGE_CAMERA),
}


def rendered(scene, cameras, kernel, monkeypatch):
    """rgb, alpha and alpha·depth by the ``kernel`` ("cpp" or "torch") compositor,
    and the gradients of a random loss w.r.t. the scene's tensors and means2d."""
    if kernel == "torch":
        monkeypatch.setenv("CFD_CPU_KERNEL", "torch")
    else:
        monkeypatch.delenv("CFD_CPU_KERNEL", raising=False)
    out = render(scene, cameras, (0.2, 0.5, 0.9))
    g = torch.Generator().manual_seed(7)
    loss = sum((x * torch.randn(x.shape, generator=g)).sum() for x in (out.rgb, out.alpha, out.depth))
    grads = torch.autograd.grad(loss, list(scene.tensors().values()) + [out.means2d])
    return [out.rgb, out.alpha, out.alpha * out.depth], grads


@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_cpp_compositor_agrees_with_the_torch_compositor(case, cpp, monkeypatch):
    scene, cameras = AGREEMENT_CASES[case]()
    if case == "splats partly off-screen":
        means2d, _, _, radii = project(scene, cameras)
        x, y, r = means2d[-2:, 0], means2d[-1, 1], radii[-2:].amax(-1)
        assert x[0] < 37 < x[0] + r[0] and y < 29 < y + r[1]
    images, grads = rendered(scene, cameras, "cpp", monkeypatch)
    ref_images, ref_grads = rendered(scene, cameras, "torch", monkeypatch)
    for got, want in zip(images, ref_images):
        assert (got - want).abs().max() < 1e-5
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_an_opaque_stack_stops_early_like_the_dense_reference(compositor):
    scene = opaque_stack()
    means2d, conics, depths, radii = project(scene, EDGE_CAMERA)
    feats = torch.rand(30, 5, generator=torch.Generator().manual_seed(9))
    feats[:, 4] = 1  # composites to alpha
    inputs = [t.detach().clone().requires_grad_(True) for t in (feats, means2d, conics, scene.opacities)]
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = compositor(*inputs, depths.detach(), radii, 37, 29)
    ref = composite_reference(*ref_inputs, depths.detach(), radii, 37, 29)
    assert out[..., 4].max() < 1 - T_MIN / 2  # Σ w = 1 − final T, and T stops above T_MIN (30 layers: 1 − 1e-60)
    assert (out - ref).abs().max() < 1e-5
    grads = torch.autograd.grad(out.sum(), inputs)
    ref_grads = torch.autograd.grad(ref.sum(), ref_inputs)
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def assert_same_bits_at_any_thread_count(run) -> None:
    """``run()``'s tensors are the same bits run twice on one thread and once on two."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 1, 2):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(*results):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_cpp_compositor_is_bit_identical_across_runs_and_thread_counts(cpp):
    scene = batch_scene()
    means2d, conics, depths, radii = project(scene, BATCH_CAMERAS)
    g = torch.Generator().manual_seed(6)
    feats = torch.rand(3, 400, 5, generator=g)
    inputs = [t.detach().clone().requires_grad_(True)
              for t in (feats, means2d, conics, scene.opacities.expand_as(depths))]
    weights = torch.randn(3, 32, 40, 5, generator=g)

    def run():
        out = composite(*inputs, depths.detach(), radii, 40, 32)
        return [out, *torch.autograd.grad((out * weights).sum(), inputs)]

    assert_same_bits_at_any_thread_count(run)


def wide_scene():
    """Splats around and behind BATCH_CAMERAS (near plane, frustum clamp) with
    opacities from 0.001 (below ALPHA_MIN: culled) to 1."""
    g = torch.Generator().manual_seed(11)
    scene = init_scene(600, seed=12, radius=3.5, opacity=0.5)
    scene.log_scales.data = torch.log(torch.rand(600, 3, generator=g) * 0.3 + 0.01)
    scene.quats.data = torch.randn(600, 4, generator=g)
    scene.opacity_logits.data = torch.logit(torch.rand(600, generator=g).clamp(0.001, 0.999))
    return scene.requires_grad_(True)


PROJECTION_CASES = {"anisotropic, 3 cameras": batch_scene, "around and behind the cameras": wide_scene,
                    "splats partly off-screen": edge_scene}


def projected(scene, kernel, monkeypatch):
    """``project`` by the C++ kernel ("cpp") or ``project_torch`` ("torch") into
    BATCH_CAMERAS, and the gradients of a random loss of means2d, conics and
    depths w.r.t. the means, log-scales and quaternions."""
    monkeypatch.delenv("CFD_CPU_KERNEL", raising=False)
    out = (project if kernel == "cpp" else project_torch)(scene, BATCH_CAMERAS)
    g = torch.Generator().manual_seed(13)
    loss = sum((x * torch.randn(x.shape, generator=g)).sum() for x in out[:3])
    return out, torch.autograd.grad(loss, [scene.means, scene.log_scales, scene.quats])


@pytest.mark.parametrize("case", PROJECTION_CASES)
def test_cpp_projection_agrees_with_the_torch_projection(case, cpp, monkeypatch):
    scene = PROJECTION_CASES[case]()
    (means2d, conics, depths, radii), grads = projected(scene, "cpp", monkeypatch)
    (ref_means2d, ref_conics, ref_depths, ref_radii), ref_grads = projected(scene, "torch", monkeypatch)
    assert torch.equal(means2d, ref_means2d) and torch.equal(depths, ref_depths)
    assert ((conics - ref_conics).abs() <= 1e-5 * ref_conics.abs().clamp_min(1)).all()
    differ = radii != ref_radii   # a ceil at an integer may go either way by float rounding
    assert differ.float().mean() < 1e-3 and ((radii - ref_radii).abs() <= 1).all()
    if case == "around and behind the cameras":   # culled: behind the near plane, off-screen, too transparent
        assert (ref_radii == 0).any() and (ref_radii > 0).any()
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_cpp_projection_is_bit_identical_across_runs_and_thread_counts(cpp):
    scene = wide_scene()
    weights = [torch.randn(3, 600, k, generator=torch.Generator().manual_seed(k)) for k in (2, 3)]

    def run():
        means2d, conics, depths, radii = project(scene, BATCH_CAMERAS)
        loss = (means2d * weights[0]).sum() + (conics * weights[1]).sum() + depths.sum()
        return [means2d, conics, depths, radii, *torch.autograd.grad(loss, [scene.means, scene.log_scales,
                                                                             scene.quats])]

    assert_same_bits_at_any_thread_count(run)


@pytest.mark.parametrize("kernel", ["cpp", "torch"])
def test_a_splats_extent_holds_every_pixel_its_opacity_lets_it_reach(kernel, monkeypatch, request):
    """gsplat's opacity-aware extent: outside its radii box a splat's α is below
    ALPHA_MIN (so compositing skips it there); below ALPHA_MIN opacity it is culled."""
    if kernel == "cpp":
        request.getfixturevalue("cpp")
    scene = wide_scene()
    means2d, conics, depths, radii = (project if kernel == "cpp" else project_torch)(scene, BATCH_CAMERAS)
    o = scene.opacities.detach()
    assert (radii[:, o < ALPHA_MIN] == 0).all() and (radii[:, o > 0.5] > 0).any()
    d = torch.stack(torch.meshgrid(torch.arange(-60.0, 61), torch.arange(-60.0, 61), indexing="xy"), -1)
    for view in range(3):
        for i in torch.nonzero(radii[view, :, 0] > 0)[:100, 0]:
            a, b, c = conics[view, i].detach()
            power = 0.5 * a * d[..., 0] ** 2 + 0.5 * c * d[..., 1] ** 2 + b * d[..., 0] * d[..., 1]
            reached = o[i] * torch.exp(-power) >= ALPHA_MIN
            outside = (d[..., 0].abs() > radii[view, i, 0]) | (d[..., 1].abs() > radii[view, i, 1])
            assert not (reached & outside).any()


def composite_inputs():
    """(features, means2d, conics, opacities, depths, radii, width, height) of a small scene."""
    scene = batch_scene()
    means2d, conics, depths, radii = project(scene, BATCH_CAMERAS[0])
    feats = torch.rand(400, 5, generator=torch.Generator().manual_seed(3))
    return feats, means2d.detach(), conics.detach(), scene.opacities.detach(), depths.detach(), radii, 40, 32


def test_cfd_cpu_kernel_torch_forces_the_torch_compositor(monkeypatch):
    monkeypatch.setenv("CFD_CPU_KERNEL", "torch")
    assert cpu_kernel() is None
    args = composite_inputs()
    assert torch.equal(composite(*args), composite_torch(*args))
    monkeypatch.setenv("CFD_CPU_KERNEL", "cuda")
    with pytest.raises(ValueError, match="CFD_CPU_KERNEL='cuda'"):
        composite(*args)


def test_an_unbuilt_kernel_warns_once_and_falls_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.delenv("CFD_CPU_KERNEL", raising=False)
    monkeypatch.setenv("CFD_KERNEL_DIR", str(tmp_path))  # an empty cache: not built
    for name, value in (("_ops", None), ("_warned", set()), ("_registered", lambda ns: None)):
        monkeypatch.setattr(kernel, name, value)  # as in a fresh process
    with pytest.warns(RuntimeWarning, match="not built .*pure torch"):   # the first use: its projection
        args = composite_inputs()
        out = composite(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(composite(*args), out)
    assert torch.equal(out, composite_torch(*args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
def test_cpu_path_matches_gsplat_kernels():
    for seed in range(3):
        scene = init_scene(2000, seed=seed, radius=0.7, sh_degree=3, opacity=0.5)
        scene.sh.data[:, 1:] = 0.2 * torch.randn_like(scene.sh[:, 1:])
        cam = orbit_camera(40 * seed, 10, 2.5, 49, 96, 64)
        cpu = render(scene, cam)
        gpu = render(scene.to("cuda"), cam)
        assert (cpu.rgb - gpu.rgb.cpu()).abs().max() < 1e-3
        assert (cpu.alpha - gpu.alpha.cpu()).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
def test_gsplat_renders_a_batch_in_one_call_like_the_cpu_path():
    scene = batch_scene()
    cpu, gpu = render(scene, BATCH_CAMERAS), render(scene.to("cuda"), BATCH_CAMERAS)
    assert gpu.rgb.shape == cpu.rgb.shape and gpu.means2d.shape == cpu.means2d.shape
    assert gpu.radii.shape == cpu.radii.shape
    assert (cpu.rgb - gpu.rgb.cpu()).abs().max() < 1e-3
    assert (cpu.alpha - gpu.alpha.cpu()).abs().max() < 1e-3
    gpu.rgb.sum().backward()
    assert gpu.means2d_grad_norm().shape == (3, 400) and gpu.means2d_grad_norm().sum() > 0
