"""The exact denoiser of a finite set of reference splat scenes (pixel space),
with text conditioning, classifier-free guidance and a multi-view posterior.

Data distribution, per camera c: "our render of one of K reference objects from
c", X_k(c) in [-1, 1] over the prior's background. Under x_t = α_t x_0 + σ_t ε
and prior weights π over the objects, the exact (posterior-mean) ε-prediction is

    ε*_π(x_t, t, c) = (x_t − α_t Σ_k w_k X_k(c)) / σ_t,
    w = softmax_k(log π_k + ℓ_k),   ℓ_k = −‖x_t − α_t X_k(c)‖² / (2 σ_t²),

with the log-likelihoods summed and the softmax taken (log-sum-exp) in float64,
so the weights stay exact and finite at the smallest σ_t; images stay float32.
At CFG 1 every object outside the conditional set has weight exactly 0, so only
that set's references are rendered and weighed (``ExactCondition.support``): a
run's cost grows with what its prompt names, not with the size of the prior.

Text and CFG, as SD uses them: the prompt selects the conditional set (the
variants it names, every variant of the families it names, or a theme's
variants, ``cfd.vocabulary``): π_c is uniform over it, so a family prompt is a
mixture with one mode per variant. The unconditional prior π_u is uniform over
every object; a negative prompt moves ``NEGATIVE_EMPHASIS`` (90 %) of its mass
onto the objects it names, as SD's negative text makes its images likely
without making others impossible. Then
ε̂ = ε*_{π_u} + s (ε*_{π_c} − ε*_{π_u}). (Restricting π_u to the named objects —
the literal "their mixture" — makes CFG diverge: once x is another object, that
prior cannot explain it and ε*_u grows without bound as σ_t → 0; the runs it
spoiled: docs/toy-results.md, "Text and CFG on the exact prior".)

Multi-view (``multiview=True``): the B views of one call are views of *one*
object, so ℓ_k = Σ_views ℓ_k(view) and every view shares the same posterior
weights — the exact analogue of a multi-view diffusion model (MVDream) that
denoises its views jointly. No weights needed: it makes distillation's claims
(mode-seeking sharpness, seed diversity, prompt following) measurable on a CPU.
"""
from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from cfd.cameras import Camera, psnr_cameras
from cfd.framing import PSNR_VIEWS
from cfd.gaussians import GaussianScene, load_ply
from cfd.guidance.base import checked_guidance_scale, clean_text
from cfd.render import render
from cfd.scenes import find_scene_sets, vocabulary
from cfd.schedule import NoiseSchedule
from cfd.vocabulary import Vocabulary

# CFG scale s (ε_u + s(ε_c − ε_u)) used when a run gives none: 1 is the exact conditional
DEFAULT_EXACT_GUIDANCE_SCALE = 1.0
# share of the unconditional prior's mass on the objects a negative prompt names
NEGATIVE_EMPHASIS = 0.9
# the view part of the reference cache's keys for the PSNR views (unlike any Camera.key)
_PSNR_VIEWS = object()


@dataclass(frozen=True)
class ExactCondition:
    """A run's conditioning on the exact prior: the objects the prompt selects
    (the conditional prior is uniform over them) and those the negative prompt
    names (() = none)."""

    prompt: str
    negative_prompt: str
    guidance_scale: float
    positive: tuple[int, ...]
    negative: tuple[int, ...]

    def support(self, n_objects: int) -> tuple[int, ...]:
        """The objects whose references this condition's ε̂ can weigh: the
        conditional set alone at CFG 1 (ε̂ = ε*_c; every other weight is exactly
        0), every object otherwise (ε*_u weighs them all)."""
        return self.positive if self.guidance_scale == 1 else tuple(range(n_objects))

    def log_priors(self, n_objects: int, device="cpu") -> tuple[Tensor, Tensor]:
        """log prior weights [K] float64 on ``device`` of the conditional and the
        unconditional denoiser: uniform over ``positive`` (−inf elsewhere); uniform
        over every object, or — with a negative prompt — ``NEGATIVE_EMPHASIS`` of
        the mass spread over ``negative`` and the rest over every object. Built
        once per condition and device (read-only tensors)."""
        return _log_priors(self.positive, self.negative, n_objects, torch.device(device))


