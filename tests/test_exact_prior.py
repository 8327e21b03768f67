import pytest
import torch

from cfd.cameras import orbit_camera, sample_cameras
from cfd.guidance.base import Guidance
from cfd.guidance.exact_prior import DEFAULT_EXACT_GUIDANCE_SCALE, ExactPrior
from cfd.render import render
from cfd.schedule import NoiseSchedule
from cfd.scenes import FIRST_SET, load_scene_set

RES = 24


@pytest.fixture(scope="module")
def prior() -> ExactPrior:
    return ExactPrior.from_scene_set(FIRST_SET, originals=True, supersample=1)  # single-view posterior


def cameras(n: int, seed: int = 0, res: int = RES):
    return sample_cameras(n, res, res, torch.Generator().manual_seed(seed))


def plain_reference(prior, k, cam):
    """X_k(c) [3,H,W] in [-1,1], written out directly."""
    return 2 * render(prior.scenes[k], cam, prior.background).rgb.permute(2, 0, 1) - 1


def plain_posterior(prior, x, t, cam):
    """(ε* [3,H,W], w [K] float64) for one view x [3,H,W], one scene at a time."""
    a, s = prior.alphas_cumprod[t].sqrt(), (1 - prior.alphas_cumprod[t]).sqrt()
    refs = [plain_reference(prior, k, cam).double() for k in range(len(prior.scenes))]
    w = torch.softmax(torch.stack([-((x.double() - a * r) ** 2).sum() / (2 * s ** 2) for r in refs]), dim=0)
    x0 = sum(w_k * r for w_k, r in zip(w, refs))
    return ((x.double() - a * x0) / s).float(), w


def noisy(prior, images, t, eps):
    a, s = prior.alphas_cumprod[t].sqrt().float(), (1 - prior.alphas_cumprod[t]).sqrt().float()
    return a * images + s * eps


def test_it_is_a_pixel_space_guidance_on_sd_schedule(prior):
    assert isinstance(prior, Guidance)
    assert (prior.channels, prior.latent_factor, len(prior.scenes)) == (3, 1, len(prior.names))
    assert prior.device == torch.device("cpu")
    assert prior.names == load_scene_set(FIRST_SET, originals=True)[0].names
    assert torch.equal(prior.alphas_cumprod, NoiseSchedule.stable_diffusion().alphas_cumprod)
    rgb = torch.rand(2, 3, 8, 8, requires_grad=True)
    x = prior.encode(rgb)
    assert x.min() >= -1 and x.max() <= 1 and x.requires_grad
    torch.testing.assert_close(prior.decode(x), rgb.detach())


@pytest.mark.parametrize("t", [1, 5])
def test_small_t_recovers_the_noise_and_the_scene(prior, t):
    cams = cameras(len(prior.scenes), seed=t)
    clean = torch.stack([plain_reference(prior, j, cam) for j, cam in enumerate(cams)])  # view j shows scene j
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(t))
    x_t = noisy(prior, clean, t, eps)
    eps_hat = prior.predict_noise(x_t, t, cams)
    assert (eps_hat - eps).abs().max() < 1e-4
    a, s = prior.alphas_cumprod[t].sqrt().float(), (1 - prior.alphas_cumprod[t]).sqrt().float()
    assert ((x_t - s * eps_hat) / a - clean).abs().max() < 1e-5
    w = prior.posterior_weights(x_t, t, cams)
    torch.testing.assert_close(w, torch.eye(len(prior.scenes)), atol=1e-6, rtol=0)


def test_large_t_is_the_mixture_mean_with_spread_weights(prior):
    t, cams = 999, cameras(2, seed=1)
    x_t = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    w = prior.posterior_weights(x_t, t, cams)
    expected = torch.stack([plain_posterior(prior, x, t, cam)[1] for x, cam in zip(x_t, cams)]).float()
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-5)
    assert w.min() > 0.02 and w.max() < 0.9  # no scene dominates this early
    mean = torch.einsum("bk,bkchw->bchw", w, prior.reference_images(cams, RES, RES))
    a, s = prior.alphas_cumprod[t].sqrt().float(), (1 - prior.alphas_cumprod[t]).sqrt().float()
    torch.testing.assert_close(prior.predict_noise(x_t, t, cams), (x_t - a * mean) / s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [20, 900])  # a sharp and a mixed posterior
