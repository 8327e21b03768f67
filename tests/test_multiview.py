"""Joint-view self-attention (cfd/guidance/multiview.py) on a small random
Stable Diffusion UNet: the plain UNet at one view, views of a group see each
other and nothing else, a batch of partial groups refused."""
from __future__ import annotations

import pytest
import torch

from cfd.guidance.multiview import use_joint_views
from random_sd import random_sd_components, TINY_TEXT_DIM


@pytest.fixture(scope="module")
def unets():
    """(plain UNet, the same weights with joint-view attention)."""
    plain = random_sd_components(seed=1)["unet"].eval()
    joint = random_sd_components(seed=1)["unet"].eval()
    use_joint_views(joint)
    return plain, joint


def inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.full((batch,), 500),
            torch.randn(batch, 7, TINY_TEXT_DIM, generator=g))


@torch.no_grad()
def test_one_view_per_group_is_the_plain_unet_bit_for_bit(unets):
    plain, joint = unets
    x, t, text = inputs(4)
    want = plain(x, t, text).sample
    assert torch.equal(joint(x, t, text).sample, want)
    assert torch.equal(joint(x, t, text, cross_attention_kwargs={"num_views": 1}).sample, want)


@torch.no_grad()
def test_the_views_of_a_group_see_each_other_and_nothing_else(unets):
    _, joint = unets
    x, t, text = inputs(8)
    views = {"num_views": 4}   # groups: items 0-3 and 4-7
    before = joint(x, t, text, cross_attention_kwargs=views).sample
    x[1] += torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(9))   # one view of the first group
    after = joint(x, t, text, cross_attention_kwargs=views).sample
    for other in (0, 2, 3):
        assert (after[other] - before[other]).abs().max() > 1e-6   # its group's other views changed
    assert torch.equal(after[4:], before[4:])                      # the other group did not
    alone = joint(x[4:], t[4:], text[4:], cross_attention_kwargs=views).sample
    assert (alone - after[4:]).abs().max() < 1e-5                  # a group is the same without the others


@torch.no_grad()
def test_a_batch_of_partial_groups_is_refused(unets):
    _, joint = unets
    x, t, text = inputs(6)
    with pytest.raises(ValueError, match="a batch of 6 is not groups of num_views=4 views"):
        joint(x, t, text, cross_attention_kwargs={"num_views": 4})
