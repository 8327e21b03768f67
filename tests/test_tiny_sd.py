"""tiny-sd: the training script end to end on its micro config, the shipped folder
(offline loading, its model card's hashes and size), camera input, the backend."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from cfd import backends
from cfd import request as rq
from cfd.cameras import camera_features, orbit_camera
from cfd.framing import FOV_DEG, RADIUS
from cfd.guidance.stable_diffusion import StableDiffusionGuidance
from cfd.guidance.tiny_sd import TINY_SD_CAMERA_SCALE, TINY_SD_DIR, sample_caption, training_captions
from cfd.scenes import find_scene_sets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import train_tiny_sd  # noqa: E402


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_sd_micro") / "model"
    assert train_tiny_sd.main(["--micro", "--out", str(out)]) == 0
    return out


def test_training_script_runs_end_to_end_on_the_micro_config(micro_model):
    card = json.loads((micro_model / "model_card.json").read_text())
    assert card["train_config"]["unet_steps"] == train_tiny_sd.MICRO.unet_steps
    assert card["data"]["variants"] == sum(min(len(f.variants), train_tiny_sd.MICRO.variants)
                                           for s in find_scene_sets() for f in s.families)
    assert card["evaluation"]["samples"] == 8 * train_tiny_sd.MICRO.eval_samples
    assert card["data"]["scenes_sha256"] == train_tiny_sd.bundled_families(train_tiny_sd.MICRO.variants)[3]
    assert card["files"] == train_tiny_sd.folder_hashes(micro_model)
    guidance = StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", dtype=torch.float32)
    assert guidance.latent_factor == 4 and guidance.camera_conditioned and guidance.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        train_tiny_sd.main(["--micro", "--set", "prediction_type=v", "--out", str(micro_model.parent / "x")])


def test_the_unet_takes_the_camera_in_the_branches_camera_input_names(micro_model):
    guidance = StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", dtype=torch.float32)
    front, back = (orbit_camera(a, 10, RADIUS, FOV_DEG, 32, 32) for a in (0, 180))
    cond = guidance.condition("a rubber duck", "", 3.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.nn.init.normal_(guidance.unet.class_embedding.linear_1.weight, std=1.0)
    features, none = camera_features([front, back]), torch.zeros(2, 4)
    eps = {}
    for mode, labels in (("guided", (none, features)), ("both", (features, features)), ("off", (none, none))):
        guidance.camera_input = mode     # rows: [unconditional branch; conditional branch]
        assert torch.equal(guidance.camera_labels([front, back]), torch.cat(labels)), mode
        eps[mode] = [guidance.predict_noise(x, 500, [c], cond) for c in (front, back)]
    assert not torch.allclose(*eps["guided"]) and not torch.allclose(*eps["both"])
    assert not torch.allclose(eps["guided"][0], eps["both"][0])    # CFG scales the camera only when guided
    guidance.view_dependent = False                                # no camera signal at all
    assert torch.equal(guidance.predict_noise(x, 500, [front], cond), guidance.predict_noise(x, 500, [back], cond))
    with pytest.raises(ValueError, match="camera_input must be one of guided, both, off"):
        StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", camera_input="on")


def test_a_camera_scale_of_its_own_adds_a_branch_whose_weight_is_that_scale(micro_model):
    guidance = StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", dtype=torch.float32)
    cam = orbit_camera(60, 10, RADIUS, FOV_DEG, 32, 32)
    cond = guidance.condition("a rubber duck", "", 3.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.nn.init.normal_(guidance.unet.class_embedding.linear_1.weight, std=1.0)

    def eps(camera_input="guided", camera_scale=None):
        guidance.camera_input, guidance.camera_scale = camera_input, camera_scale
        return guidance.predict_noise(x, 500, [cam], cond)

    assert torch.allclose(eps(camera_scale=3.0), eps(), atol=1e-5)     # s_c = s: the two-branch CFG
    camera_free = eps(camera_scale=0.0)
    assert torch.allclose(camera_free, eps("off"), atol=1e-5)
    step = eps() - camera_free                                        # what one CFG scale of camera adds
    assert step.abs().max() > 1e-3
    assert torch.allclose(eps(camera_scale=10.0), camera_free + 10 / 3 * step, atol=1e-4)
    assert torch.equal(eps("both", 10.0), eps("both"))               # the scale is the guided mode's
    with pytest.raises(ValueError, match="camera_scale must be a finite number ≥ 0"):
        StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", camera_scale=-1.0)


def test_the_model_samples_a_caption_seeded(micro_model):
    guidance = StableDiffusionGuidance.from_pretrained(micro_model, device="cpu", dtype=torch.float32)
    cams = [orbit_camera(a, 10, RADIUS, FOV_DEG, 32, 32) for a in (0, 90)]
    a, b = (guidance.sample("a rubber duck", cams, 3, 3.0, torch.Generator().manual_seed(0)) for _ in range(2))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_the_sample_bench_judges_the_shipped_model_samples_against_the_bundled_objects(tmp_path):
    from cfd import bench

    out = tmp_path / "samples.json"
    assert bench.main(["samples", "--prompts", "a rubber duck,a cactus", "--samples", "2", "--steps", "2",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["samples"]) == 4 and result["summary"]["samples"] == 4
    duck = [r for r in result["samples"] if r["prompt"] == "a rubber duck"]
    assert [r["azimuth"] for r in duck] == [0.0, 45.0]
    assert all(r["in_family"] == (r["family"] == "rubber duck") for r in duck)


def test_camera_features_are_elevation_azimuth_and_distance():
    f = camera_features([orbit_camera(90, 30, RADIUS, FOV_DEG, 8, 8), orbit_camera(180, 0, 2 * RADIUS, FOV_DEG, 8, 8)])
    expected = torch.tensor([[0.5236, 1.0, 0.0, 1.0], [0.0, 0.0, -1.0, 2.0]])
    assert torch.allclose(f, expected, atol=1e-4)


def test_training_captions_name_every_variant_by_family_own_words_and_theme():
    texts = training_captions(find_scene_sets())
    assert len(texts) == sum(len(s.objects) for s in find_scene_sets())
    duck = next(t for t in texts if t.family[0] == "a rubber duck")
    assert duck.theme == "a toy" and "a duck" in duck.family and duck.own[0].startswith("a ")
    rng = random.Random(0)
    drawn = [sample_caption(duck, rng) for _ in range(2000)]
    assert 0.07 < drawn.count("") / len(drawn) < 0.13
    assert {"a rubber duck", duck.own[0], "a toy"} <= set(drawn)


def test_the_shipped_folder_loads_offline_and_matches_its_model_card(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = json.loads((TINY_SD_DIR / "model_card.json").read_text())
    assert card["files"] == train_tiny_sd.folder_hashes(TINY_SD_DIR)
    assert card["size_bytes"] <= 25 * 2**20
    assert card["data"]["scenes_sha256"] == train_tiny_sd.bundled_families()[3]   # trained on the bundled objects
    assert backends.tiny_sd_problem() is None
    guidance = backends.tiny_sd()
    assert guidance.camera_conditioned and guidance.references is not None
    assert guidance.name == "tiny-sd" and guidance.camera_scale == TINY_SD_CAMERA_SCALE and guidance.camera_scaled


def test_tiny_sd_backend_defaults_and_refusals():
    request = rq.parse_request(backend="tiny-sd")
    assert (request.res, request.prompt) == (64, "a rubber duck")
    assert request.config().cameras.pool == 0 and request.config().background == "white"
    with pytest.raises(rq.RequestError, match="res must be 64 for tiny-sd"):
        rq.parse_request(backend="tiny-sd", res=128)
    with pytest.raises(rq.RequestError, match="tiny-sd reads 60 at most"):
        rq.parse_request(backend="tiny-sd", prompt="a very long description of a rubber duck with a hat and scarf")
    with pytest.raises(rq.RequestError, match="The prompt is empty: tiny-sd"):
        rq.parse_request(backend="tiny-sd", prompt=" ")
    with pytest.raises(rq.RequestError, match="model is for Stable Diffusion"):
        rq.parse_request(backend="tiny-sd", model="x")


def test_a_missing_tiny_sd_folder_says_how_to_get_it_back(monkeypatch, tmp_path):
    import cfd.guidance.tiny_sd as tiny

    monkeypatch.setattr(tiny, "TINY_SD_DIR", tmp_path / "gone")
    problem = backends.tiny_sd_problem()
    assert "tiny-sd is not available" in problem and "git checkout -- assets/models/tiny-sd" in problem
    assert "scripts/train_tiny_sd.py" in problem


@pytest.mark.slow
def test_a_short_cfd_run_on_the_shipped_model_makes_the_named_family():
    from cfd.distill import distill
    from cfd.pipeline import nearest_reference

    request = rq.parse_request(backend="tiny-sd", prompt="a rubber duck", steps=100)
    guidance = backends.prepare(request)
    scene = distill(guidance, request.config())
    assert nearest_reference(scene, guidance, 64)["nearest_family"] == "rubber duck"
