"""The command line and the benchmarks' JSON contracts (docs/design.md, section 4), on tiny runs."""
import json

from plyfile import PlyData

from cfd.bench import main as bench_main
from cfd.cli import main as cli_main


def test_generate_writes_every_artefact(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["generate", "--backend", "exact", "--steps", "40", "--seed", "3", "--prompt", "a rubber duck",
                     "--ply-sh-degree", "3", "--out", str(out)]) == 0
    for name in ("scene.ply", "viewer.ply", "render.mp4", "noise.mp4", "scene.glb", "run.json"):
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3 and run["method"] == "cfd" and run["steps_done"] == 40
    assert run["prompt"] == "a rubber duck" and run["views"] == 4 and run["nearest_family"] == "rubber duck"
    fields = {p.name for p in PlyData.read(str(out / "scene.ply"))["vertex"].properties}
    assert {"x", "f_dc_0", "opacity", "rot_3", "f_rest_44"} <= fields and "f_rest_45" not in fields  # degree 3


def test_generate_refuses_bad_input(tmp_path, capsys):
    assert cli_main(["generate", "--backend", "sd", "--prompt", " ", "--out", str(tmp_path / "x")]) == 2
    assert "The prompt is empty" in capsys.readouterr().err
    assert cli_main(["generate", "--backend", "exact", "--steps", "0", "--out", str(tmp_path / "y")]) == 2
    assert "steps must be an integer between 10 and 3000 (got 0)" in capsys.readouterr().err
    assert cli_main(["generate", "--res", "30", "--out", str(tmp_path / "z")]) == 2   # the app refuses it too
    assert "res must be a multiple of 8 between 16 and 128" in capsys.readouterr().err
    assert cli_main(["generate", "--prompt", "a giraffe", "--out", str(tmp_path / "w")]) == 2
    assert "does not know 'a giraffe'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_generate_never_writes_into_or_deletes_from_a_folder_it_did_not_make(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "preview.png").write_bytes(b"a user's own file")
    assert cli_main(["generate", "--steps", "10", "--out", str(theirs)]) == 2
    assert "is not empty and holds no earlier cfd run" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["preview.png"]
    # a folder of an earlier run is reused: its files are replaced, a user's files beside them stay
    ours = tmp_path / "ours"
    assert cli_main(["generate", "--steps", "10", "--video-frames", "2", "--out", str(ours)]) == 0
    (ours / "preview.png").write_bytes(b"mine")
    (ours / "notes.txt").write_text("mine")
    assert cli_main(["generate", "--steps", "10", "--seed", "1", "--video-frames", "2", "--out", str(ours)]) == 0
    assert (ours / "preview.png").read_bytes() == b"mine" and (ours / "notes.txt").read_text() == "mine"
    assert json.loads((ours / "run.json").read_text())["seed"] == 1


