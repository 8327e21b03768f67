"""Joint-view self-attention for a diffusers ``UNet2DConditionModel``, as MVDream
makes Stable Diffusion multi-view: the self-attention (``attn1``) of each
transformer block spans the F views of one object — tokens [(b f), l, c] are
attended as [b, (f l), c] — while cross-attention (``attn2``), the
feed-forward and the convolutions stay per view. No new parameters: the same
weights attend over more tokens.

    use_joint_views(unet)                                   # every attention processor replaced
    unet(x, t, text, cross_attention_kwargs={"num_views": 4})   # x [(b·4), 4, h, w]: groups of 4 views

Groups are consecutive blocks of ``num_views`` items of the batch (the order
``StableDiffusionGuidance.predict_noise`` builds: [unconditional; conditional;
text-only] × B views, so B views form one group per branch). ``num_views`` 1
(or absent) is the plain UNet, bit for bit.
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

__all__ = ["JointViewAttnProcessor", "use_joint_views"]


class JointViewAttnProcessor:
    """Self-attention over the ``num_views`` views of each group (the batch's
    consecutive blocks); cross-attention per view. Accepts ``num_views`` through
    ``cross_attention_kwargs`` in every attention of the UNet."""

    def __init__(self):
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_views: int = 1) -> torch.Tensor:
        """hidden_states [(b f), l, c] → [(b f), l, c]; ValueError if f = ``num_views``
        does not divide the batch."""
        if num_views == 1 or encoder_hidden_states is not None or attn.is_cross_attention:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.dim() != 3:
            raise ValueError(f"joint-view attention takes [batch, tokens, channels] tokens, got "
                             f"{tuple(hidden_states.shape)}")
        batch, tokens, channels = hidden_states.shape
        if num_views < 1 or batch % num_views:
            raise ValueError(f"a batch of {batch} is not groups of num_views={num_views} views: give a batch of "
                             f"whole groups (a multiple of {num_views}) or num_views=1")
        if attention_mask is not None:
            raise ValueError("joint-view attention takes no attention mask")
        joint = hidden_states.reshape(batch // num_views, num_views * tokens, channels)
        return self.plain(attn, joint, None, None, temb).reshape(batch, tokens, channels)


def use_joint_views(unet) -> None:
    """Give every attention of ``unet`` a ``JointViewAttnProcessor`` (self-attention
    joint over ``cross_attention_kwargs["num_views"]`` views, cross-attention as
    before)."""
    unet.set_attn_processor(JointViewAttnProcessor())