@functools.lru_cache(maxsize=64)
def _log_priors(positive: tuple[int, ...], negative: tuple[int, ...], n_objects: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    cond = torch.full((n_objects,), float("-inf"), dtype=torch.float64)
    cond[list(positive)] = -math.log(len(positive))
    uncond = torch.full((n_objects,), (1 - NEGATIVE_EMPHASIS if negative else 1.0) / n_objects, dtype=torch.float64)
    if negative:
        uncond[list(negative)] += NEGATIVE_EMPHASIS / len(negative)
    return cond.to(device), uncond.log().to(device)


class ExactPrior:
    """Guidance (see ``cfd.guidance.base``) in [-1, 1] pixel space, C = 3, on
    Stable Diffusion's noise schedule.

    ``supersample`` = f: images are renders at f× the diffusion resolution,
    box-filtered down by f (``encode``; the references the same way). f = 2
    antialiases and, like SD's 8× VAE, hands the loop a render that already
    supersamples the noise, so no extra render is needed for it."""

    channels = 3

    def __init__(self, scenes: list[GaussianScene], background=(1.0, 1.0, 1.0), name: str = "Exact prior",
                 names: list[str] | None = None, supersample: int = 2, multiview: bool = False,
                 vocabulary: Vocabulary | None = None):
        if supersample < 1:
            raise ValueError(f"ExactPrior: supersample must be ≥ 1, got {supersample}")
        self.latent_factor = int(supersample)
        if not scenes:
            raise ValueError("ExactPrior needs at least one reference scene")
        if vocabulary is None:
            vocabulary = Vocabulary.from_names(list(names) if names is not None
                                               else [f"scene {k}" for k in range(len(scenes))])
        if len(vocabulary) != len(scenes):
            raise ValueError(f"ExactPrior: {len(vocabulary)} names for {len(scenes)} scenes")
        self.scenes = list(scenes)
        self.vocabulary = vocabulary
        self.names = list(vocabulary.names)
        self.multiview = bool(multiview)
        self.background = tuple(float(v) for v in background)
        self.name = name
        self.schedule = NoiseSchedule.stable_diffusion()
        self.alphas_cumprod = self.schedule.alphas_cumprod
        # memoised reference renders (training and PSNR views), least recently used
        # evicted beyond this many bytes; see reference_images and scene_psnr
        self.cache_bytes = 512 * 2**20
        self._cache: OrderedDict[Hashable, Tensor] = OrderedDict()   # one image per object and view
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()   # a server's warm-up thread shares the prior with runs

    @classmethod
    def bundled(cls, set_ids: list[str] | None = None, originals: bool = False, **kwargs) -> "ExactPrior":
        """The prior over every variant of the bundled sets ``set_ids`` (None: all of
        them, the app's and CLI's default), with their families, aliases and
        themes; ``originals``: over each family's first variant only
        (``SceneSet.originals``)."""
        sets = find_scene_sets(set_ids, originals=originals)
        scenes = [load_ply(p) for s in sets for p in s.paths]
        kwargs.setdefault("name", "Exact prior: " + ", ".join(s.name for s in sets))
        return cls(scenes, vocabulary=vocabulary(sets), **kwargs)

    @classmethod
    def from_scene_set(cls, set_id: str, **kwargs) -> "ExactPrior":
        """The prior over one bundled set (``cfd.scenes``), named after it."""
        return cls.bundled([set_id], **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the reference scenes live and render."""
        return self.scenes[0].device

    def to(self, device) -> "ExactPrior":
        """Move the reference scenes (renders then run on ``device``); returns self."""
        self.scenes = [s.to(device) for s in self.scenes]
        with self._cache_lock:
            self._cache.clear()
            self._cached_bytes = 0
        return self

    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] → x [B,3,H/f,W/f] in [-1,1] (f×f box filter; differentiable)."""
        f = self.latent_factor
        return 2 * (torch.nn.functional.avg_pool2d(rgb, f) if f > 1 else rgb) - 1

    def decode(self, x: Tensor) -> Tensor:
        """x [B,3,h,w] → rgb [B,3,h·f,w·f] in [0,1] (nearest upsampling)."""
        rgb = ((x.detach() + 1) / 2).clamp(0, 1)
        f = self.latent_factor
        return torch.nn.functional.interpolate(rgb, scale_factor=f, mode="nearest") if f > 1 else rgb

    @torch.no_grad()
    def reference_images(self, cameras: list[Camera], width: int, height: int,
                         objects: tuple[int, ...] | None = None) -> Tensor:
        """X_k(c) [B,K',3,height,width] float32 in [-1,1]: the scenes ``objects`` (None:
        all K) from every camera, rendered at f× width × height and box-filtered (the
        camera's aspect ratio must match).

        Renders are kept per view (``Camera.key``, else the camera's matrices),
        size and object — only those rendered — in one cache with the PSNR
        references, least recently used evicted beyond ``cache_bytes``: a training
        distribution over a finite pool of views (``CameraRanges.pool``) renders
        each reference view of each object it needs once while the cache holds
        it, and only the objects a run's condition can weigh
        (``ExactCondition.support``). Missing renders are made one object at a
        time for all the views that lack it (one batched render call)."""
        objects = tuple(range(len(self.scenes))) if objects is None else tuple(objects)
        f = self.latent_factor
        cams = [self._scaled(cam, f * width, f * height) for cam in cameras]
        if not objects:
            return torch.zeros(len(cams), 0, 3, height, width, device=self.device)
        keys = [self._view_key(cam) for cam in cams]
        images: dict[tuple[int, int], Tensor] = {}     # (view i, object k) → [3,h,w], this call's
        missing: dict[int, list[int]] = {}
        for i, view in enumerate(keys):
            for k in objects:
                image = self._cache_get((view, width, height, k))
                if image is None:
                    missing.setdefault(k, []).append(i)
                else:
                    images[i, k] = image
        for k, rows in missing.items():
            rgb = render(self.scenes[k], [cams[i] for i in rows], self.background).rgb
            for i, image in zip(rows, self.encode(rgb.permute(0, 3, 1, 2))):
                images[i, k] = image = _own(image)
                self._cache_put((keys[i], width, height, k), image)
        return torch.stack([images[i, k] for i in range(len(cams)) for k in objects]).unflatten(
            0, (len(cams), len(objects)))

    @staticmethod
    def _scaled(cam: Camera, width: int, height: int) -> Camera:
        if (cam.width, cam.height) == (width, height):
            return cam
        scaled = cam.scaled(width / cam.width)
        if scaled.height != height:
            raise ValueError(f"ExactPrior: camera aspect {cam.width}x{cam.height} does not match "
                             f"the image size {width}x{height}")
        return scaled

    @staticmethod
    def _view_key(cam: Camera) -> Hashable:
        """What names a view in the cache: its ``key``, else its matrices."""
        return cam.key if cam.key is not None else (cam.viewmat.cpu().numpy().tobytes(),
                                                   cam.K.cpu().numpy().tobytes())

    def _cache_get(self, key: Hashable) -> Tensor | None:
        """The cached render under ``key`` (now the most recently used), or None."""
        with self._cache_lock:
            image = self._cache.get(key)
            if image is not None:
                self._cache.move_to_end(key)
            return image

    def _cache_put(self, key: Hashable, image: Tensor) -> None:
        """Cache ``image``, evicting the least recently used renders until it fits
        in ``cache_bytes``; one larger than the whole cap is not cached."""
        size = image.nbytes
        with self._cache_lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
            if size > self.cache_bytes:
                return
            while self._cached_bytes + size > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
            self._cache[key] = image
            self._cached_bytes += size

    @torch.no_grad()
    def scene_psnr(self, scene: GaussianScene, res: int, n_views: int = PSNR_VIEWS) -> list[float]:
        """PSNR (dB, images in [0, 1]) of ``scene`` against each reference scene,
        both rendered alike over the prior's background from the views of the
        project's one PSNR measure (``cfd.cameras.psnr_cameras``: ``n_views`` orbit
        views at res × res). Sharpness and mode of a distilled scene; the
        references' renders [V,H,W,3] are memoised per (res, n_views) and object
        in the reference cache (``reference_images``), under the same cap."""
        cams = psnr_cameras(res, n_views)
        refs = []
        for k, ref in enumerate(self.scenes):
            key = (_PSNR_VIEWS, res, n_views, k)
            rgb = self._cache_get(key)
            if rgb is None:
                rgb = _own(render(ref, cams, self.background).rgb)
                self._cache_put(key, rgb)
            refs.append(rgb)
        refs = torch.stack(refs)                                                   # [K,V,H,W,3]
        ours = render(scene.detach().to(self.device), cams, self.background).rgb
        mse = (ours[None] - refs).square().mean(dim=(1, 2, 3, 4))
        return [float(v) for v in -10 * torch.log10(mse.clamp_min(1e-10))]

    def cache_size(self) -> int:
        """Bytes held by the reference renders (training views and PSNR views)."""
        return self._cached_bytes

    # -- text and CFG

    def condition(self, prompt: str = "", negative_prompt: str | None = None,
                  guidance_scale: float | None = None) -> ExactCondition:
        """Resolve a run's prompts to object sets (``cfd.vocabulary``). An empty
        prompt is unconditional (every object); a prompt that names nothing this
        prior knows is refused (ValueError listing what it knows). A negative
        prompt that names no object leaves the unconditional prior uniform."""
        prompt, negative_prompt = clean_text(prompt), clean_text(negative_prompt)
        scale = checked_guidance_scale(guidance_scale, DEFAULT_EXACT_GUIDANCE_SCALE)
        everything = tuple(range(len(self.scenes)))
        positive = self.vocabulary.select(prompt) if prompt else everything
        if not positive:
            v = self.vocabulary
            example = v.families[0].name if v.families else v.names[0]
            raise ValueError(f"The embedded exact prior does not know {prompt!r}. It knows only these objects: "
                             f"{v.describe()}. Name one of them (e.g. 'a {example}'); free text needs "
                             "Stable Diffusion (backend 'sd', with its weights).")
        return ExactCondition(prompt, negative_prompt, scale, positive, self.vocabulary.select(negative_prompt))

    # -- the posterior

    def _check(self, x_t: Tensor, cameras: list[Camera]) -> None:
        if x_t.dim() != 4 or x_t.shape[1] != 3:
            raise ValueError(f"ExactPrior: x_t must be [B,3,H,W], got {tuple(x_t.shape)}")
        if len(cameras) != x_t.shape[0]:
            raise ValueError(f"ExactPrior: {len(cameras)} cameras for a batch of {x_t.shape[0]}")

    def _log_likelihoods(self, x: Tensor, refs: Tensor, alpha: float, sigma: float) -> Tensor:
        """ℓ [B,K] float64 from x [B,3,H,W] and refs [B,K,3,H,W] float32: squared
        distances summed in float64 (they are divided by 2σ² ≈ 0.03 at the smallest t,
        so the sums keep every digit); with ``multiview`` each row is the sum over
        the B views (one object for all views)."""
        distance = (x[:, None] - alpha * refs).square_().flatten(2).sum(dim=2, dtype=torch.float64)
        logits = -distance / (2 * sigma ** 2)
        return logits.sum(dim=0, keepdim=True).expand_as(logits) if self.multiview else logits

    @staticmethod
    def _weights(logits: Tensor, log_prior: Tensor) -> Tensor:
        """Posterior weights [B,K]: softmax of ``logits`` [B,K] + ``log_prior`` [K]."""
        return (logits + log_prior).softmax(dim=1)

    def _posterior(self, x_t: Tensor, t: int, cameras: list[Camera], objects: tuple[int, ...]
                   ) -> tuple[Tensor, Tensor, Tensor, float, float]:
        """(x_t, refs of ``objects`` float32 on x_t's device, ℓ over them float64), α_t, σ_t."""
        self._check(x_t, cameras)
        alpha, sigma = float(self.schedule.alpha(int(t))), float(self.schedule.sigma(int(t)))
        x = x_t.detach().float()
        refs = self.reference_images(cameras, x_t.shape[3], x_t.shape[2], objects).to(x.device)
        return x, refs, self._log_likelihoods(x, refs, alpha, sigma), alpha, sigma

    @torch.no_grad()
    def posterior_weights(self, x_t: Tensor, t: int, cameras: list[Camera],
                          cond: ExactCondition | None = None) -> Tensor:
        """p(object k | x_t, c, prompt) [B,K] float32 (``cond``: None = unconditional)."""
        cond = cond or self.condition()
        logits = self._posterior(x_t, t, cameras, tuple(range(len(self.scenes))))[2]
        return self._weights(logits, cond.log_priors(len(self.scenes), logits.device)[0]).float()

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: int, cameras: list[Camera],
                      cond: ExactCondition | None = None) -> Tensor:
        """ε̂ = ε*_u + s(ε*_c − ε*_u) [B,3,H,W] float32 on x_t's device; x_t [B,3,H,W],
        one camera per item; ``cond`` from ``condition`` (None = unconditional).
        Only the condition's support (``ExactCondition.support``) is weighed."""
        cond = cond or self.condition()
        objects = cond.support(len(self.scenes))
        x, refs, logits, alpha, sigma = self._posterior(x_t, t, cameras, objects)
        index = torch.tensor(objects, device=x.device)
        log_prior_c, log_prior_u = (p.index_select(0, index) for p in cond.log_priors(len(self.scenes), x.device))

        def mean(log_prior):  # posterior-mean clean image [B,3,H,W] under one prior over the objects
            weights = self._weights(logits, log_prior).float()
            return torch.bmm(weights[:, None], refs.flatten(2)).reshape(x.shape)

        x0 = mean(log_prior_c)
        if cond.guidance_scale != 1:
            x0_u = mean(log_prior_u)
            x0 = x0_u + cond.guidance_scale * (x0 - x0_u)
        return (x - alpha * x0) / sigma


def _own(image: Tensor) -> Tensor:
    """``image`` in storage of its own (contiguous, no larger than it), so that the
    cache's byte count is what it holds; a copy where it is a view of a batch."""
    if image.is_contiguous() and image.untyped_storage().nbytes() == image.nbytes:
        return image
    return image.clone(memory_format=torch.contiguous_format)
