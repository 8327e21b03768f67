"""Adaptive density control during distillation: where splats grow, which are pruned.

``Densifier`` is the strategy the loop calls once per step; it keeps gsplat's
``strategy.DefaultStrategy`` semantics (3DGS's adaptive density control):

- after each backward pass it accumulates, per splat, the norm of the loss
  gradient with respect to its projected centre in gsplat's normalised units
  (× width/2, height/2 and the number of views of the step) and how often the
  splat was visible (radius > 0);
- every ``every`` steps while ``step < until_step`` it grows the splats whose
  mean view-space gradient is large — larger than ``grad_ratio`` × the mean over
  the splats seen since the last round — cloning the small ones (largest scale
  ≤ ``split_scale`` × the scene extent: an exact copy whose Adam moments start at
  zero) and splitting the large ones (two samples of the splat's own Gaussian,
  scales / 1.6, fresh moments), at most up to ``max_splats`` (the largest
  gradients first); then it prunes splats with opacity < ``prune_opacity`` or
  largest scale > ``prune_scale`` × the scene extent;
- optionally, every ``reset_every`` steps in the same window, it clamps the
  opacities to 2 × ``prune_opacity`` and zeroes their Adam moments.

The scene extent is measured at each round: the radius around the splats'
median centre that holds 90 % of their centres. The Adam state moves with the
splats (``gaussians.remap_splats``).

Why not gsplat's own ``DefaultStrategy`` (pinned gsplat 1.5.3): (1) its growth
threshold is absolute (``grow_grad2d`` = 2e-4, tuned for a converging L1
photometric loss); a distillation gradient w(t)(ε̂ − ε̃) changes scale with t,
CFG, backend and resolution, and on the exact prior every splat exceeded 2e-4
by far — the whole scene doubled every round (the counts: docs/stable-diffusion.md,
"Densification, measured"). A threshold relative to the scene's own gradients
stays selective over the whole run. (2) It expects a dict of ``nn.Parameter`` named means / scales /
quats / opacities with one optimiser per parameter; ours is one Adam with named
groups over a ``GaussianScene`` (log_scales, opacity_logits, sh). (3) Its split
draws from the global RNG (``torch.randn``), which breaks "same seed, same
scene" and is shared by concurrent runs; ours draws from a per-round seeded
generator. (4) In 1.5.3 its periodic opacity reset never runs
(``step % reset_every == 0 & step > 0`` parses as ``… == (0 & step) > 0``; fixed
upstream after 1.5.3). ``MCMCStrategy`` does not fit either: it relocates dead
splats and needs opacity/scale regularisers in the loss.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussians import GaussianScene, grow_splats, prune_splats, reset_opacity
from .render import RenderOutput

EXTENT_QUANTILE = 0.9


def scene_extent(scene: GaussianScene) -> float:
    """The radius around the median centre holding ``EXTENT_QUANTILE`` of the
    splat centres (world units; ≥ 1e-6)."""
    with torch.no_grad():
        means = scene.means.detach().float()
        if len(means) == 0:
            return 1e-6
        centre = means.median(dim=0).values
        radius = torch.quantile((means - centre).norm(dim=-1), EXTENT_QUANTILE)
    return max(float(radius), 1e-6)


class NoDensify:
    """Densification off: the scene keeps its splats."""

    def observe(self, step: int, output: RenderOutput) -> None:
        pass

    def step(self, step: int, scene: GaussianScene, optimizer) -> GaussianScene:
        return scene


class Densifier:
    """gsplat DefaultStrategy semantics with a scene-relative growth threshold
    (see the module doc). Call ``observe(step, output)`` after each successful
    backward pass (the step's one render of all its views, its ``means2d``
    gradient filled in) and ``scene = step(step, scene, optimizer)`` after each
    optimiser step (0-based step index); ``history`` records each round (counts,
    the share of the accumulated gradient that the grown splats held, the extent)."""

    def __init__(self, *, every: int, until_step: float, grad_ratio: float, split_scale: float,
                 prune_opacity: float, prune_scale: float, max_splats: int, reset_every: int = 0,
                 seed: int = 0):
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        self.every, self.until_step, self.reset_every = every, until_step, reset_every
        self.grad_ratio, self.split_scale = grad_ratio, split_scale
        self.prune_opacity, self.prune_scale, self.max_splats = prune_opacity, prune_scale, max_splats
        self.seed = seed
        self.grad2d: Tensor | None = None   # Σ normalised view-space gradient norms since the last round
        self.count: Tensor | None = None    # views in which each splat was visible
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, config, seed: int) -> "Densifier | NoDensify":
        """The strategy of a ``DistillConfig`` (``NoDensify`` when densify_every = 0)."""
        if not config.densify_every:
            return NoDensify()
        return cls(every=config.densify_every, until_step=config.densify_until * config.steps,
                   grad_ratio=config.densify_grad_ratio, split_scale=config.split_scale,
                   prune_opacity=config.prune_opacity, prune_scale=config.prune_scale,
                   max_splats=config.max_splats, reset_every=config.opacity_reset_every, seed=seed)

    def observe(self, step: int, output: RenderOutput) -> None:
        """Accumulate step ``step``'s view-space gradients from ``output``, the
        step's render of C views (radii [C,N]; one camera's [N] counts as C = 1),
        view by view: per splat the gradient norm where it was visible (gsplat's
        normalisation: pixels × (width/2, height/2) × C) and the number of views
        that saw it; nothing once the last round is past."""
        if step >= self.until_step:
            return
        with torch.no_grad():
            n = output.radii.shape[-1]
            visible = output.radii.reshape(-1, n) > 0                         # [C,N]
            n_views = len(visible)
            h, w = output.alpha.shape[-2:]
            grads = output.means2d_grad_norm((w / 2 * n_views, h / 2 * n_views)).reshape(-1, n)
            if self.grad2d is None or len(self.grad2d) != n:
                self.grad2d = torch.zeros(n, device=visible.device)
                self.count = torch.zeros(n, device=visible.device)
            for seen, g in zip(visible, grads):   # in view order, as the per-view sums always were
                self.grad2d += torch.where(seen, g, torch.zeros_like(g))
                self.count += seen.float()

    def step(self, step: int, scene: GaussianScene, optimizer) -> GaussianScene:
        """After the optimiser step ``step`` (0-based): a densification round and/or
        an opacity reset when due; returns the (possibly new) scene."""
        if step >= self.until_step:
            return scene
        if (step + 1) % self.every == 0:
            scene = self._round(step, scene, optimizer)
        if self.reset_every and (step + 1) % self.reset_every == 0:
            reset_opacity(scene, optimizer, 2 * self.prune_opacity)
        return scene

    def growth_mask(self, scene: GaussianScene) -> Tensor:
        """[N] bool: the splats this round grows (scene-relative threshold, cap)."""
        n = len(scene)
        if self.grad2d is None or len(self.grad2d) != n:
            return torch.zeros(n, dtype=torch.bool, device=scene.device)
        seen = self.count > 0
        mean_grad = self.grad2d / self.count.clamp_min(1)
        reference = mean_grad[seen].mean() if bool(seen.any()) else mean_grad.new_zeros(())
        grow = seen & (mean_grad > self.grad_ratio * reference) & (mean_grad > 0)
        budget = max(0, self.max_splats - n)
        if int(grow.sum()) > budget:   # the hard cap: the largest gradients first
            order = torch.argsort(torch.where(grow, mean_grad, torch.full_like(mean_grad, -1.0)), descending=True)
            grow = torch.zeros_like(grow)
            grow[order[:budget]] = True
        return grow

    def _round(self, step: int, scene: GaussianScene, optimizer) -> GaussianScene:
        with torch.no_grad():
            n_before = len(scene)
            grow = self.growth_mask(scene)
            total = float(self.grad2d.sum()) if self.grad2d is not None else 0.0
            share = float(self.grad2d[grow].sum()) / total if total > 0 else 0.0
            extent = scene_extent(scene)
            large = scene.log_scales.max(dim=1).values > math.log(self.split_scale * extent)
            clone, split = grow & ~large, grow & large
            generator = torch.Generator().manual_seed((self.seed + step + 1) % (1 << 63))
            scene = grow_splats(scene, optimizer, clone, split, generator)
            too_big = scene.log_scales.max(dim=1).values > math.log(self.prune_scale * extent)
            prune = (scene.opacities < self.prune_opacity) | too_big
            scene = prune_splats(scene, optimizer, prune)
            self.grad2d = self.count = None
            self.history.append({"step": step + 1, "before": n_before, "cloned": int(clone.sum()),
                                 "split": int(split.sum()), "pruned": int(prune.sum()), "after": len(scene),
                                 "grad_share": round(share, 4), "extent": round(extent, 4)})
        return scene
