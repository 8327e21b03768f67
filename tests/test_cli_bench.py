"""The command line and the benchmarks' JSON contracts (DESIGN.md §8), on tiny runs."""
import json

from plyfile import PlyData

from cfd.bench import main as bench_main
from cfd.cli import main as cli_main


def test_generate_writes_every_artefact(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["generate", "--backend", "exact", "--steps", "12", "--seed", "3", "--out", str(out)]) == 0
    for name in ("scene.ply", "viewer.ply", "render.mp4", "noise.mp4", "scene.glb", "run.json"):
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3 and run["method"] == "cfd" and run["steps_done"] == 12
    assert {"x", "f_dc_0", "opacity", "rot_3"} <= {p.name for p in PlyData.read(str(out / "scene.ply"))["vertex"].properties}


def test_generate_refuses_bad_input(tmp_path, capsys):
    assert cli_main(["generate", "--backend", "sd", "--prompt", " ", "--out", str(tmp_path / "x")]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    assert cli_main(["generate", "--backend", "exact", "--steps", "0", "--out", str(tmp_path / "y")]) == 2
    assert "steps=0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bench_toy_json_contract(tmp_path):
    out = tmp_path / "toy.json"
    assert bench_main(["toy", "--methods", "cfd,sds:lambda", "--seeds", "0-1", "--steps", "6", "--res", "16",
                       "--views", "2", "--prior", "multiview", "--prompt", "a toy", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "runs", "summary"}
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert set(run) >= {"method", "seed", "psnr", "nearest", "seconds"} and len(run["psnr"]) == 4  # the toys
    assert (data["config"]["prior"], data["config"]["views"], data["config"]["prompt"]) == ("multiview", 2, "a toy")
    for method in ("cfd", "sds:lambda"):
        assert set(data["summary"][method]) == {"mean_best_psnr", "distinct_modes", "chimeras", "mode_entropy",
                                                "mean_seconds"}
