"""StableDiffusionGuidance on a tiny random SD folder, loaded offline through from_pretrained."""
import shutil
import time

import pytest
import torch

from cfd.cameras import orbit_camera
from cfd.guidance import (DEFAULT_SD_MODEL, Guidance, GuidanceUnavailable, StableDiffusionGuidance,
                          check_sd_weights)
from cfd.guidance.stable_diffusion import resolve_model, sd21_configs, view_suffix
from cfd.schedule import scaled_linear_alphas_cumprod

PROMPT, NEGATIVE = "a hamburger", "blurry, oversmoothed"


def cam(azimuth, elevation=15.0):
    return orbit_camera(azimuth, elevation, 2.5, 49.0, 64, 64)


@pytest.fixture(scope="module")
def guidance(random_sd_model):
    return StableDiffusionGuidance.from_pretrained(random_sd_model, device="cpu")


@pytest.fixture(scope="module")
def cond(guidance):
    return guidance.condition(PROMPT, NEGATIVE, 7.5)


def manual_prediction(g, x_t, t, texts):
    """UNet output for each text separately (no CFG), independent of the guidance's cache."""
    outs = []
    for i, text in enumerate(texts):
        ids = g.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
        with torch.no_grad():
            emb = g.text_encoder(ids).last_hidden_state
            outs.append(g.unet(x_t[i:i + 1], torch.tensor([t]), encoder_hidden_states=emb).sample)
    return torch.cat(outs)


def hub_offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("CFD_MODEL", raising=False)


# ----------------------------------------------------------------- loading

