"""Measures of a result against the bundled ground truth: which variant an image
shows, and whether a distilled scene looks the same way as its variant from every
side (against Janus faces).

    nearest_views(images, references)        # best (variant, view, PSNR) per image
    view_agreement(scene, reference, res)    # share of orbit views facing the right way
    turned_psnr(scene, reference, res)       # the PSNR measure after the best turn about the vertical
    detail_ratio(scene, reference, res)      # fine-detail energy against the variant's (<1 blurred, >1 noisy)
    high_frequency_ratio(images, references) # the same for images
    facing(best_view, azimuths)              # per image: its best match faces its own way

PSNR is over images in [0, 1]. Views are orbit views (``cfd.framing``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import orbit_cameras
from .framing import PSNR_VIEWS
from .gaussians import GaussianScene
from .render import render

DETAIL_SIGMA_PX = 1.0            # high frequencies: what a Gaussian blur of this σ (pixels) removes
AGREEMENT_TOLERANCE_DEG = 45.0   # an orbit view agrees if its best-matching reference azimuth is this close
REFERENCE_AZIMUTHS = 24          # reference views for view_agreement (every 15°)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR (dB) over the trailing three axes of images in [0, 1] (broadcasting)."""
    mse = (a - b).square().mean(dim=(-3, -2, -1))
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def nearest_views(images: Tensor, references: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For images [B, 3, H, W] and references [K, V, 3, H, W] (K variants, V views,
    in [0, 1]): (variant [B], view [B], PSNR [B]) of each image's best match."""
    k, v = references.shape[:2]
    scores = torch.stack([psnr(image, references.flatten(0, 1)) for image in images])  # [B, K·V]
    best, index = scores.max(dim=1)
    return index // v, index % v, best


@torch.no_grad()
def view_agreement(scene: GaussianScene, reference: GaussianScene, res: int, n_views: int = PSNR_VIEWS,
                   tolerance_deg: float = AGREEMENT_TOLERANCE_DEG, background=(1.0, 1.0, 1.0)) -> float:
    """The share of ``n_views`` orbit views of ``scene`` (azimuths 0, 360/n, …)
    whose best-matching view of ``reference`` among ``REFERENCE_AZIMUTHS`` orbit
    views lies within ``tolerance_deg`` of the view's own azimuth. 1 for a scene
    that looks like its variant from every side; a Janus scene (the front on the
    back too) scores about half. Renders at res × res on ``background``."""
    ours, refs = _orbit_renders(scene, reference, res, n_views, background)
    _, best, _ = nearest_views(ours.permute(0, 3, 1, 2), refs.permute(0, 3, 1, 2)[None])
    return float(facing(best, torch.arange(n_views) * 360.0 / n_views, tolerance_deg).double().mean())


@torch.no_grad()
def turned_psnr(scene: GaussianScene, reference: GaussianScene, res: int, n_views: int = PSNR_VIEWS,
                background=(1.0, 1.0, 1.0)) -> tuple[float, float]:
    """(PSNR dB, turn°): the project's PSNR measure (``n_views`` orbit views at
    res × res, one MSE over all of them) of ``scene`` against ``reference`` seen
    turned by the best of ``REFERENCE_AZIMUTHS`` turns about the vertical axis
    (0°, 15°, …; turn 0 is the measure itself, the turn is the reference's azimuth
    minus the view's, in [0, 360)). Its gain over turn 0 is the part of a
    result's distance to its variant that orientation accounts for; the rest is
    how it looks.
    ``n_views`` must divide ``REFERENCE_AZIMUTHS``."""
    views = _reference_views_at_orbit_azimuths(n_views)
    ours, refs = _orbit_renders(scene, reference, res, n_views, background)
    mse = torch.stack([(ours - refs[(views + j) % REFERENCE_AZIMUTHS]).square().mean()
                       for j in range(REFERENCE_AZIMUTHS)])
    best = int(mse.argmin())
    return float(-10 * torch.log10(mse[best].clamp_min(1e-10))), best * 360.0 / REFERENCE_AZIMUTHS


@torch.no_grad()
def detail_ratio(scene: GaussianScene, reference: GaussianScene, res: int, n_views: int = PSNR_VIEWS,
                 background=(1.0, 1.0, 1.0)) -> float:
    """``high_frequency_ratio`` of ``scene``'s ``n_views`` orbit views (res × res)
    against ``reference``'s from the same azimuths, over all views at once: 1 for
    the variant itself, below 1 for a result blurrier than its variant, above 1
    for one noisier (speckled with detail the variant lacks). ``n_views`` must
    divide ``REFERENCE_AZIMUTHS``."""
    views = _reference_views_at_orbit_azimuths(n_views)
    ours, refs = _orbit_renders(scene, reference, res, n_views, background)
    same_azimuths = refs[views]
    return float(high_frequency_ratio(ours.permute(0, 3, 1, 2).flatten(0, 1)[None],
                                      same_azimuths.permute(0, 3, 1, 2).flatten(0, 1)[None])[0])


def high_frequency_ratio(images: Tensor, references: Tensor, sigma_px: float = DETAIL_SIGMA_PX) -> Tensor:
    """[B]: the energy of each image's high frequencies (the image minus its Gaussian
    blur of σ = ``sigma_px`` pixels, edges replicated) over its reference's, for
    images and references [B, C, H, W]: 1 for as much fine detail as the
    reference, below 1 for blur, above 1 for noise (speckle)."""
    def detail_energy(x: Tensor) -> Tensor:
        return (x - gaussian_blur(x, sigma_px)).square().mean(dim=(-3, -2, -1))

    return detail_energy(images) / detail_energy(references).clamp_min(1e-12)


def gaussian_blur(images: Tensor, sigma_px: float) -> Tensor:
    """[B, C, H, W] blurred by a separable Gaussian of σ = ``sigma_px`` pixels
    (radius 3σ, edges replicated)."""
    radius = max(1, round(3 * sigma_px))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-x.square() / (2 * sigma_px ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius,) * 4, mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _reference_views_at_orbit_azimuths(n_views: int) -> Tensor:
    """[n_views]: the indices of the ``REFERENCE_AZIMUTHS`` orbit views at the
    azimuths of ``n_views`` orbit views (ValueError unless ``n_views`` divides it)."""
    if REFERENCE_AZIMUTHS % n_views:
        raise ValueError(f"n_views={n_views} must divide {REFERENCE_AZIMUTHS}")
    return torch.arange(n_views) * (REFERENCE_AZIMUTHS // n_views)


def _orbit_renders(scene: GaussianScene, reference: GaussianScene, res: int, n_views: int,
                   background) -> tuple[Tensor, Tensor]:
    """([n_views, res, res, 3] of ``scene``, [REFERENCE_AZIMUTHS, res, res, 3] of
    ``reference``): their orbit views (azimuth 0 first) on ``background``."""
    ours = render(scene.detach(), orbit_cameras(n_views, res), background).rgb
    refs = render(reference.to(scene.device), orbit_cameras(REFERENCE_AZIMUTHS, res), background).rgb
    return ours, refs


def facing(best_view: Tensor, azimuths_deg: Tensor, tolerance_deg: float = AGREEMENT_TOLERANCE_DEG) -> Tensor:
    """[B] bool: whether each image's best-matching reference view ``best_view`` [B]
    (an index into ``REFERENCE_AZIMUTHS`` orbit views, azimuth 0 first) lies within
    ``tolerance_deg`` of the image's own azimuth ``azimuths_deg`` [B] (degrees)."""
    found = best_view.cpu().double() * 360.0 / REFERENCE_AZIMUTHS
    error = (found - torch.as_tensor(azimuths_deg, dtype=torch.float64) + 180.0) % 360.0 - 180.0
    return error.abs() <= tolerance_deg