def test_batched_matches_a_plain_per_view_per_scene_evaluation(prior, t):
    cams = cameras(3, seed=7)
    x_t = noisy(prior, prior.reference_images(cams, RES, RES)[:, 0], t,
                torch.randn(3, 3, RES, RES, generator=torch.Generator().manual_seed(1)))
    plain = torch.stack([plain_posterior(prior, x, t, cam)[0] for x, cam in zip(x_t, cams)])
    assert (prior.predict_noise(x_t, t, cams) - plain).abs().max() < 1e-5


def test_cameras_at_another_resolution_are_rescaled_to_x_t(prior):
    cams = cameras(2, seed=3, res=2 * RES)
    refs = prior.reference_images(cams, RES, RES)
    assert refs.shape == (2, len(prior.scenes), 3, RES, RES)
    torch.testing.assert_close(refs[1, 2], plain_reference(prior, 2, cams[1].scaled(0.5)))
    x_t = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.predict_noise(x_t, 300, cams),
                               prior.predict_noise(x_t, 300, [c.scaled(0.5) for c in cams]))
    with pytest.raises(ValueError, match="aspect"):
        prior.reference_images([orbit_camera(0, 0, 2.5, 49, 32, 16)], RES, RES)


@pytest.mark.parametrize("t", [0, 1])
def test_finite_when_x_t_is_far_from_every_scene(prior, t):
    cams = cameras(2)
    x_t = torch.stack([torch.full((3, RES, RES), 50.0), -30 * torch.randn(3, RES, RES)])
    eps = prior.predict_noise(x_t, t, cams)
    w = prior.posterior_weights(x_t, t, cams)
    assert torch.isfinite(eps).all() and torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2))


def test_bad_inputs_are_refused(prior):
    x_t = torch.zeros(2, 3, RES, RES)
    with pytest.raises(ValueError, match="2 cameras|1 cameras"):
        prior.predict_noise(x_t, 10, cameras(1))
    with pytest.raises(ValueError, match="timestep"):
        prior.predict_noise(x_t, 1000, cameras(2))
    with pytest.raises(ValueError, match="unknown scene set"):
        ExactPrior.from_scene_set("nope")


def test_supersampled_prior_box_filters_renders_and_references():
    coarse = ExactPrior.from_scene_set(FIRST_SET, originals=True, supersample=2)
    assert coarse.latent_factor == 2
    cam = cameras(1, res=2 * RES)[0]
    fine = torch.stack([render(s, cam, coarse.background).rgb.permute(2, 0, 1) for s in coarse.scenes])
    expected = 2 * torch.nn.functional.avg_pool2d(fine, 2) - 1
    torch.testing.assert_close(coarse.reference_images([cam], RES, RES)[0], expected)
    rgb = torch.rand(1, 3, 2 * RES, 2 * RES)
    assert coarse.encode(rgb).shape == (1, 3, RES, RES) and coarse.decode(coarse.encode(rgb)).shape == rgb.shape


def test_scene_psnr_finds_the_scene_itself(prior):
    psnr = prior.scene_psnr(prior.scenes[1], res=24)
    assert len(psnr) == len(prior.scenes)
    assert psnr[1] >= 99 and max(p for k, p in enumerate(psnr) if k != 1) < 25


# ----------------------------------------------------------------- text, CFG, multi-view

