"""How every picture of a scene is framed: one place for the camera constants.

The object lives in the unit ball at the origin (+y up). Training views, orbit
videos, previews, the PSNR measure and the viewer file all frame it from here:

- ``RADIUS``, ``FOV_DEG``: camera distance and vertical field of view of the
  training views (``cameras.CameraRanges``' defaults), the orbit videos, the
  preview and the PSNR views.
- ``ELEVATION_DEG``: elevation of the orbit videos, the preview and the PSNR views.
- ``PREVIEW_AZIMUTH_DEG``: the preview's azimuth (a front-ish three-quarter view).
- ``PSNR_VIEWS``: the one PSNR measure of the project (app, compare, CLI
  ``run.json``, ``bench toy``): ``PSNR_VIEWS`` orbit views at the run's render
  resolution (the sharpness a run could reach at the size it was trained for;
  every report says the resolution next to the number).
- ``VIEWER_SCALE``: gradio's Model3D splat viewer has a fixed camera, so the
  viewer PLY is written at this scale (the full-size scene is ``scene.ply``).
- ``BACKGROUND``: white, as the renders the app shows.

Constants only (no imports): the cameras built from them are in ``cameras``
(``orbit_cameras``, ``preview_camera``, ``psnr_cameras``).
"""
from __future__ import annotations

RADIUS = 2.5
FOV_DEG = 49.0
ELEVATION_DEG = 15.0
PREVIEW_AZIMUTH_DEG = 30.0
PSNR_VIEWS = 8
VIEWER_SCALE = 0.5
BACKGROUND = (1.0, 1.0, 1.0)

__all__ = ["RADIUS", "FOV_DEG", "ELEVATION_DEG", "PREVIEW_AZIMUTH_DEG", "PSNR_VIEWS", "VIEWER_SCALE",
           "BACKGROUND"]
