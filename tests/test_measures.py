"""cfd.measures: best-matching reference views, and view agreement against Janus faces."""
from __future__ import annotations

import torch

from cfd.measures import nearest_views, view_agreement
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
