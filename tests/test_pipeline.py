"""pipeline.generate: when a run counts as cancelled (Stop in the loop or during the exports),
what a failed optional artefact leaves, the picture before the other exports and those side by side."""
from __future__ import annotations

import json
import threading

import pytest

from cfd.distill import DistillConfig
from cfd.guidance.exact_prior import ExactPrior
from cfd.pipeline import generate


@pytest.fixture(scope="module")
def prior():
    return ExactPrior.bundled(["toys"], originals=True, multiview=True)


def small(**kw) -> DistillConfig:
    return DistillConfig(steps=10, res=16, init_splats=200, batch_views=2, prompt="a rubber duck", **kw)


EXPORTS = dict(video_frames=2, video_res=16, glb_resolution=16)


def test_a_run_stopped_on_its_last_step_is_finished_not_cancelled(prior, tmp_path):
    result = generate(prior, small(), tmp_path / "run", callback=lambda info: info.step == info.steps, **EXPORTS)
    assert result["cancelled"] is False and result["summary"]["steps_done"] == 10
    assert (tmp_path / "run" / "scene.ply").is_file()


def test_a_stop_during_the_exports_ends_them_and_publishes_nothing(prior, tmp_path):
    stages = []
    result = generate(prior, small(), tmp_path / "run", should_stop=lambda: bool(stages),
                      stage_progress=lambda stage, done, total: stages.append(stage), **EXPORTS)
    # the first progress reported (the videos start side by side), then Stop: nothing else reported or ran
    assert stages in (["render_video"], ["noise_video"])
    assert result["cancelled"] is True and result["out_dir"] is None and result["summary"]["steps_done"] == 10
    assert not any(tmp_path.iterdir())   # the staging folder is gone too


def test_an_optional_export_that_fails_leaves_the_run_standing(prior, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("marching cubes: cannot allocate the grid")

    monkeypatch.setattr("cfd.export.export_glb", no_memory)
    monkeypatch.setattr("cfd.export.write_video", lambda chunks, path: 1 / 0)   # the encoder breaks as well
    result = generate(prior, small(), tmp_path / "run", **EXPORTS)
    summary = result["summary"]
    assert result["cancelled"] is False and set(result["files"]) == {"scene_ply", "viewer_ply", "run_json"}
    assert summary["glb_error"] == "MemoryError: marching cubes: cannot allocate the grid"
    assert summary["render_mp4_error"].startswith("ZeroDivisionError") and "noise_mp4_error" in summary
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json", "scene.ply", "viewer.ply"]


def test_a_run_stopped_early_writes_nothing(prior, tmp_path):
    result = generate(prior, small(), tmp_path / "run", callback=lambda info: info.step == 4, **EXPORTS)
    assert result["cancelled"] is True and result["out_dir"] is None and result["summary"]["steps_done"] == 4
    assert not any(tmp_path.iterdir())


def test_a_run_past_its_time_limit_stops_and_keeps_what_it_has(prior, tmp_path):
    result = generate(prior, small(), tmp_path / "run", time_limit_s=0.0, **EXPORTS)
    summary = result["summary"]
    assert result["cancelled"] is False and summary["stopped_by"] == "time limit"
    assert summary["steps_done"] == 1 and (tmp_path / "run" / "scene.ply").is_file()
    finished = generate(prior, small(), tmp_path / "run2", time_limit_s=3600, **EXPORTS)["summary"]
    assert finished["stopped_by"] is None and finished["steps_done"] == 10


def test_the_picture_comes_first_then_each_artefact_as_it_is_written(prior, tmp_path):
    seen = []

    def on_picture(files, summary):
        assert all(path.is_file() for path in files.values())
        seen.append(("picture", sorted(files), summary["n_splats"], "nearest" in summary))

    result = generate(prior, small(), tmp_path / "run", preview_res=32, on_picture=on_picture,
                      on_artefact=lambda key, path: seen.append((key, path.is_file())), **EXPORTS)
    assert seen[0] == ("picture", ["preview_png", "scene_ply", "viewer_ply"], result["summary"]["n_splats"], False)
    assert sorted(seen[1:]) == [("glb", True), ("noise_mp4", True), ("render_mp4", True)]
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())   # complete once the last one is
    assert {"render_mp4", "noise_mp4", "glb"} <= set(on_disk["files"]) and "nearest" in on_disk
    assert on_disk["timings_s"]["picture"] <= on_disk["timings_s"]["total"]


def test_the_videos_are_written_side_by_side(prior, tmp_path, monkeypatch):
    from cfd import export

    both = threading.Barrier(2, timeout=20)   # passes only when the two videos are written at once
    write_video = export.write_video

    def meet_then_write(chunks, path, **kw):
        both.wait()
        return write_video(chunks, path, **kw)

    monkeypatch.setattr("cfd.export.write_video", meet_then_write)
    summary = generate(prior, small(), tmp_path / "run", **EXPORTS)["summary"]
    assert "render_mp4_error" not in summary and "noise_mp4_error" not in summary
    assert {"render_mp4", "noise_mp4"} <= set(summary["files"])
