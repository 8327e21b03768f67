"""cfd — Consistent Flow Distillation on 3D Gaussian splats.

Public API (docs/design.md, section 1): cameras, splat scenes and PLY I/O, the renderer,
the consistent noise and the distillation loop. The guidance backends live in
``cfd.guidance`` (imported on demand: diffusers is heavy); exports in
``cfd.export``, one whole generation in ``cfd.pipeline``.
"""
from .cameras import Camera, CameraRanges, orbit, orbit_camera, sample_cameras
from .distill import DistillConfig, distill
from .gaussians import GaussianScene, init_scene, load_ply, make_scene, save_ply
from .noise import consistent_noise
from .render import RenderOutput, render

__all__ = [
    "Camera", "CameraRanges", "orbit", "orbit_camera", "sample_cameras",
    "GaussianScene", "init_scene", "load_ply", "make_scene", "save_ply",
    "RenderOutput", "render", "consistent_noise", "DistillConfig", "distill",
]
__version__ = "0.1.0"