def test_multiview_weights_are_the_product_of_likelihoods_posterior(prior):
    """One object for all views: p(k | x¹…x^B) ∝ Π_v N(x^v; α X_k(c_v), σ²), brute force."""
    joint = ExactPrior(prior.scenes, names=prior.names, supersample=1, multiview=True)
    t, cams = 960, cameras(3, seed=11)
    clean = torch.stack([plain_reference(prior, 1, cam) for cam in cams])  # three views of scene 1
    x_t = noisy(prior, clean, t, torch.randn(clean.shape, generator=torch.Generator().manual_seed(3)))
    a, s = prior.alphas_cumprod[t].sqrt(), (1 - prior.alphas_cumprod[t]).sqrt()
    log_lik = torch.tensor([sum(float(-((x.double() - a * plain_reference(prior, k, cam).double()) ** 2).sum())
                                / (2 * s ** 2) for x, cam in zip(x_t, cams)) for k in range(len(prior.scenes))],
                           dtype=torch.float64)
    expected = torch.softmax(log_lik, dim=0).float()
    w = joint.posterior_weights(x_t, t, cams)
    torch.testing.assert_close(w, expected.expand(3, -1), atol=1e-6, rtol=1e-5)
    single = prior.posterior_weights(x_t, t, cams)
    assert not torch.allclose(single, w, atol=1e-3)  # per view, the views disagree more
    # the denoiser uses the shared weights in every view
    refs = prior.reference_images(cams, RES, RES)
    x0 = torch.einsum("k,bkchw->bchw", expected, refs)
    torch.testing.assert_close(joint.predict_noise(x_t, t, cams), (x_t - a.float() * x0) / s.float(),
                               atol=1e-5, rtol=1e-5)


def brute_force_denoiser(prior, x_t, t, cams, prior_weights, multiview):
    """ε* of the mixture with ``prior_weights`` [K], view by view and object by object."""
    a, s = prior.alphas_cumprod[t].sqrt(), (1 - prior.alphas_cumprod[t]).sqrt()
    refs = [[plain_reference(prior, k, cam).double() for k in range(len(prior.scenes))] for cam in cams]
    log_lik = torch.tensor([[float(-((x.double() - a * r) ** 2).sum() / (2 * s ** 2)) for r in rs]
                            for x, rs in zip(x_t, refs)], dtype=torch.float64)     # [B,K]
    if multiview:
        log_lik = log_lik.sum(0, keepdim=True).expand_as(log_lik)
    w = torch.softmax(log_lik + torch.as_tensor(prior_weights, dtype=torch.float64).log(), dim=1)
    x0 = torch.stack([sum(w[b, k] * refs[b][k] for k in range(len(prior.scenes))) for b in range(len(cams))])
    return ((x_t.double() - a * x0) / s).float()


@pytest.mark.parametrize("multiview", [False, True])
def test_cfg_is_the_exact_conditional_and_unconditional_denoisers(prior, multiview):
    """ε̂ = ε_u + s(ε_c − ε_u): ε_c the exact denoiser of the prior uniform over the
    prompt's objects, ε_u that of the prior uniform over all objects, or with
    NEGATIVE_EMPHASIS of its mass on the negative prompt's objects (brute force)."""
    from cfd.guidance.exact_prior import NEGATIVE_EMPHASIS

    full = ExactPrior(prior.scenes, vocabulary=prior.vocabulary, supersample=1, multiview=multiview)
    t, cams = 600, cameras(2, seed=5)
    x_t = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(9))
    cond = full.condition("a rubber duck", "a snowman and a mushroom", 7.5)
    idx = {n: k for k, n in enumerate(prior.names)}
    duck, snowman, mushroom = idx["rubber duck"], idx["snowman"], idx["mushroom"]
    assert cond.positive == (duck,) and cond.negative == (snowman, mushroom)
    K = len(prior.scenes)
    only_duck = [float(k == duck) for k in range(K)]
    negative = [(1 - NEGATIVE_EMPHASIS) / K + (NEGATIVE_EMPHASIS / 2 if k in (snowman, mushroom) else 0)
                for k in range(K)]
    eps_c = brute_force_denoiser(prior, x_t, t, cams, only_duck, multiview)
    eps_u = brute_force_denoiser(prior, x_t, t, cams, negative, multiview)
    torch.testing.assert_close(full.predict_noise(x_t, t, cams, cond), eps_u + 7.5 * (eps_c - eps_u),
                               atol=2e-4, rtol=1e-4)
    # s = 1 is the plain conditional; no negative prompt: ε_u is the uniform mixture
    torch.testing.assert_close(full.predict_noise(x_t, t, cams, full.condition("a rubber duck", "", 1.0)), eps_c,
                               atol=1e-5, rtol=1e-5)
    eps_all = brute_force_denoiser(prior, x_t, t, cams, [1 / K] * K, multiview)
    torch.testing.assert_close(full.predict_noise(x_t, t, cams), eps_all, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.predict_noise(x_t, t, cams, full.condition("a rubber duck", "", 3.0)),
                               eps_all + 3.0 * (eps_c - eps_all), atol=2e-4, rtol=1e-4)


