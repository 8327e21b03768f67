import math

import pytest
import torch
from scipy import stats

from cfd.bench import blob_scene, shell_scene, torus_scene
from cfd.cameras import orbit_camera
from cfd.distill import DistillConfig, noise_source
from cfd.gaussians import make_scene
from cfd.noise import (FixedImageNoise, IIDNoise, Surface, SurfaceNoise, assign_cells, cell_values,
                       consistent_noise, cross_view_correlation, default_cell_size, mix64, mix64_int,
                       noise_from_surface, scene_centre, shell_cells)
from cfd.render import render

RES = 64
SCENES = {"shell": shell_scene(), "blob": blob_scene()}


@pytest.fixture(scope="module", params=sorted(SCENES))
def scene(request):
    return SCENES[request.param]


def test_each_view_is_iid_standard_normal(scene):
    cam = orbit_camera(20, 15, 2.5, 49, RES, RES)
    n = consistent_noise(scene, cam, seed=0, channels=4, supersample=4)
    assert n.shape == (4, RES, RES) and n.numel() >= 16384
    assert abs(n.mean()) < 0.05 and abs(n.var() - 1) < 0.05
    assert stats.kstest(n.reshape(-1).numpy(), "norm").pvalue > 0.01
    for a, b in [(n[:, :, 1:], n[:, :, :-1]), (n[:, 1:], n[:, :-1]), (n[1:], n[:-1])]:
        assert abs(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]) < 0.05
    # the object's pixels alone are standard normal too
    alpha = render(scene, cam).alpha
    obj = n[:, alpha > 0.99].reshape(-1)
    assert obj.numel() > 2000 and abs(obj.mean()) < 0.06 and abs(obj.var() - 1) < 0.08


def test_every_cell_has_one_owner_with_most_samples():
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 50, (2000,), generator=g) * 7919
    pixels = torch.randint(0, 40, (2000,), generator=g).sort().values
    sorted_cells, first, owner = assign_cells(cells, pixels, 40)
    assert torch.equal(sorted_cells, cells.sort().values) and torch.equal(sorted_cells[first], torch.unique(cells))
    for cell in torch.unique(cells).tolist():
        hits = torch.bincount(pixels[cells == cell], minlength=40)
        owners = owner[sorted_cells == cell]
        assert (owners == owners[0]).all()
        assert hits[owners[0]] == hits.max() and owners[0] == int(torch.nonzero(hits == hits.max())[0])