def test_loads_tiny_folder(guidance, random_sd_model):
    assert isinstance(guidance, Guidance)
    assert guidance.channels == 4 and guidance.latent_factor == 8
    assert str(random_sd_model) in guidance.name
    torch.testing.assert_close(guidance.alphas_cumprod, scaled_linear_alphas_cumprod())
    assert guidance.alphas_cumprod.dtype == torch.float64
    assert guidance.dtype == torch.float32 and guidance.device.type == "cpu"
    for module in (guidance.unet, guidance.vae, guidance.text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert check_sd_weights(random_sd_model) is None


def test_env_model_and_precedence(monkeypatch, random_sd_model):
    monkeypatch.delenv("CFD_MODEL", raising=False)
    assert resolve_model() == DEFAULT_SD_MODEL
    monkeypatch.setenv("CFD_MODEL", str(random_sd_model))
    assert resolve_model() == str(random_sd_model) and check_sd_weights() is None
    assert resolve_model("other/model") == "other/model"


def test_uncached_hub_model_offline_fails_fast(monkeypatch, tmp_path):
    hub_offline_env(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(GuidanceUnavailable) as info:
        StableDiffusionGuidance.from_pretrained()
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert DEFAULT_SD_MODEL in message and str(tmp_path / "hf" / "hub") in message
    assert f"`.venv/bin/hf download {DEFAULT_SD_MODEL}`" in message and "CFD_MODEL" in message
    assert check_sd_weights() == message


def test_hub_cache_snapshot_loads_offline(monkeypatch, tmp_path, random_sd_model):
    hub_offline_env(monkeypatch, tmp_path)
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-sd"
    shutil.copytree(random_sd_model, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert check_sd_weights("someone/tiny-sd") is None
    g = StableDiffusionGuidance.from_pretrained("someone/tiny-sd", device="cpu")
    assert g.name == "Stable Diffusion (someone/tiny-sd)"


def test_local_folder_missing_unet(tmp_path, random_sd_model):
    folder = tmp_path / "broken"
    shutil.copytree(random_sd_model, folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(GuidanceUnavailable) as info:
        StableDiffusionGuidance.from_pretrained(folder)
    message = str(info.value)
    assert "unet/" in message and str(folder) in message and "CFD_MODEL" in message
    assert check_sd_weights(folder) == message
    missing = check_sd_weights(tmp_path / "nowhere")
    assert missing is not None and "does not exist" in missing
    # a local folder of any model: the fix does not download SD-2.1 into it
    assert f"--local-dir {tmp_path / 'nowhere'}" not in missing and "--local-dir DIR` then CFD_MODEL=DIR" in missing


def test_unsupported_prediction_type(guidance):
    with pytest.raises(GuidanceUnavailable, match="sample"):
        StableDiffusionGuidance.from_components(
            guidance.unet, guidance.vae, guidance.text_encoder, guidance.tokenizer,
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "prediction_type": "sample"}, device="cpu")


# ----------------------------------------------------------------- encode / decode

def test_encode_decode_and_gradient(guidance):
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    latents = guidance.encode(rgb)
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    latents.square().sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    image = guidance.decode(latents)
    assert image.shape == (2, 3, 64, 64) and 0 <= image.min() and image.max() <= 1


# ----------------------------------------------------------------- noise prediction

def test_predict_noise_cfg_matches_separate_unet_calls(guidance, cond):
    torch.manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, requires_grad=True)
    cameras = [cam(0), cam(180)]
    eps = guidance.predict_noise(x_t, 500, cameras, cond)
    assert eps.shape == x_t.shape and eps.dtype == torch.float32 and not eps.requires_grad
    eps_u = manual_prediction(guidance, x_t, 500, [NEGATIVE] * 2)
    eps_c = manual_prediction(guidance, x_t, 500, [PROMPT + ", front view", PROMPT + ", back view"])
    torch.testing.assert_close(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4, rtol=1e-4)
    assert (eps - eps_c).abs().max() > 1e-3  # guidance does something


def test_conditions_travel_with_each_call(guidance):
    """Two runs' conditions interleaved on one model give what each gives alone."""
    a, b = guidance.condition("a teapot", "", 3.0), guidance.condition("a cat", NEGATIVE, 12.0)
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    alone = [guidance.predict_noise(x_t, t, [cam(30)], c) for c, t in ((a, 400), (b, 700))]
    interleaved = [guidance.predict_noise(x_t, 400, [cam(30)], a), guidance.predict_noise(x_t, 700, [cam(30)], b)]
    for x, y in zip(alone, interleaved):
        torch.testing.assert_close(x, y)
    assert (alone[0] - guidance.predict_noise(x_t, 400, [cam(30)], b)).abs().max() > 1e-3


def test_condition_defaults_and_refusals(guidance):
    from cfd.guidance import DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT

    c = guidance.condition("  a   cat ")
    assert (c.prompt, c.negative_prompt, c.guidance_scale) == ("a cat", DEFAULT_NEGATIVE_PROMPT,
                                                               DEFAULT_GUIDANCE_SCALE)
    with pytest.raises(ValueError, match="prompt is empty"):
        guidance.condition("  ")
    with pytest.raises(ValueError, match="guidance_scale must be ≥ 1"):
        guidance.condition("a cat", guidance_scale=0.5)


def test_predict_noise_checks_inputs(guidance, cond):
    x_t = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError):
        guidance.predict_noise(x_t, 500, [cam(0)], cond)
    with pytest.raises(ValueError):
        guidance.predict_noise(x_t, 1000, [cam(0), cam(1)], cond)


def test_v_prediction_converted_to_epsilon(random_sd_model_v):
    g = StableDiffusionGuidance.from_pretrained(random_sd_model_v, view_dependent=False, device="cpu")
    assert g.prediction_type == "v_prediction"
    x_t, t = torch.randn(1, 4, 8, 8), 700
    v_u = manual_prediction(g, x_t, t, [NEGATIVE])
    v_c = manual_prediction(g, x_t, t, [PROMPT])
    abar = scaled_linear_alphas_cumprod()[t].item()
    expected = abar ** 0.5 * (v_u + 3.0 * (v_c - v_u)) + (1 - abar) ** 0.5 * x_t
    torch.testing.assert_close(g.predict_noise(x_t, t, [cam(40)], g.condition(PROMPT, NEGATIVE, 3.0)), expected,
                               atol=1e-4, rtol=1e-4)


def test_text_embeddings_cached(random_sd_model):
    guidance = StableDiffusionGuidance.from_pretrained(random_sd_model, device="cpu")
    cond = guidance.condition(PROMPT, NEGATIVE)
    calls = []
    forward = guidance.text_encoder.forward
    guidance.text_encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    views = [cam(az, el) for az in range(-180, 180, 45) for el in (10, 75)]
    for step in range(0, len(views), 4):
        guidance.predict_noise(torch.randn(4, 4, 8, 8), 900 - 20 * step, views[step:step + 4], cond)
        guidance.predict_noise(torch.randn(1, 4, 8, 8), 300, views[step:step + 1], cond)
    texts = {NEGATIVE} | {guidance.prompt_for(cond, c) for c in views}
    assert len(texts) == 5 and len(calls) == len(texts)
    guidance.predict_noise(torch.randn(1, 4, 8, 8), 300, [cam(0)], guidance.condition("a teapot", NEGATIVE))
    assert len(calls) == len(texts) + 1  # only the new prompt's text is encoded



def test_text_embedding_cache_is_bounded_least_recently_used_first(random_sd_model, monkeypatch):
    import cfd.guidance.stable_diffusion as sd

    monkeypatch.setattr(sd, "TEXT_CACHE_SIZE", 3)
    guidance = StableDiffusionGuidance.from_pretrained(random_sd_model, device="cpu")
    for text in ("a", "b", "c", "a", "d"):   # "a" used again, so "b" is the oldest when "d" arrives
        guidance.text_embedding(text)
    assert list(guidance._embeddings) == ["c", "a", "d"]


def test_a_slow_model_load_does_not_block_another_model(monkeypatch):
    """One lock per model: while one model builds, a cached other one is served."""
    import threading

    from cfd import backends

    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)
        return "slow model"

    loader = threading.Thread(target=backends._cached, args=(("test-slow",), slow))
    loader.start()
    assert started.wait(5)
    t0 = time.perf_counter()
    assert backends._cached(("test-fast",), lambda: "fast model") == "fast model"
    assert time.perf_counter() - t0 < 1.0
    release.set()
    loader.join(5)
    assert backends._cached(("test-slow",), lambda: "built twice") == "slow model"