def test_cfg_against_a_negative_prompt_stays_finite_where_the_object_is_another():
    """The unconditional prior keeps every object possible, so ε_u stays bounded
    when x is clearly another object than the negative prompt's (at t → 0)."""
    prior = ExactPrior.from_scene_set(FIRST_SET, originals=True, supersample=1, multiview=True)
    idx = {n: k for k, n in enumerate(prior.names)}
    cams = cameras(2, seed=4)
    snowman = torch.stack([plain_reference(prior, idx["snowman"], c) for c in cams])
    cond = prior.condition("a toy", "a rubber duck", 3.0)
    eps = prior.predict_noise(noisy(prior, snowman, 2, torch.zeros_like(snowman)), 2, cams, cond)
    assert eps.abs().max() < 1e-2   # the clean snowman: no noise to predict, no push away from the duck


def test_prompts_select_objects_and_themes():
    prior = ExactPrior.bundled(originals=True)
    idx = {n: k for k, n in enumerate(prior.names)}
    toys = tuple(idx[n] for n in ("snowman", "mushroom", "rubber duck", "rocket"))
    plants = tuple(idx[n] for n in ("cactus", "potted tree", "sunflower", "tulips"))
    cases = {
        "a rubber duck": (idx["rubber duck"],), "A Bath Duck!": (idx["rubber duck"],),
        "two snowmen and a toy rocket": (idx["snowman"], idx["rocket"]),
        "a toy": toys, "a toy on a table": toys, "a plant in a pot": plants, "potted plants": plants,
        "some tulips": (idx["tulips"],), "": toys + plants,
    }
    for text, expected in cases.items():
        assert prior.condition(text).positive == expected, text
    assert prior.condition("a duck", "blurry, low quality").negative == ()   # names nothing: uniform π_u
    assert prior.condition("a duck").guidance_scale == DEFAULT_EXACT_GUIDANCE_SCALE


def test_unknown_prompt_is_refused_with_what_the_prior_knows():
    prior = ExactPrior.bundled()
    with pytest.raises(ValueError) as info:
        prior.condition("a corgi wearing a beret")
    message = str(info.value)
    assert "'a corgi wearing a beret'" in message and "Stable Diffusion" in message
    for name in [f.name for f in prior.vocabulary.families] + ["a toy", "a potted plant"]:
        assert name in message
    with pytest.raises(ValueError, match="guidance_scale must be ≥ 1"):
        prior.condition("a duck", guidance_scale=0.5)


def test_vocabulary_matches_whole_words_and_plurals():
    from cfd.vocabulary import Group, Vocabulary, words

    assert words("Two DUCKS, three boxes & a glass") == ("two", "duck", "three", "box", "a", "glass")
    v = Vocabulary(("cat", "rocket ship"), ("a cat", "a rocket ship"), (("kitten",), ("rocket",)),
                   (Group("a pet", ("pet",), (0,)),))
    assert v.select("a kitten") == (0,) and v.select("rockets") == (1,) and v.select("a pet") == (0,)
    assert v.select("a category") == () and v.select("a catapult") == ()   # whole words only
    with pytest.raises(ValueError, match="theme"):
        Vocabulary(("cat",), ("a cat",), ((),), (Group("x", (), (3,)),))


def test_a_family_prompt_is_a_mixture_of_its_variants_and_a_variant_prompt_selects_it_alone():
    from cfd.vocabulary import Group, Vocabulary

    v = Vocabulary(("tabby", "black cat", "red rocket"), ("a tabby cat", "a black cat", "a red rocket"),
                   (("tabby",), ("black cat",), ()),
                   (Group("a thing", ("thing",), (0, 1, 2)),),
                   (Group("cat", ("a cat", "kitty"), (0, 1)), Group("rocket", (), (2,))))
    assert v.select("a cat") == (0, 1) and v.select("two kitty cats") == (0, 1)      # the family: every variant
    assert v.select("a black cat") == (1,) and v.select("a tabby") == (0,)        # a variant's own words
    assert v.select("a black cat and a rocket") == (1, 2)                         # a variant and a family
    assert v.select("a thing") == (0, 1, 2) and v.select("a dog") == ()
    assert (v.family(0), v.family(2)) == ("cat", "rocket")
    assert "cat, rocket (or the theme 'a thing')" in v.describe()
    with pytest.raises(ValueError, match="more than one family"):
        Vocabulary(("a",), ("a",), ((),), (), (Group("f", (), (0,)), Group("g", (), (0,))))


