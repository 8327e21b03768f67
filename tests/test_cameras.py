import math

import pytest
import torch

from cfd.cameras import CameraRanges, orbit, orbit_camera, sample_cameras


def project(cam, p):
    pc = cam.viewmat[:3, :3] @ p + cam.viewmat[:3, 3]
    uv = cam.K @ pc
    return uv[:2] / uv[2], pc[2]


def test_orbit_camera_conventions():
    front = orbit_camera(0, 0, 3.0, 50, 64, 64)
    assert torch.allclose(front.position, torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)
    side = orbit_camera(90, 0, 3.0, 50, 64, 64)
    assert torch.allclose(side.position, torch.tensor([3.0, 0.0, 0.0]), atol=1e-6)
    top = orbit_camera(0, 30, 2.0, 50, 64, 64)
    assert top.position[1] > 0 and math.isclose(top.elevation_deg, 30, abs_tol=1e-4)
    assert math.isclose(side.azimuth_deg, 90, abs_tol=1e-4)
    # the origin projects to the image centre, at depth = radius
    uv, z = project(front, torch.zeros(3))
    assert torch.allclose(uv, torch.tensor([32.0, 32.0])) and math.isclose(z.item(), 3.0, rel_tol=1e-6)
    # +y is up on screen (smaller row), +x is to the right from the front
    assert project(front, torch.tensor([0.0, 0.5, 0.0]))[0][1] < 32
    assert project(front, torch.tensor([0.5, 0.0, 0.0]))[0][0] > 32
    # vertical fov: a point at the edge of the fov lands on the top border
    edge = torch.tensor([0.0, 3.0 * math.tan(math.radians(25)), 0.0])
    assert abs(project(front, edge)[0][1].item() - 0.0) < 1e-3


def test_viewmat_is_rigid_and_scaled_keeps_view():
    cam = orbit_camera(37, -12, 2.5, 45, 80, 60)
    R = cam.viewmat[:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    assert math.isclose(torch.det(R).item(), 1.0, abs_tol=1e-6)
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (40, 30)
    p = torch.tensor([0.3, -0.2, 0.1])
    assert torch.allclose(project(half, p)[0], project(cam, p)[0] * 0.5, atol=1e-4)


def test_orbit_and_sampling_are_seeded():
    cams = orbit(8, 15, 2.5, 49, 32, 32)
    assert len(cams) == 8 and math.isclose(cams[2].azimuth_deg, 90, abs_tol=1e-4)
    ranges = CameraRanges(elevation=(0, 30), radius=(2.0, 3.0), fov=(40, 50))
    a = sample_cameras(16, 32, 32, torch.Generator().manual_seed(3), ranges)
    b = sample_cameras(16, 32, 32, torch.Generator().manual_seed(3), ranges)
    c = sample_cameras(16, 32, 32, torch.Generator().manual_seed(4), ranges)
    assert all(torch.equal(x.viewmat, y.viewmat) for x, y in zip(a, b))
    assert not all(torch.equal(x.viewmat, y.viewmat) for x, y in zip(a, c))
    for cam in a:
        assert -1e-4 <= cam.elevation_deg <= 30 + 1e-4
        assert 2.0 - 1e-5 <= cam.position.norm() <= 3.0 + 1e-5


def test_pool_views_of_one_draw_are_distinct():
    """A joint multi-view posterior must not see one view twice: with replacement,
    about 9 % of 4-view draws from a 64-view pool repeat a view."""
    ranges = CameraRanges(pool=64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        keys = [cam.key[1] for cam in sample_cameras(4, 16, 16, generator, ranges)]
        assert len(set(keys)) == 4, keys
    keys = [cam.key[1] for cam in sample_cameras(70, 16, 16, generator, ranges)]
    assert len(keys) == 70 and len(set(keys[:64])) == 64   # more views than the pool: every view, then again


@pytest.mark.parametrize("elevation", [90.0, -90.0])
def test_poles_are_well_defined(elevation):
    cam = orbit_camera(0, elevation, 2.0, 50, 16, 16)
    assert torch.isfinite(cam.viewmat).all()
    uv, _ = project(cam, torch.zeros(3))
    assert torch.allclose(uv, torch.tensor([8.0, 8.0]), atol=1e-4)


def test_pixel_rays_hit_what_the_pixels_see():
    cam = orbit_camera(33, 12, 2.5, 45, 20, 14)
    origin, dirs = cam.pixel_rays()
    assert dirs.shape == (14, 20, 3) and torch.allclose(origin, cam.position)
    point = origin + 1.7 * dirs[5, 9]           # depth 1.7 along pixel (row 5, col 9)
    uv, z = project(cam, point)
    assert torch.allclose(uv, torch.tensor([9.5, 5.5]), atol=1e-4) and abs(z.item() - 1.7) < 1e-5
