import math

import pytest
import torch
from scipy import stats

from cfd.cameras import orbit_camera
from cfd.gaussians import init_scene, make_scene
from cfd.noise import (FixedImageNoise, IIDNoise, Surface, SurfaceNoise, assign_cells, cell_values,
                       consistent_noise, cross_view_correlation, default_cell_size)
from cfd.render import render

RES = 64


def sphere_shell(n=6000, radius=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    spacing = radius * math.sqrt(4 * math.pi / n)
    return make_scene(d * radius, torch.full((n, 3), 0.7 * spacing), torch.rand(n, 3, generator=g),
                      torch.full((n,), 0.9))


def blob(n=5000, seed=3):
    g = torch.Generator().manual_seed(seed)
    scene = init_scene(n, seed=seed, radius=0.6, opacity=0.8)
    scene.log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.04 + 0.01)
    scene.quats = torch.randn(n, 4, generator=g)
    return scene


SCENES = {"shell": sphere_shell(), "blob": blob()}


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
    cells = torch.randint(0, 50, (2000,), generator=g)
    pixels = torch.randint(0, 40, (2000,), generator=g)
    uniq, owner = assign_cells(cells, pixels, 40)
    assert torch.equal(uniq, torch.unique(cells)) and len(owner) == len(uniq)
    for cell, pix in zip(uniq.tolist(), owner.tolist()):
        hits = torch.bincount(pixels[cells == cell], minlength=40)
        assert hits[pix] == hits.max() and pix == int(torch.nonzero(hits == hits.max())[0])


def views_5_degrees_apart():
    return orbit_camera(0, 10, 2.5, 49, RES, RES), orbit_camera(5, 10, 2.5, 49, RES, RES)


def correlation(scene, noise_a, noise_b, cam_a, cam_b):
    ra, rb = render(scene, cam_a), render(scene, cam_b)
    return cross_view_correlation(noise_a, noise_b, cam_a, cam_b, ra.depth, ra.alpha, rb.depth, rb.alpha)


def test_noise_sticks_to_the_surface_across_views():
    scene = SCENES["shell"]
    a, b = views_5_degrees_apart()
    size = default_cell_size(a, 4)
    na = consistent_noise(scene, a, seed=7, supersample=4, cell_size=size)
    nb = consistent_noise(scene, b, seed=7, supersample=4, cell_size=size)
    rho, used = correlation(scene, na, nb, a, b)
    assert used > 500
    assert rho >= 0.4, rho  # measured 0.55; the acceptance bar is 0.25
    other_seed = consistent_noise(scene, b, seed=8, supersample=4, cell_size=size)
    assert abs(correlation(scene, na, other_seed, a, b)[0]) < 0.08
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
    size = default_cell_size(cam.scaled(0.25), 4)
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