def test_the_summary_names_the_nearest_variant_and_its_family():
    from cfd.pipeline import nearest_reference

    prior = ExactPrior.bundled(["toys"])
    k = prior.names.index("pink duck")
    near = nearest_reference(prior.scenes[k], prior, 32)
    assert (near["nearest"], near["nearest_family"]) == ("pink duck", "rubber duck")
    assert near["nearest_psnr"] >= 99 and sorted(near["psnr"], key=near["psnr"].get)[-2] != "pink duck"


def test_at_cfg_1_only_the_prompts_variants_are_rendered_and_weighed():
    """CFG 1 weighs the conditional set alone (every other weight is exactly 0): the
    references of the other objects are never rendered, and ε̂ equals the full
    posterior's."""
    prior = ExactPrior.bundled(["toys"], multiview=True)
    cond = prior.condition("a rocket")
    assert cond.support(len(prior.scenes)) == cond.positive and len(cond.positive) >= 6
    cams = cameras(3, seed=2, res=2 * RES)
    x_t = torch.randn(3, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    eps = prior.predict_noise(x_t, 400, cams, cond)
    rendered = {k for (_, _, _, k) in prior._cache}
    assert rendered == set(cond.positive)
    assert prior.cache_size() == len(cond.positive) * 3 * 3 * RES * RES * 4   # their images alone
    full = prior.condition("a rocket", guidance_scale=1.0 + 1e-9)       # CFG ≠ 1 weighs every object
    assert full.support(len(prior.scenes)) == tuple(range(len(prior.scenes)))
    torch.testing.assert_close(prior.predict_noise(x_t, 400, cams, full), eps, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- the reference cache

def fresh(prior, cache_bytes=None, multiview=False) -> ExactPrior:
    """A prior over the fixture's scenes with an empty reference cache."""
    p = ExactPrior(prior.scenes, vocabulary=prior.vocabulary, supersample=1, multiview=multiview)
    if cache_bytes is not None:
        p.cache_bytes = cache_bytes
    return p


@pytest.fixture
def renders(prior, monkeypatch):
    """Every render the prior makes of the fixture's scenes: (object, views) per call."""
    import cfd.guidance.exact_prior as module

    calls, index = [], {id(s): k for k, s in enumerate(prior.scenes)}

    def counted(scene, cams, background):
        calls.append((index.get(id(scene)), len(cams)))
        return render(scene, cams, background)

    monkeypatch.setattr(module, "render", counted)
    return calls


def image_bytes(res: int) -> int:
    return 3 * res * res * 4


def test_the_cache_holds_only_the_objects_rendered(prior):
    """Conditioning on a subset caches that subset's images alone, once per view."""
    p = fresh(prior)
    cond = p.condition("a rubber duck and a rocket")
    assert len(cond.positive) == 2 < len(p.scenes)
    cams = cameras(3, seed=21)
    x_t = torch.randn(3, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    p.predict_noise(x_t, 500, cams, cond)
    assert p.cache_size() == 3 * len(cond.positive) * image_bytes(RES)
    assert {(view, k) for view, _, _, k in p._cache} == {(p._view_key(c), k) for c in cams for k in cond.positive}
    p.predict_noise(x_t, 400, cams, cond)               # the same views: nothing new
    assert p.cache_size() == 3 * len(cond.positive) * image_bytes(RES)


def test_a_full_cache_evicts_the_least_recently_used_to_admit_a_new_resolution(prior, renders):
    from collections import Counter

    calls, objects, cams = renders, (0, 2), cameras(2, seed=22)
    per_res = {r: len(cams) * len(objects) * image_bytes(r) for r in (8, 12, 16, 20)}
    p = fresh(prior, cache_bytes=per_res[8] + per_res[16] + per_res[20])   # room for three resolutions
    first = {r: p.reference_images(cams, r, r, objects) for r in (8, 12, 16)}
    assert p.cache_size() == per_res[8] + per_res[12] + per_res[16]
    p.reference_images(cams, 8, 8, objects)             # 8 is now more recent than 12
    calls.clear()
    p.reference_images(cams, 20, 20, objects)           # a fourth resolution is cached…
    assert calls == [(0, 2), (2, 2)]                    # (one batched render per object)
    sizes = {w for _, w, _, _ in p._cache}
    assert sizes == {8, 16, 20}                          # …by evicting the least recently used, 12
    assert p.cache_size() == per_res[8] + per_res[16] + per_res[20] <= p.cache_bytes
    calls.clear()
    assert torch.equal(p.reference_images(cams, 20, 20, objects), p.reference_images(cams, 20, 20, objects))
    assert calls == []                                   # held: no render
    again = p.reference_images(cams, 12, 12, objects)   # evicted: rendered again, the same values
    assert calls == [(0, 2), (2, 2)] and torch.equal(again, first[12])
    # 16 was the least recently used: three of its four images made the room
    assert Counter(w for _, w, _, _ in p._cache) == {8: 4, 12: 4, 16: 1, 20: 4}
    assert p.cache_size() == sum(image.nbytes for image in p._cache.values()) <= p.cache_bytes


def test_an_entry_larger_than_the_cap_is_returned_not_cached(prior):
    p = fresh(prior, cache_bytes=image_bytes(RES) - 1)
    refs = p.reference_images(cameras(2, seed=23), RES, RES, (1,))
    assert refs.shape == (2, 1, 3, RES, RES) and p.cache_size() == 0 and not p._cache
    assert torch.equal(refs, fresh(prior).reference_images(cameras(2, seed=23), RES, RES, (1,)))


def test_psnr_references_count_against_the_same_cap(prior):
    from cfd.framing import PSNR_VIEWS
    from cfd.guidance.exact_prior import _PSNR_VIEWS

    res, K = 16, len(prior.scenes)
    psnr_bytes = K * PSNR_VIEWS * image_bytes(res)
    p = fresh(prior)
    expected = p.scene_psnr(prior.scenes[1], res)
    assert p.cache_size() == psnr_bytes
    assert p.scene_psnr(prior.scenes[1], res) == expected   # from the cache
    # a cap with room for the PSNR renders and one training image: training views evict them
    p = fresh(prior, cache_bytes=psnr_bytes + image_bytes(RES))
    p.scene_psnr(prior.scenes[1], res)
    p.reference_images(cameras(1, seed=24), RES, RES, (0,))
    assert p.cache_size() == psnr_bytes + image_bytes(RES)
    p.reference_images(cameras(1, seed=25), RES, RES, (0,))   # one more: the oldest PSNR render goes
    assert p.cache_size() == (K - 1) * PSNR_VIEWS * image_bytes(res) + 2 * image_bytes(RES)
    assert [key[3] for key in p._cache if key[0] is _PSNR_VIEWS] == list(range(1, K))
    assert p.scene_psnr(prior.scenes[1], res) == expected    # re-rendered, the same values


@pytest.mark.parametrize("multiview", [False, True])
def test_outputs_do_not_depend_on_the_cache(prior, multiview):
    """Bit for bit the same ε̂, weights, references and PSNR with no cache, a small
    one that evicts on every call, and a large one."""
    outputs = []
    for cap in (0, 2 * 3 * image_bytes(RES), 2**30):
        p = fresh(prior, cache_bytes=cap, multiview=multiview)
        out = []
        for step, (cond, seed) in enumerate([(p.condition("a toy", "a snowman", 3.0), 31),
                                             (p.condition("a rocket"), 32), (p.condition("a toy", "a snowman", 3.0), 31)]):
            cams = cameras(2, seed=seed)
            x_t = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(step))
            out += [p.predict_noise(x_t, 300 + step, cams, cond), p.posterior_weights(x_t, 300 + step, cams, cond)]
        out += [p.reference_images(cameras(2, seed=31), RES, RES), torch.tensor(p.scene_psnr(prior.scenes[2], 16))]
        assert p.cache_size() <= cap
        outputs.append(out)
    assert outputs[0][0].shape == (2, 3, RES, RES)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))