def test_cells_are_one_cell_size_across_at_every_radius_and_split_along_a_ray():
    size = 0.04
    d = torch.nn.functional.normalize(torch.randn(500_000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    for radius in (0.25, 0.5, 1.0, 2.0):
        # a sphere of radius r meets ≈ 4πr² / size² cells (up to the cube map's and the shells' quantisation)
        cells_per_area = len(torch.unique(shell_cells(radius * d, size))) * size ** 2 / (4 * math.pi * radius ** 2)
        assert 0.8 < cells_per_area < 1.8, (radius, cells_per_area)
    ray = torch.tensor([[0.3, 0.5, 0.81]]) * torch.tensor([[0.35], [0.85], [2.0]])
    assert len(torch.unique(shell_cells(ray, size))) == 3


def views_5_degrees_apart():
    return orbit_camera(0, 10, 2.5, 49, RES, RES), orbit_camera(5, 10, 2.5, 49, RES, RES)


def correlation(scene, noise_a, noise_b, cam_a, cam_b):
    ra, rb = render(scene, cam_a), render(scene, cam_b)
    return cross_view_correlation(noise_a, noise_b, cam_a, cam_b, ra.depth, ra.alpha, rb.depth, rb.alpha)


@pytest.mark.parametrize("scene", [shell_scene(0.2), shell_scene(0.8), shell_scene(0.3, centre=(0.4, 0.2, 0.1)),
                                   torus_scene()], ids=["small", "large", "off-centre", "torus"])
def test_noise_sticks_to_the_surface_across_views(scene):
    a, b = views_5_degrees_apart()
    size = default_cell_size(a)
    na = consistent_noise(scene, a, seed=7, supersample=4, cell_size=size)
    nb = consistent_noise(scene, b, seed=7, supersample=4, cell_size=size)
    rho, used = correlation(scene, na, nb, a, b)
    assert used > 100
    assert rho >= 0.45, rho  # measured 0.55–0.65 (bench noise); the nearest-pixel measure caps it near 0.6
    other_seed = consistent_noise(scene, b, seed=8, supersample=4, cell_size=size)
    assert abs(correlation(scene, na, other_seed, a, b)[0]) < 4 / math.sqrt(4 * used)  # 4σ of a zero correlation


def test_iid_and_fixed_image_noise_do_not_follow_the_surface():
    scene = SCENES["shell"]
    a, b = views_5_degrees_apart()
    iid = IIDNoise(0).sample(0, (2, 4, RES, RES))
    assert abs(correlation(scene, iid[0], iid[1], a, b)[0]) < 0.08
    # fixed 2D noise only correlates where a pixel reprojects onto itself (~0.13)
    fixed = FixedImageNoise(0).sample(0, (2, 4, RES, RES))
    assert abs(correlation(scene, fixed[0], fixed[1], a, b)[0]) < 0.2


def test_same_seed_same_noise_other_seed_independent(scene):
    cam = orbit_camera(40, 5, 2.5, 49, RES, RES)
    a = consistent_noise(scene, cam, seed=3)
    assert torch.equal(a, consistent_noise(scene, cam, seed=3))
    b = consistent_noise(scene, cam, seed=4)
    assert abs(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]) < 0.05


def test_the_seed_hash_on_python_ints_is_the_tensor_hash():
    for x in (0, 1, 7, 2**31 - 1, 2**40 + 3, -1, -(2**63), 2**63 - 1):
        assert mix64_int(x) == int(mix64(torch.tensor([x], dtype=torch.int64))[0]), x


def test_background_is_fixed_image_space_noise():
    empty = make_scene(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0))
    a = consistent_noise(empty, orbit_camera(0, 0, 2.5, 49, 32, 32), seed=1)
    b = consistent_noise(empty, orbit_camera(120, 30, 2.5, 49, 32, 32), seed=1)
    assert torch.equal(a, b)
    assert abs(a.mean()) < 0.1 and abs(a.var() - 1) < 0.15


@pytest.mark.parametrize("gamma,k", [(0.01, 30), (0.003, 200), (0.02, 7)])
def test_sde_refresh_decorrelates_at_rate_gamma(gamma, k):
    cells = torch.arange(40000, dtype=torch.int64) * 7919
    start = cell_values(cells, seed=0, channels=1, step=10, gamma=gamma)
    later = cell_values(cells, seed=0, channels=1, step=10 + k, gamma=gamma)
    for v in (start, later):
        assert abs(v.mean()) < 0.03 and abs(v.var() - 1) < 0.03
    rho = torch.corrcoef(torch.stack([start[:, 0], later[:, 0]]))[0, 1]
    assert abs(rho - (1 - gamma) ** (k / 2)) < 0.05


def test_sde_source_matches_ode_at_step_zero_and_drifts_after():
    scene = SCENES["blob"]
    cam = orbit_camera(0, 10, 2.5, 49, RES, RES).scaled(4)
    with torch.no_grad():
        out = render(scene, cam)
    surf = [Surface(out.depth, out.alpha, cam)]
    size = default_cell_size(cam.scaled(0.25))
    ode = SurfaceNoise(0, 4, size).sample(0, (1, 4, RES, RES), surf)
    sde = SurfaceNoise(0, 4, size, gamma=0.05)
    assert torch.equal(sde.sample(0, (1, 4, RES, RES), surf), ode)
    later = sde.sample(20, (1, 4, RES, RES), surf)
    rho = torch.corrcoef(torch.stack([ode.reshape(-1), later.reshape(-1)]))[0, 1]
    assert abs(rho - 0.95 ** 10) < 0.05


