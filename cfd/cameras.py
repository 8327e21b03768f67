"""Pinhole cameras in gsplat's OpenCV convention.

World: right-handed, +y up, the object in the unit ball at the origin.
Camera: x right, y down, z forward; ``viewmat`` maps world to camera
coordinates; ``K`` maps camera coordinates to pixels, pixel centres at
(i + 0.5, j + 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch
from torch import Tensor

from .framing import ELEVATION_DEG, FOV_DEG, PREVIEW_AZIMUTH_DEG, PSNR_VIEWS, RADIUS


@dataclass(frozen=True)
class Camera:
    """One pinhole view.

    viewmat: [4, 4] float32 world→camera (OpenCV: x right, y down, z forward).
    K:       [3, 3] float32 pixel intrinsics.
    width, height: image size in pixels.
    key:     what identifies the view for caches, whatever its resolution: a
             pool's cameras carry (their ranges, their index); None = no name
             (caches then key on the matrices).
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    key: Hashable | None = field(default=None, compare=False)

    def scaled(self, factor: float) -> "Camera":
        """The same view rendered at ``factor`` × the resolution."""
        width, height = round(self.width * factor), round(self.height * factor)
        K = self.K.clone()
        K[0] *= width / self.width
        K[1] *= height / self.height
        K[2] = self.K[2]
        return Camera(self.viewmat, K, width, height, self.key)

    def to(self, device) -> "Camera":
        return Camera(self.viewmat.to(device), self.K.to(device), self.width, self.height, self.key)

    @property
    def device(self) -> torch.device:
        return self.viewmat.device

    @property
    def position(self) -> Tensor:
        """[3] camera centre in world coordinates."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def azimuth_deg(self) -> float:
        """Azimuth of the camera centre: 0 on +z, 90 on +x, in (-180, 180]."""
        x, _, z = self.position.tolist()
        return math.degrees(math.atan2(x, z))

    @property
    def elevation_deg(self) -> float:
        """Elevation of the camera centre above the xz-plane, in degrees."""
        x, y, z = self.position.tolist()
        return math.degrees(math.atan2(y, math.hypot(x, z)))

    def pixel_rays(self, device=None) -> tuple[Tensor, Tensor]:
        """Rays through pixel centres: origin [3] and directions [H, W, 3] in world
        coordinates, scaled so that a point at camera depth z is origin + z·dir;
        built on ``device`` (default the camera's) from the camera's numbers as
        Python floats, so a CPU camera (the loop's) costs a GPU no copy and no
        host sync."""
        device = self.device if device is None else device
        (fx, _, cx), (_, fy, cy), _ = self.K.tolist()
        R = self.viewmat[:3, :3].tolist()
        x = (torch.arange(self.width, device=device, dtype=torch.float32) + 0.5 - cx) / fx
        y = (torch.arange(self.height, device=device, dtype=torch.float32)[:, None] + 0.5 - cy) / fy
        # the world direction of camera ray (x, y, 1) is Rᵀ (x, y, 1)
        return self.position, torch.stack([R[0][k] * x + R[1][k] * y + R[2][k] for k in range(3)], -1)


def look_at(eye: Tensor, target: Tensor | None = None) -> Tensor:
    """[4, 4] world→camera matrix of a camera at ``eye`` looking at ``target``
    (default the origin), with world +y up on screen."""
    target = torch.zeros(3) if target is None else target
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    up = torch.tensor([0.0, 1.0, 0.0])
    if torch.linalg.cross(forward, up).norm() < 1e-6:  # looking straight up/down
        up = torch.tensor([0.0, 0.0, -1.0]) if forward[1] < 0 else torch.tensor([0.0, 0.0, 1.0])
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])
    viewmat = torch.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def intrinsics(fov_deg: float, width: int, height: int) -> Tensor:
    """[3, 3] K for a vertical field of view ``fov_deg`` and square pixels."""
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def orbit_camera(azimuth_deg: float, elevation_deg: float, radius: float, fov_deg: float,
                 width: int, height: int) -> Camera:
    """A camera on a sphere of ``radius`` looking at the origin.

    Azimuth 0 is on the +z axis, 90 on the +x axis; elevation > 0 is above
    (y > 0); ``fov_deg`` is the vertical field of view.
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = radius * torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    return Camera(look_at(eye), intrinsics(fov_deg, width, height), int(width), int(height))


def orbit(n_frames: int, elevation_deg: float, radius: float, fov_deg: float,
          width: int, height: int) -> list[Camera]:
    """``n_frames`` cameras evenly spaced in azimuth (starting at 0°) at one elevation."""
    return [orbit_camera(360.0 * k / n_frames, elevation_deg, radius, fov_deg, width, height)
            for k in range(n_frames)]


def orbit_cameras(n_frames: int, res: int, elevation_deg: float = ELEVATION_DEG, radius: float = RADIUS,
                  fov_deg: float = FOV_DEG) -> list[Camera]:
    """``n_frames`` square ``res`` px views around the object (azimuth 0 first),
    framed as every picture of a scene is (``cfd.framing``) unless told otherwise."""
    if n_frames < 1 or res < 1:
        raise ValueError(f"need n_frames ≥ 1 and res ≥ 1, got {n_frames}, {res}")
    return orbit(n_frames, elevation_deg, radius, fov_deg, res, res)


def preview_camera(res: int, azimuth_deg: float = PREVIEW_AZIMUTH_DEG,
                   elevation_deg: float = ELEVATION_DEG) -> Camera:
    """The square ``res`` px preview view."""
    return orbit_camera(azimuth_deg, elevation_deg, RADIUS, FOV_DEG, res, res)


def psnr_cameras(res: int, n_views: int = PSNR_VIEWS) -> list[Camera]:
    """The views of the project's one PSNR measure at ``res`` × ``res`` px."""
    return orbit_cameras(n_views, res)


CAMERA_FEATURES = 4   # camera_features' columns


def camera_features(cameras: Sequence[Camera]) -> Tensor:
    """[B, 4] float32 per camera: elevation (radians), sin and cos of the azimuth
    (0 = front, on +z) and the distance to the origin in units of the default
    orbit radius. What a camera-conditioned model (tiny-sd's UNet,
    ``class_embed_type="projection"``) takes beside the timestep."""
    rows = []
    for cam in cameras:
        azimuth, elevation = math.radians(cam.azimuth_deg), math.radians(cam.elevation_deg)
        radius = float(cam.position.norm()) / RADIUS
        rows.append((elevation, math.sin(azimuth), math.cos(azimuth), radius))
    return torch.tensor(rows, dtype=torch.float32)


@dataclass(frozen=True)
class CameraRanges:
    """The training distribution of views (degrees and world units): uniform in
    the ranges, or, with ``pool`` > 0, uniform over a fixed pool of that many
    views drawn once from the ranges (seed 0) — a finite view set lets a
    guidance memoise per-view work (the exact prior's reference renders)."""

    azimuth: tuple[float, float] = (-180.0, 180.0)
    elevation: tuple[float, float] = (-10.0, 45.0)
    radius: tuple[float, float] = (RADIUS, RADIUS)
    fov: tuple[float, float] = (FOV_DEG, FOV_DEG)
    pool: int = 0

    @property
    def eval_radius(self) -> float:
        return sum(self.radius) / 2

    @property
    def eval_fov(self) -> float:
        return sum(self.fov) / 2


def sample_cameras(n: int, width: int, height: int, generator: torch.Generator,
                   ranges: CameraRanges = CameraRanges()) -> list[Camera]:
    """``n`` views drawn uniformly from ``ranges`` (elevation uniform in degrees),
    reproducibly from ``generator`` (a CPU torch.Generator). From a pool, the
    views are drawn without replacement (distinct while n ≤ pool: a joint
    multi-view posterior must not count one view twice)."""
    if ranges.pool > 0:
        index = torch.cat([torch.randperm(ranges.pool, generator=generator)
                           for _ in range(-(-n // ranges.pool))])[:n]
        return _cameras(_pool_u(ranges)[index], width, height, ranges, index.tolist())
    return _cameras(torch.rand(n, 4, generator=generator, dtype=torch.float64), width, height, ranges)


def pool_cameras(width: int, height: int, ranges: CameraRanges) -> list[Camera]:
    """Every view of ``ranges``' pool (``ranges.pool`` > 0), in pool order: what
    ``sample_cameras`` draws from (e.g. to render a guidance's references ahead)."""
    if ranges.pool < 1:
        raise ValueError("pool_cameras: the ranges have no pool (pool=0 samples continuously)")
    return _cameras(_pool_u(ranges), width, height, ranges, list(range(ranges.pool)))


def _pool_u(ranges: CameraRanges) -> Tensor:
    return torch.rand(ranges.pool, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _cameras(u: Tensor, width: int, height: int, ranges: CameraRanges,
             pool_index: list[int] | None = None) -> list[Camera]:
    """Cameras at the points ``u`` [n, 4] in [0, 1)⁴ of ``ranges`` (azimuth, elevation,
    radius, fov); ``pool_index``: their indices in ``ranges``' pool (their keys)."""
    def lerp(col: int, lo_hi: tuple[float, float]) -> list[float]:
        lo, hi = lo_hi
        return (lo + (hi - lo) * u[:, col]).tolist()

    cams = [orbit_camera(a, e, r, f, width, height)
            for a, e, r, f in zip(lerp(0, ranges.azimuth), lerp(1, ranges.elevation),
                                  lerp(2, ranges.radius), lerp(3, ranges.fov))]
    if pool_index is None:
        return cams
    return [Camera(c.viewmat, c.K, c.width, c.height, (ranges, i)) for c, i in zip(cams, pool_index)]
