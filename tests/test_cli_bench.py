"""The command line and the benchmarks' JSON contracts (DESIGN.md §8), on tiny runs."""
import json

from plyfile import PlyData

from cfd.bench import main as bench_main
from cfd.cli import main as cli_main


def test_generate_writes_every_artefact(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["generate", "--backend", "exact", "--steps", "12", "--seed", "3", "--prompt", "a rubber duck",
                     "--out", str(out)]) == 0
    for name in ("scene.ply", "viewer.ply", "render.mp4", "noise.mp4", "scene.glb", "run.json"):
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3 and run["method"] == "cfd" and run["steps_done"] == 12
    assert run["prompt"] == "a rubber duck" and run["views"] == 4 and run["nearest"] == "rubber duck"
    assert {"x", "f_dc_0", "opacity", "rot_3"} <= {p.name for p in PlyData.read(str(out / "scene.ply"))["vertex"].properties}


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


def test_bench_toy_json_contract(tmp_path):
    out = tmp_path / "toy.json"
    assert bench_main(["toy", "--methods", "cfd,sds", "--seeds", "0-1", "--steps", "6", "--res", "16",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "runs", "summary"}
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert set(run) >= {"method", "seed", "psnr", "nearest", "seconds"} and len(run["psnr"]) == 3
    for method in ("cfd", "sds"):
        assert set(data["summary"][method]) == {"mean_best_psnr", "distinct_modes", "mode_entropy", "mean_seconds"}


def test_bench_toy_reports_the_one_psnr_measure(tmp_path):
    """bench toy's PSNR is pipeline.nearest_reference's (the app's, the CLI's run.json)."""
    from cfd.distill import DistillConfig, distill
    from cfd.guidance.exact_prior import ExactPrior
    from cfd.pipeline import nearest_reference
    from cfd.scenes import load_scene_set

    out = tmp_path / "toy.json"
    assert bench_main(["toy", "--methods", "cfd", "--seeds", "1", "--steps", "6", "--res", "16",
                       "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    scene_set, scenes = load_scene_set("toys")
    prior = ExactPrior(scenes[:3], names=scene_set.names[:3])
    near = nearest_reference(distill(prior, DistillConfig(seed=1, steps=6, res=16)), prior)
    assert run["psnr"] == [near["psnr"][n] for n in prior.names]