def expected_correlation(knots, steps, reference_steps, j, k):
    """Π_{i=j+1..k} √(1−γ_i) straight from the knots (np.interp), independent of GammaSchedule."""
    import numpy as np

    ps, gs = zip(*knots)
    rho = 1.0
    for i in range(j + 1, k + 1):
        g = float(np.interp(i / steps, ps, gs))
        if reference_steps is not None:
            g = 1 - (1 - g) ** (reference_steps / steps)
        rho *= math.sqrt(1 - g)
    return rho


@pytest.mark.parametrize("steps, reference, pairs", [
    # the authors' schedule per step of this run: the slow decorrelation the issue measured is gone
    (1000, None, [(0, 50), (0, 100), (0, 200), (0, 300), (0, 1000), (200, 400), (400, 1000), (500, 510)]),
    # scaled to 100 steps of their 25 000: fresh noise early, consistent late
    (100, 25_000, [(0, 1), (10, 12), (30, 32), (38, 40), (40, 60), (40, 100), (70, 100)]),
])
def test_sde_schedule_correlation_follows_the_expected_curve(steps, reference, pairs):
    from cfd.schedule import AUTHORS_SD_GAMMA_KNOTS, GammaSchedule

    schedule = GammaSchedule(AUTHORS_SD_GAMMA_KNOTS, steps, reference)
    cells = torch.arange(40000, dtype=torch.int64) * 7919
    values = {k: cell_values(cells, seed=0, channels=1, step=k, gamma=schedule)[:, 0]
              for k in sorted({k for pair in pairs for k in pair})}
    for v in values.values():
        assert abs(v.mean()) < 0.03 and abs(v.var() - 1) < 0.03
    for j, k in pairs:
        expected = expected_correlation(AUTHORS_SD_GAMMA_KNOTS, steps, reference, j, k)
        assert abs(schedule.correlation(j, k) - expected) < 1e-9
        rho = float(torch.corrcoef(torch.stack([values[j], values[k]]))[0, 1])
        assert abs(rho - expected) < 0.05, (j, k, rho, expected)
    if reference is None:   # what the issue measured: constant γ = 1e-4 kept 0.95 after 1000 steps
        assert expected_correlation(AUTHORS_SD_GAMMA_KNOTS, steps, None, 0, 1000) < 0.4


@pytest.mark.parametrize("method,kind,gamma", [("cfd", SurfaceNoise, 0.0), ("cfd-sde", SurfaceNoise, 0.003),
                                               ("sds", IIDNoise, None), ("iid", IIDNoise, None),
                                               ("fixed2d", FixedImageNoise, None)])
def test_a_run_has_one_noise_source_that_knows_its_cells(method, kind, gamma):
    pixel_space = type("Guidance", (), {"latent_factor": 1})()
    config = DistillConfig(method=method, res=32, supersample=2, gamma=0.003)
    source = noise_source(pixel_space, config)
    assert type(source) is kind
    if kind is SurfaceNoise:
        # cells sized for the middle training view on the run's noise grid, centred where init_scene's ball is
        assert source.supersample == 2 and source.centre == (0.0, 0.0, 0.0)
        assert (source.gamma == 0.0) if gamma == 0.0 else (source.gamma.constant == gamma)
        assert source.cell_size == default_cell_size(orbit_camera(0, 0, 2.5, 49, 32, 32))
        off_centre = shell_scene(0.3, centre=(0.4, 0.2, 0.1))
        centre = noise_source(pixel_space, config, init=off_centre).centre
        assert centre == scene_centre(off_centre) and math.dist(centre, (0.4, 0.2, 0.1)) < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_is_bit_reproducible_and_needs_no_host_sync():
    cam = orbit_camera(30, 20, 2.5, 49, RES, RES).scaled(8)
    with torch.no_grad():
        out = render(SCENES["shell"].to("cuda"), cam)
    for gamma, step in ((0.0, 0), (1e-4, 500)):
        first = noise_from_surface(out.depth, out.alpha, cam, 0, supersample=8, step=step, gamma=gamma)
        torch.cuda.set_sync_debug_mode("error")  # any host sync raises
        try:
            again = noise_from_surface(out.depth, out.alpha, cam, 0, supersample=8, step=step, gamma=gamma)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert first.device.type == "cuda" and torch.equal(first, again)
        assert abs(first.mean()) < 0.05 and abs(first.var() - 1) < 0.05
