"""The app, launched on localhost and driven through gradio_client (offline, CPU).

One module-scoped server: the exact prior, a dedicated runs folder, and
CFD_MODEL pointing at a folder that does not exist, so "Stable Diffusion
without weights" is the same on every machine.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from plyfile import PlyData

gradio_client = pytest.importorskip("gradio_client")
from conftest import served_app  # noqa: E402
from gradio_client import Client  # noqa: E402

FEW_STEPS = 40          # enough for a recognisable result, seconds on a CPU
INRIA_FIELDS = {"x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(app module, client, runs folder): the app on 127.0.0.1 at a free port."""
    runs = tmp_path_factory.mktemp("runs")
    with served_app(runs) as (app, url):
        client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
        try:
            yield app, client, runs
        finally:
            client.close()


def run_dirs(runs: Path) -> list[Path]:
    return [p for p in runs.iterdir() if p.name.startswith("run-")]


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def generate(client, **kwargs):
    params = dict(prompt="a toy", seed=0, steps=FEW_STEPS, res=32, method="cfd", backend="exact")
    params.update(kwargs)
    return client.predict(api_name="/generate", **params)


def error_text(excinfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------- bad input

BAD = [
    (dict(steps=0), r"steps must be an integer between 10 and 3000 \(got 0\)"),
    (dict(steps=100_000), r"steps must be an integer between 10 and 3000"),
    (dict(steps="many"), r"steps must be an integer between 10 and 3000; got the non-numeric value 'many'"),
    (dict(guidance_scale=0.5), r"guidance_scale \(CFG\) must be a number between 1 and 100 \(got 0.5\)"),
    (dict(guidance_scale=500), r"guidance_scale \(CFG\) must be a number between 1 and 100 \(got 500\)"),
    (dict(res=33), r"res must be a multiple of 8 between 16 and 128 for the exact prior \(got 33\)"),
    (dict(res=4096), r"res must be an integer between 16 and 128 for the exact prior \(got 4096\)"),
    (dict(seed=-1), r"seed must be an integer between 0 and 2147483647 \(got -1\)"),
    (dict(seed=2**31), r"seed must be an integer between 0 and 2147483647"),
    (dict(seed="abc"), r"seed must be an integer between 0 and 2147483647; got the non-numeric value 'abc'"),
    (dict(seed=1.5), r"seed must be an integer .* fractional value 1.5"),
    (dict(method="dreamfusion"), r"method must be one of 'cfd', 'cfd-sde', 'sds'"),
    (dict(backend="nerf"), r"backend must be one of 'exact', 'sd'"),
    (dict(scene_set="nope"), r"scene_set must be one of 'toys'"),
    (dict(t_start=500, t_end=600), r"t_end \(600\) must be below t_start \(500\)"),
    (dict(backend="sd", prompt="", res=512), r"The prompt is empty: Stable Diffusion needs a text prompt"),
    (dict(backend="sd", prompt="   ", res=512), r"The prompt is empty"),
    (dict(backend="sd", prompt="a very long prompt " * 20, res=512),
     r"The prompt is 379 characters long; the limit is 300"),
    (dict(backend="sd", prompt="a, " * 60, res=512), r"CLIP tokens; Stable Diffusion's text encoder reads at most 75"),
    (dict(backend="sd", prompt="a corgi", res=32), r"res must be an integer between 64 and 1024 for Stable Diffusion"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[repr(k)[:40] for k, _ in BAD])
def test_bad_input_is_refused_with_a_clear_message(served, kwargs, message):
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        generate(client, **kwargs)
    assert excinfo.typename == "AppError", error_text(excinfo)
    assert re.search(message, error_text(excinfo)), error_text(excinfo)
    assert not run_dirs(runs), "a refused request must not leave a run folder"


def test_sd_without_weights_names_the_fix_and_exact_stays_usable(served):
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        generate(client, backend="sd", prompt="a DSLR photo of a corgi", res=512, guidance_scale=50)
    text = error_text(excinfo)
    assert "Stable Diffusion weights" in text and "not available" in text, text
    assert "Fix:" in text and "CFD_MODEL" in text and "hf download" in text, text
    assert "exact prior" in text, text
    assert wait_until(lambda: not run_dirs(runs), 30)
    # the app stays usable on the exact prior
    ply, *_ = generate(client, steps=10, seed=3)
    assert Path(ply).is_file()


def test_compare_seeds_and_methods(served):
    app, client, runs = served
    gallery, table, status = client.predict(prompt="a toy", seed=0, steps=20, res=32, n_seeds=2,
                                            methods=["cfd", "sds"], backend="exact", api_name="/compare")
    assert len(gallery) == 4
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("CFD · seed 0") and captions[2].startswith("SDS · seed 0"), captions
    for item in gallery:
        assert Path(item["image"]).is_file()
    assert "| cfd | 1 |" in table and "Diversity" in table, table
    assert status.startswith("**Done**"), status
    with pytest.raises(Exception) as excinfo:
        client.predict(n_seeds=9, api_name="/compare")
    assert "n_seeds must be an integer between 1 and" in error_text(excinfo)


def test_sd_backend_runs_when_weights_exist(served, tiny_sd_model, monkeypatch):
    """With weights (a tiny random SD pipeline in diffusers layout) the SD backend
    loads through the same code path and a run completes."""
    app, client, runs = served
    monkeypatch.setenv("CFD_MODEL", str(tiny_sd_model))
    ply, render_mp4, noise_mp4, summary, downloads, preview, status = generate(
        client, backend="sd", prompt="a DSLR photo of a corgi", res=64, steps=10, guidance_scale=7.5)
    assert summary["backend"] == "sd" and summary["guidance_scale"] == 7.5
    assert "Stable Diffusion" in summary["guidance"] and summary["prompt"] == "a DSLR photo of a corgi"
    assert summary["config"]["res"] == 64 and summary["steps_done"] == 10
    assert INRIA_FIELDS <= set(PlyData.read(ply)["vertex"].data.dtype.names)
    assert wait_until(lambda: not run_dirs(runs), 30)


# --------------------------------------------------------------------- a full run

def test_exact_prior_run_returns_ply_videos_glb_and_summary(served):
    app, client, runs = served
    t0 = time.perf_counter()
    ply, render_mp4, noise_mp4, summary, downloads, preview, status = generate(client, seed=0)
    seconds = time.perf_counter() - t0

    ply_data = PlyData.read(ply)
    vertex = ply_data["vertex"]
    assert INRIA_FIELDS <= set(vertex.data.dtype.names)
    assert vertex.count == summary["n_splats"] > 0

    for video in (render_mp4, noise_mp4):
        frames = np.stack(list(iio.imiter(video)))
        assert frames.shape[0] >= 24 and frames.shape[-1] == 3, frames.shape
        assert frames.std() > 1.0  # not a blank video

    names = sorted(Path(p).name for p in downloads)
    assert names == sorted(f"cfd_cfd_seed0_{n}" for n in
                           ("scene.ply", "scene.glb", "render.mp4", "noise.mp4", "run.json")), names
    glb = next(Path(p) for p in downloads if p.endswith(".glb"))
    assert glb.read_bytes()[:4] == b"glTF"
    full_ply = PlyData.read(next(p for p in downloads if p.endswith("scene.ply")))
    assert INRIA_FIELDS <= set(full_ply["vertex"].data.dtype.names)

    assert summary["method"] == "cfd" and summary["seed"] == 0 and summary["steps_done"] == FEW_STEPS
    assert summary["cancelled"] is False and summary["backend"] == "exact"
    assert summary["nearest"] in {"snowman", "mushroom", "rubber duck", "rocket"}
    assert set(summary["timings_s"]) >= {"distill", "render_video", "noise_video", "glb", "total"}
    assert Path(preview).is_file()
    assert status.startswith("**Done**"), status
    # the per-request temp folder is gone once the outputs are delivered
    assert wait_until(lambda: not run_dirs(runs), 30), run_dirs(runs)
    print(f"\nexact prior, {FEW_STEPS} steps at 32 px: {seconds:.1f} s through the API; "
          f"timings {summary['timings_s']}")


def test_two_concurrent_clients_get_their_own_files(served):
    app, client, runs = served
    other = Client(client.src, verbose=False, download_files=client.output_dir)
    try:
        jobs = [client.submit(prompt="a toy", seed=1, steps=20, res=32, api_name="/generate"),
                other.submit(prompt="a toy", seed=2, steps=20, res=32, api_name="/generate")]
        results = [job.result(timeout=300) for job in jobs]
    finally:
        other.close()
    (ply1, vid1, _, sum1, dl1, *_), (ply2, vid2, _, sum2, dl2, *_) = results
    assert (sum1["seed"], sum2["seed"]) == (1, 2)
    assert ply1 != ply2 and vid1 != vid2
    assert Path(ply1).read_bytes() != Path(ply2).read_bytes()
    assert not set(dl1) & set(dl2)
    for ply in (ply1, ply2):
        assert INRIA_FIELDS <= set(PlyData.read(ply)["vertex"].data.dtype.names)
    assert wait_until(lambda: not run_dirs(runs), 30)


# --------------------------------------------------------------------- cancel and failures

def _wait_running(app, runs, session: str | None = None) -> None:
    assert wait_until(lambda: run_dirs(runs) and (session is None or session in app._ACTIVE), 60), \
        "the run never started"
    time.sleep(1.0)  # let it take a few steps


def test_stop_button_cancels_cleanly(served):
    """The Stop button's handler stops the session's run at the next step: the
    run ends with a clean "cancelled" and its temp folder is removed."""
    app, client, runs = served
    job = client.submit(prompt="a toy", seed=5, steps=3000, res=32, api_name="/generate")
    _wait_running(app, runs, client.session_hash)
    assert app.stop_session(client.session_hash) == 1
    ply, render_mp4, noise_mp4, summary, downloads, preview, status = job.result(timeout=60)
    assert ply is None and render_mp4 is None and downloads is None
    assert summary["cancelled"] is True and 0 < summary["steps_done"] < 3000
    assert status.startswith("**Cancelled**"), status
    assert wait_until(lambda: not run_dirs(runs), 30), run_dirs(runs)
    assert wait_until(lambda: not app._ACTIVE, 10)


def test_client_cancel_stops_the_run_and_removes_its_folder(served):
    app, client, runs = served
    job = client.submit(prompt="a toy", seed=6, steps=3000, res=32, api_name="/generate")
    _wait_running(app, runs)
    job.cancel()
    assert wait_until(lambda: not run_dirs(runs), 60), run_dirs(runs)
    assert wait_until(lambda: not app._ACTIVE, 30)
    assert wait_until(lambda: not any(t.name == "cfd-run" and t.is_alive() for t in threading.enumerate()), 30)
    # the queue is free again
    ply, *_ = generate(client, steps=10, seed=7)
    assert Path(ply).is_file()


def test_out_of_memory_suggests_a_lower_resolution(served, monkeypatch):
    app, client, runs = served

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(app, "run_pipeline", oom)
    with pytest.raises(Exception) as excinfo:
        generate(client, res=64)
    text = error_text(excinfo)
    assert "Out of memory at res=64" in text and "lower resolution (e.g. res=32)" in text, text
    assert wait_until(lambda: not run_dirs(runs), 30)


def test_unexpected_failure_is_a_clear_error_and_leaves_nothing(served, monkeypatch):
    app, client, runs = served

    def boom(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(app, "run_pipeline", boom)
    with pytest.raises(Exception) as excinfo:
        generate(client)
    assert "The run failed (RuntimeError: renderer exploded); nothing was saved." in error_text(excinfo)
    assert wait_until(lambda: not run_dirs(runs), 30)


# --------------------------------------------------------------------- engine-level helper and settings

def test_pipeline_cancelled_run_writes_nothing(tmp_path):
    from cfd.distill import DistillConfig
    from cfd.guidance.exact_prior import ExactPrior
    from cfd.pipeline import generate as pipeline_generate

    prior = ExactPrior.from_scene_set("toys")
    out = tmp_path / "run"
    result = pipeline_generate(prior, DistillConfig(steps=50, res=16), out, callback=lambda info: info.step >= 3)
    assert result["cancelled"] is True and result["files"] == {} and result["out_dir"] is None
    assert result["summary"]["steps_done"] == 3
    assert list(tmp_path.iterdir()) == [], "a cancelled run leaves no folder and no staging files"

    # stopped during the exports: still nothing
    calls = []
    result = pipeline_generate(prior, DistillConfig(steps=3, res=16), out, video_frames=2, video_res=32,
                               should_stop=lambda: bool(calls), stage_progress=lambda *a: calls.append(a))
    assert result["cancelled"] is True and list(tmp_path.iterdir()) == []

    # keep_partial: the partial scene's artefacts, marked cancelled
    result = pipeline_generate(prior, DistillConfig(steps=50, res=16), out, callback=lambda info: info.step >= 3,
                               keep_partial=True, video_frames=2, video_res=32, glb_resolution=16)
    assert result["cancelled"] is True and result["out_dir"] == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["scene.ply", "viewer.ply", "render.mp4", "noise.mp4", "run.json"]
        + (["scene.glb"] if "glb" in result["files"] else []))
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_launch_settings_respect_gradio_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CFD_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    import app

    kwargs = app.launch_kwargs()
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["server_port"] == 7999
    assert kwargs["allowed_paths"] == [str((tmp_path / "runs").resolve())]
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    assert "server_name" not in app.launch_kwargs() and "server_port" not in app.launch_kwargs()


def test_validation_never_clamps():
    import app

    req = app.validate("", "", "exact", "", "cfd-sde", "12", 100.0, 7, 48, 900, 0, 1.0, 1e-3)
    assert (req.seed, req.steps, req.res, req.t_end, req.scene_set) == (12, 100, 48, 20, "toys")
    config = req.config()
    assert config.method == "cfd-sde" and config.t_knots == ((0.0, 900), (1.0, 20)) and config.gamma == 1e-3
    with pytest.raises(app.BadInput, match="steps must be an integer between 10 and 3000 \\(got 3001\\)"):
        app.validate("", "", "exact", "", "cfd", 0, 3001, 7, 32, 980, 0, 1.0, 1e-4)
    with pytest.raises(app.BadInput) as excinfo:  # every problem is listed
        app.validate("", "", "exact", "", "cfd", -1, 5, 0, 31, 980, 0, 0.0, 2.0)
    for name in ("seed", "steps", "guidance_scale", "res", "lr_scale", "gamma"):
        assert name in str(excinfo.value)
    sd = app.validate("a corgi", "", "sd", "", "sds", 0, 1000, 51, 512, 980, 0, 2.0, 1e-4)
    assert sd.t_end == 300 and sd.config().t_range == (300, 980) and sd.config().res == 512


def test_out_of_memory_message_unit():
    import app

    req = app.validate("", "", "exact", "", "cfd", 0, 100, 7, 128, 980, 0, 1.0, 1e-4)
    err = app._friendly_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 1 TB"), req)
    assert "Out of memory at res=128" in err.message and "res=64" in err.message
