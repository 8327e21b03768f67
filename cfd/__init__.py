"""cfd — Consistent Flow Distillation on 3D Gaussian splats.

Public API (see DESIGN.md §3): cameras, splat scenes and PLY I/O, the renderer.
The guidance backends live in ``cfd.guidance`` (imported on demand: diffusers is
heavy).
"""
from .cameras import Camera, CameraRanges, orbit, orbit_camera, sample_cameras
from .gaussians import GaussianScene, init_scene, load_ply, make_scene, save_ply
from .render import RenderOutput, render

__all__ = [
    "Camera", "CameraRanges", "orbit", "orbit_camera", "sample_cameras",
    "GaussianScene", "init_scene", "load_ply", "make_scene", "save_ply",
    "RenderOutput", "render",
]
__version__ = "0.1.0"