def test_an_internal_error_exits_1_with_its_traceback(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("a shape check inside the loop")   # a bug, not the user's input

    monkeypatch.setattr("cfd.pipeline.distill", broken)
    assert cli_main(["generate", "--steps", "10", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "An internal error stopped the run (incident " in err and "(ValueError: a shape check inside the loop)" in err
    assert "Traceback" in err
    assert not (tmp_path / "run").exists()


def test_bench_toy_json_contract(tmp_path):
    out = tmp_path / "toy.json"
    assert bench_main(["toy", "--methods", "cfd,sds:lambda", "--seeds", "0-1", "--steps", "6", "--res", "16",
                       "--views", "2", "--prior", "multiview", "--prompt", "a toy", "--originals",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "runs", "summary"}
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert set(run) >= {"method", "seed", "psnr", "nearest", "seconds"} and len(run["psnr"]) == 4  # the toys
    assert (data["config"]["prior"], data["config"]["views"], data["config"]["prompt"]) == ("multiview", 2, "a toy")
    for method in ("cfd", "sds:lambda"):
        assert set(data["summary"][method]) == {"mean_best_psnr", "distinct_modes", "distinct_families", "in_prompt",
                                                "mean_pairwise_psnr", "chimeras", "mode_entropy", "mean_seconds"}


def test_generate_sd_preset_on_the_tiny_pipeline(tmp_path, random_sd_model):
    """`--backend sd` with no --res/--steps is the SD preset; here 50 steps at 64 px on
    the tiny random SD, cfd-sde with the authors' schedules, the shared defaults."""
    from cfd.guidance import DEFAULT_GUIDANCE_SCALE, DEFAULT_NEGATIVE_PROMPT
    from cfd.schedule import AUTHORS_SD_GAMMA_KNOTS, AUTHORS_SD_T_KNOTS

    out = tmp_path / "sd"
    assert cli_main(["generate", "--backend", "sd", "--model", str(random_sd_model), "--prompt", "a hamburger",
                     "--method", "cfd-sde", "--steps", "50", "--res", "64", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps_done"] == 50 and run["skipped_steps"] == 0 and run["res"] == 64
    assert run["condition"] == {"prompt": "a hamburger", "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
                                "guidance_scale": DEFAULT_GUIDANCE_SCALE}
    config = run["config"]
    assert [tuple(k) for k in config["t_knots"]] == list(AUTHORS_SD_T_KNOTS)
    assert [tuple(k) for k in config["gamma"]] == list(AUTHORS_SD_GAMMA_KNOTS)
    assert config["gamma_reference_steps"] == 25_000 and config["densify_every"] == 5
    assert config["init_splats"] < run["n_splats"] <= 4 * config["init_splats"]   # densified, selectively
    for name in ("scene.ply", "render.mp4", "noise.mp4"):
        assert (out / name).stat().st_size > 0


def test_sd_without_res_or_steps_is_the_sd_preset(tmp_path, monkeypatch, capsys):
    """No weights here: `--backend sd` alone is refused for the weights, not for its res."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["generate", "--backend", "sd", "--prompt", "a cat", "--model", str(tmp_path / "none"),
                     "--out", str(tmp_path / "x")]) == 3
    assert "Stable Diffusion weights" in capsys.readouterr().err


def test_bench_speed_reports_the_splat_curve_with_densification(tmp_path):
    out = tmp_path / "speed.json"
    assert bench_main(["speed", "--backend", "exact", "--res", "16", "--steps", "18", "--densify",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["densify_every"] == 2 and data["skipped_steps"] == 0 and data["ms_per_step"] > 0
    curve = data["splat_curve"]
    assert curve[0] == [0, 2000] and len(curve) > 2 and all(b[1] > a[1] for a, b in zip(curve, curve[1:]))
    assert curve[-1][1] <= 8000 and "densify" in data["phases_ms"]
    assert 0 < data["reference_cache_mb"] <= 512   # the prompt's reference renders, within the prior's cap


def test_bench_toy_reports_the_one_psnr_measure(tmp_path):
    """bench toy's PSNR is pipeline.nearest_reference's (the app's, the CLI's run.json), of the run
    its options describe (--t-knots reaches the run's t schedule)."""
    from cfd.distill import DistillConfig, distill
    from cfd.guidance.exact_prior import ExactPrior
    from cfd.pipeline import nearest_reference

    out = tmp_path / "toy.json"
    assert bench_main(["toy", "--methods", "cfd", "--seeds", "1", "--steps", "6", "--res", "16",
                       "--t-knots", "((0, 600), (1, 20))", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    config, run = data["config"], data["runs"][0]
    prior = ExactPrior.bundled(["toys"], multiview=config["prior"] == "multiview")
    scene = distill(prior, DistillConfig(seed=1, steps=6, res=16, batch_views=config["views"],
                                         prompt=config["prompt"], guidance_scale=config["guidance_scale"],
                                         t_knots=((0, 600), (1, 20))))
    near = nearest_reference(scene, prior, 16)
    assert run["psnr"] == [near["psnr"][n] for n in prior.names]
    assert config["psnr"] == {"res": 16, "views": 8} and near["psnr_res"] == 16
    assert config["t_knots"] == [[0, 600], [1, 20]]


def test_every_command_prints_its_help(capsys):
    """--help of every subcommand (the request layer's help texts hold '%')."""
    import pytest

    for argv in (["--help"], ["generate", "--help"], ["batch", "--help"], ["render", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 0, argv
        text = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
        assert "usage: python -m cfd" in text and ("every 10 % of the run" in text or argv[0] != "generate")
    for argv in (["--help"], ["speed", "--help"], ["noise", "--help"], ["toy", "--help"], ["render", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            bench_main(argv)
        assert exit_.value.code == 0, argv


def test_a_run_stopped_by_non_finite_gradients_exits_4_with_the_message(tmp_path, monkeypatch, capsys):
    import cfd.pipeline
    from cfd.distill import NonFiniteGradient

    def stops(*args, **kwargs):
        raise NonFiniteGradient("step 6: the gradient was NaN or infinite for 4 steps in a row")

    monkeypatch.setattr(cfd.pipeline, "generate", stops)
    assert cli_main(["generate", "--steps", "10", "--out", str(tmp_path / "run")]) == 4
    assert "error: step 6: the gradient was NaN or infinite" in capsys.readouterr().err


def test_bench_recipe_and_samples_judge_tiny_sd_against_the_bundled_objects(tmp_path):
    """The JSON of ``bench recipe`` and ``bench samples`` (docs/tiny-sd.md) on a 10-step run and two samples."""
    recipe = tmp_path / "recipe.json"
    assert bench_main(["recipe", "--prompts", "a rubber duck", "--methods", "cfd", "--seeds", "0",
                       "--set", "steps=10", "--json", str(recipe)]) == 0
    run, = json.loads(recipe.read_text())["runs"]
    assert run["method"] == "cfd" and run["seed"] == 0 and 0 <= run["view_agreement"] <= 1
    assert run["psnr_best_turn"] >= run["psnr"] - 0.01 and run["detail"] > 0
    summary = json.loads(recipe.read_text())["summary"]["cfd"]
    assert summary["runs"] == 1 and summary["mean_detail"] == run["detail"]

    samples = tmp_path / "samples.json"
    assert bench_main(["samples", "--prompts", "a rubber duck", "--samples", "2", "--steps", "2",
                       "--json", str(samples)]) == 0
    out = json.loads(samples.read_text())
    assert len(out["samples"]) == 2 and all(s["detail"] > 0 and s["psnr"] > 5 for s in out["samples"])
    assert out["summary"]["samples"] == 2