# ----------------------------------------------------------------- view-dependent prompts

@pytest.mark.parametrize("azimuth, elevation, suffix", [   # the authors' thresholds: 30°, 30°, 60°
    (0, 0, ", front view"), (29.9, 10, ", front view"), (-29.9, 10, ", front view"), (330.5, 0, ", front view"),
    (30, 10, ", side view"), (-45, 10, ", side view"), (-90, 30, ", side view"), (150, 60, ", side view"),
    (150.1, 0, ", back view"), (180, 0, ", back view"), (-170, -10, ", back view"), (200, 0, ", back view"),
    (0, 61, ", overhead view"), (180, 89, ", overhead view"),
])
def test_view_suffix(azimuth, elevation, suffix):
    assert view_suffix(azimuth, elevation) == suffix


def test_prompt_for_cameras(guidance, cond):
    assert guidance.prompt_for(cond, cam(0)) == PROMPT + ", front view"
    assert guidance.prompt_for(cond, cam(40)) == PROMPT + ", side view"
    assert guidance.prompt_for(cond, cam(90)) == PROMPT + ", side view"
    assert guidance.prompt_for(cond, cam(-100)) == PROMPT + ", side view"
    assert guidance.prompt_for(cond, cam(180)) == PROMPT + ", back view"
    assert guidance.prompt_for(cond, cam(30, 80)) == PROMPT + ", overhead view"
    guidance.view_dependent = False
    try:
        assert guidance.prompt_for(cond, cam(180)) == PROMPT
    finally:
        guidance.view_dependent = True


# ----------------------------------------------------------------- SD-2.1-base with random weights

