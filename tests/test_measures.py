"""cfd.measures: best-matching reference views, and view agreement against Janus faces."""
from __future__ import annotations

import math

import torch

from cfd.measures import REFERENCE_AZIMUTHS, facing, nearest_views, turned_psnr, view_agreement
from cfd.scenes import load_scene_set


def duck():
    scene_set, scenes = load_scene_set("toys")
    return scenes[scene_set.names.index("yellow duck")]


def janus(scene):
    """The front half (z > 0; the front faces +z) mirrored onto the back: a face on both sides."""
    front = scene.select(torch.nonzero(scene.means[:, 2] > 0).squeeze(1)).with_sh_degree(0)
    mirrored = front.clone()
    mirrored.means[:, 2] = -mirrored.means[:, 2]
    mirrored.quats[:, 1:3] = -mirrored.quats[:, 1:3]   # the rotation R ↦ M R M for the mirror M = diag(1, 1, −1)
    return type(scene).cat([front, mirrored])


def turned(scene, degrees):
    """``scene`` turned by ``degrees`` about the vertical (+y) axis: its means, and its rotations
    composed with the turn's quaternion (w, x, y, z)."""
    a = math.radians(degrees)
    turn = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    w1, y1 = math.cos(a / 2), math.sin(a / 2)
    w2, x2, y2, z2 = scene.quats.unbind(1)
    out = scene.clone()
    out.means = scene.means @ turn.T
    out.quats = torch.stack([w1 * w2 - y1 * y2, w1 * x2 + y1 * z2, w1 * y2 + y1 * w2, w1 * z2 - y1 * x2], 1)
    return out


def test_nearest_views_finds_the_variant_and_view_an_image_shows():
    g = torch.Generator().manual_seed(0)
    references = torch.rand(3, 5, 3, 8, 8, generator=g)
    images = references[[2, 0], [4, 1]] + 0.01 * torch.randn(2, 3, 8, 8, generator=g)
    variant, view, psnr = nearest_views(images, references)
    assert variant.tolist() == [2, 0] and view.tolist() == [4, 1] and (psnr > 35).all()


def test_view_agreement_is_one_for_the_object_itself_and_low_for_a_janus_copy():
    scene = duck()
    assert view_agreement(scene, scene, 64) == 1.0
    assert view_agreement(janus(scene), scene, 64) <= 0.75


def test_turned_psnr_finds_the_turn_of_a_turned_copy_and_is_the_psnr_measure_at_none():
    from cfd.guidance.exact_prior import ExactPrior

    scene = duck()
    assert turned_psnr(scene, scene, 64) == (100.0, 0.0)           # identical renders: the clamp's 100 dB
    quarter = turned(scene, 90)
    db, turn = turned_psnr(quarter, scene, 64)
    assert db > 40 and turn == 270.0                               # seen from 90° further round
    prior = ExactPrior.bundled(["toys"])
    measured = prior.scene_psnr(quarter, 64)[prior.names.index("yellow duck")]
    assert measured < 25                                           # unturned, the measure sees another object
    shifted = scene.clone()
    shifted.means = scene.means + torch.tensor([0.05, 0.0, 0.0])
    assert math.isclose(turned_psnr(shifted, scene, 64)[0], prior.scene_psnr(shifted, 64)[prior.names.index(
        "yellow duck")], abs_tol=1e-4)                             # best at turn 0: the PSNR measure itself


def test_facing_compares_the_best_reference_azimuth_with_the_image_own_across_360():
    step = 360 / REFERENCE_AZIMUTHS
    best = torch.tensor([0, 3, REFERENCE_AZIMUTHS - 1, REFERENCE_AZIMUTHS // 2])
    own = torch.tensor([40.0, 3 * step + 45.0, 30.0, 0.0])      # 345° vs 30°: 45° apart across 0
    assert facing(best, own).tolist() == [True, True, True, False]
    assert facing(best, own, tolerance_deg=10).tolist() == [False, False, False, False]


def test_the_asymmetric_families_of_the_benchmarks_are_bundled_families():
    from cfd.bench import ASYMMETRIC_FAMILIES
    from cfd.scenes import list_scene_sets

    names = {f.name for s in list_scene_sets() for f in s.families}
    assert set(ASYMMETRIC_FAMILIES) <= names, names


def test_high_frequency_ratio_is_one_for_the_reference_above_for_noise_below_for_blur():
    from cfd.measures import gaussian_blur, high_frequency_ratio

    reference = render_duck_views()
    speckled = (reference + 0.05 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ratios = high_frequency_ratio(torch.cat([reference, speckled, gaussian_blur(reference, 1.0)]),
                                  reference.repeat(3, 1, 1, 1)).view(3, len(reference))
    itself, noisy, blurred = ratios
    assert torch.allclose(itself, torch.ones_like(itself)) and (noisy > 1.5).all() and (blurred < 0.5).all()
    flat = torch.full_like(reference, 0.5)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)          # a flat image is its own blur


def test_detail_ratio_is_one_for_the_variant_above_with_noisy_colours_below_with_larger_splats():
    from cfd.measures import detail_ratio

    scene = duck()
    assert detail_ratio(scene, scene, 64) == 1.0
    noisy, blurred = scene.clone(), scene.clone()
    noisy.sh = noisy.sh + 2.0 * torch.randn(noisy.sh.shape, generator=torch.Generator().manual_seed(0))
    blurred.log_scales = blurred.log_scales + math.log(2)
    assert detail_ratio(noisy, scene, 64) > 1.3            # 1.60 measured
    assert detail_ratio(blurred, scene, 64) < 0.7          # 0.47 measured


def render_duck_views():
    """[4, 3, 64, 64]: four orbit views of the yellow duck on white."""
    from cfd.cameras import orbit_cameras
    from cfd.render import render

    return render(duck(), orbit_cameras(4, 64)).rgb.permute(0, 3, 1, 2)