def test_sd21_configs_are_sd21_architecture():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd21_configs()
    unet, vae, text = configs["unet"], configs["vae"], configs["text_encoder"]
    assert unet["block_out_channels"] == (320, 640, 1280, 1280)
    assert unet["attention_head_dim"] == (5, 10, 20, 20) and unet["use_linear_projection"]
    assert unet["cross_attention_dim"] == text["hidden_size"] == 1024
    assert vae["block_out_channels"] == (128, 256, 512, 512) and vae["scaling_factor"] == 0.18215
    assert (text["num_hidden_layers"], text["num_attention_heads"], text["intermediate_size"]) == (23, 16, 4096)
    with torch.device("meta"):  # parameters without memory: the exact SD-2.1-base sizes
        counts = [sum(p.numel() for p in m.parameters()) for m in (
            UNet2DConditionModel(**unet), AutoencoderKL(**vae), CLIPTextModel(CLIPTextConfig(**text)))]
    assert counts == [865_910_724, 83_653_863, 340_387_840]


@pytest.mark.slow
def test_build_random_sd21_runs():
    from cfd.guidance.stable_diffusion import build_random_sd21

    g = build_random_sd21(device="cpu")
    assert g.channels == 4 and g.latent_factor == 8
    latents = g.encode(torch.rand(1, 3, 64, 64))
    eps = g.predict_noise(latents, 500, [cam(0)], g.condition("a cat"))
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()


# ----------------------------------------------------------------- whole runs on one model

def test_two_concurrent_runs_match_separate_runs(guidance):
    """Two distillations with different prompts, negative prompts and CFG on one loaded
    model, in two threads in lock-step (each step of one between steps of the other),
    give bit for bit what each gives alone: nothing of a run lives on the model."""
    import threading

    from cfd.distill import DistillConfig, distill

    configs = [DistillConfig.for_stable_diffusion(prompt="a teapot", negative_prompt="", guidance_scale=3.0,
                                                  steps=6, res=64, init_splats=300, seed=1, method="cfd-sde"),
               DistillConfig.for_stable_diffusion(prompt="a red cat", guidance_scale=40.0, steps=6, res=64,
                                                  init_splats=300, seed=1, method="cfd-sde")]
    alone = [distill(guidance, c) for c in configs]
    barrier, together, errors = threading.Barrier(2, timeout=60), [None, None], []

    def run(i):
        try:
            together[i] = distill(guidance, configs[i], callback=lambda info: barrier.wait() and None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for a, b in zip(alone, together):
        for name, t in a.tensors().items():
            assert torch.equal(t, getattr(b, name)), name
    assert not torch.equal(alone[0].sh, alone[1].sh)   # the two conditions do differ


def test_defaults_are_the_authors_sd_stage():
    from cfd.guidance import DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT

    assert DEFAULT_GUIDANCE_SCALE == 71.0   # their 70 in ε_c + s(ε_c − ε_u)
    assert DEFAULT_NEGATIVE_PROMPT.startswith("lack details, ugly, oversmoothed") and "blurry" in DEFAULT_NEGATIVE_PROMPT


def test_sample_steps_with_epsilon_for_a_v_prediction_model(random_sd_model_v):
    """``predict_noise`` answers ε for every model, so ``sample``'s DDIM steps must read
    ε even when the model predicts v: given the exact ε of one latent, each
    deterministic DDIM step lands on that latent noised to the next timestep."""
    g = StableDiffusionGuidance.from_pretrained(random_sd_model_v, view_dependent=False, device="cpu")
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    calls = []

    def exact_noise(x_t, t, cameras, cond):
        alpha, sigma = g.schedule.alpha(t).item(), g.schedule.sigma(t).item()
        calls.append((t, x_t, (x_t - alpha * target) / sigma))
        return calls[-1][2]

    g.predict_noise = exact_noise
    g.decode = lambda latents: latents
    g.sample(PROMPT, [cam(0), cam(90)], steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 10
    for (_, _, noise), (t, x_t, _) in zip(calls, calls[1:]):
        expected = g.schedule.alpha(t).item() * target + g.schedule.sigma(t).item() * noise
        torch.testing.assert_close(x_t, expected, atol=1e-4, rtol=1e-4)
