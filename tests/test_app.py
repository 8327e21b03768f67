"""The app, launched on localhost and driven through gradio_client (offline, CPU).

One module-scoped server: the exact prior, a dedicated runs folder, and
CFD_MODEL pointing at a folder that does not exist, so "Stable Diffusion
without weights" is the same on every machine. Concurrency (CFD_CONCURRENCY=2)
has its own server in test_app_concurrency.py.
"""
from __future__ import annotations

import json
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
API_OUTPUTS = ["viewer_ply", "render_video", "noise_video", "summary", "downloads", "status"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(app module, client, runs folder): the app on 127.0.0.1 at a free port."""
    runs = tmp_path_factory.mktemp("runs")
    with served_app(runs) as (app, url, _):
        client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
        try:
            yield app, client, runs
        finally:
            client.close()


def run_dirs(runs: Path) -> list[Path]:
    """The run folders under CFD_RUNS_DIR=runs (in the runner's own subfolder)."""
    from cfd.runner import RUNS_FOLDER

    return [p for p in (runs / RUNS_FOLDER).iterdir() if p.name.startswith("run-")]


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def generate(client, **kwargs):
    params = dict(prompt="a toy", seed=0, steps=FEW_STEPS)
    params.update(kwargs)
    return client.predict(api_name="/generate", **params)


def error_text(excinfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------- the API contract

def test_api_lists_generate_and_compare_with_per_backend_defaults(served):
    app, client, runs = served
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/generate", "/compare"}, set(api)   # the UI's own events are private
    params = api["/generate"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[:6] == ["prompt", "seed", "steps", "guidance_scale", "method", "backend"], names
    assert all(p["parameter_has_default"] and p["parameter_default"] is None for p in params), params
    assert [r["label"] for r in api["/generate"]["returns"]] == API_OUTPUTS
    assert [r["label"] for r in api["/compare"]["returns"]] == ["gallery", "table", "status"]
    cmp_names = [p["parameter_name"] for p in api["/compare"]["parameters"]]
    assert {"methods", "n_seeds"} <= set(cmp_names) and "method" not in cmp_names


def test_readme_lists_the_api_as_it_is():
    """The README's API paragraph names /generate's outputs in order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## API"):]
    section = section[:section.index("\n## ", 4)]
    assert "(" + ", ".join(API_OUTPUTS) + ")" in section.replace("`", ""), section


# --------------------------------------------------------------------- bad input

BAD = [
    (dict(steps=0), r"steps must be an integer between 10 and 3000 \(got 0\)"),
    (dict(steps=100_000), r"steps must be an integer between 10 and 3000"),
    (dict(steps=5000), r"steps must be an integer between 10 and 3000 \(got 5000\)"),
    (dict(steps="many"), r"steps must be an integer between 10 and 3000; got the non-numeric value 'many'"),
    (dict(guidance_scale=0.5), r"guidance_scale \(CFG\) must be a number between 1 and 100 \(got 0.5\)"),
    (dict(guidance_scale=500), r"guidance_scale \(CFG\) must be a number between 1 and 100 \(got 500\)"),
    (dict(res=33), r"res must be a multiple of 8 between 16 and 128 for the exact prior \(got 33\)"),
    (dict(res=4096), r"res must be an integer between 16 and 128 for the exact prior \(got 4096\)"),
    (dict(views=0), r"views \(per step\) must be an integer between 1 and 8 \(got 0\)"),
    (dict(seed=-1), r"seed must be an integer between 0 and 2147483647 \(got -1\)"),
    (dict(seed=-5), r"seed must be an integer between 0 and 2147483647 \(got -5\)"),
    (dict(seed=2**31), r"seed must be an integer between 0 and 2147483647"),
    (dict(seed="abc"), r"seed must be an integer between 0 and 2147483647; got the non-numeric value 'abc'"),
    (dict(seed=1.5), r"seed must be an integer .* fractional value 1.5"),
    (dict(method="dreamfusion"), r"method must be one of 'cfd', 'cfd-sde', 'sds'"),
    (dict(backend="nerf"), r"backend must be one of 'exact', 'tiny-sd', 'sd'"),
    (dict(t_start=500, t_end=600), r"t_end \(600\) must be below t_start \(500\)"),
    (dict(prompt="a giraffe"), r"The embedded exact prior does not know 'a giraffe'\. It knows only these objects: "
                               r"snowman, mushroom, rubber duck, rocket \(or the theme 'a toy'\); cactus"),
    (dict(prompt="a very long prompt " * 20), r"The prompt is 379 characters long; the limit is 300"),
    (dict(backend="sd", prompt=""), r"The prompt is empty: Stable Diffusion needs a text prompt"),
    (dict(backend="sd", prompt="   "), r"The prompt is empty"),
    (dict(backend="sd", prompt="a, " * 60), r"CLIP tokens; Stable Diffusion's text encoder reads at most 75"),
    (dict(backend="sd", prompt="a corgi", res=32), r"res must be an integer between 64 and 1024 for Stable Diffusion"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[repr(k)[:40] for k, _ in BAD])
def test_bad_input_is_refused_with_a_clear_message_and_no_traceback(served, capfd, kwargs, message):
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        generate(client, **kwargs)
    assert excinfo.typename == "AppError", error_text(excinfo)
    assert re.search(message, error_text(excinfo)), error_text(excinfo)
    assert not run_dirs(runs), "a refused request must not leave a run folder"
    assert "Traceback" not in capfd.readouterr().err


def test_compare_refuses_seeds_past_the_range_without_a_traceback(served, capfd):
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        client.predict(seed=2**31 - 1, api_name="/compare")
    assert "seed + n_seeds − 1 must stay ≤ 2147483647" in error_text(excinfo)
    with pytest.raises(Exception) as excinfo:
        client.predict(n_seeds=9, api_name="/compare")
    assert "n_seeds must be an integer between 1 and" in error_text(excinfo)
    with pytest.raises(Exception) as excinfo:
        client.predict(methods=["cfd", "nerf"], api_name="/compare")
    assert "methods must be one of" in error_text(excinfo)
    assert "Traceback" not in capfd.readouterr().err
    # the last seed itself is fine
    gallery, table, status = client.predict(seed=2**31 - 1, n_seeds=1, methods=["cfd"], steps=10,
                                            api_name="/compare")
    assert status.startswith("**Done**") and "| cfd | 2147483647 |" in table, table
    assert "Traceback" not in capfd.readouterr().err


def test_the_picture_comes_first_then_each_video_and_the_last_output_has_everything(served):
    """/generate yields the viewer PLY and its status as soon as the loop ends,
    then each video as it is written; its last output (what predict returns)
    holds every file."""
    app, client, runs = served
    job = client.submit(prompt="a toy", seed=1, steps=FEW_STEPS, api_name="/generate")
    final = job.result(timeout=120)
    shown = [dict(zip(API_OUTPUTS, out)) for out in job.outputs()
             if any(not isinstance(v, dict) or v.get("__type__") != "update" for v in out)]
    picture = shown[0]
    assert picture["status"].startswith("**Distilled**") and Path(picture["viewer_ply"]).is_file()
    assert all(picture[k] == {"__type__": "update"} for k in ("render_video", "noise_video", "downloads"))
    videos = [k for out in shown[1:-1] for k in ("render_video", "noise_video") if isinstance(out[k], str)]
    assert sorted(videos) == ["noise_video", "render_video"], shown
    assert final[5].startswith("**Done**") and all(isinstance(v, (str, dict, list)) for v in final)
    assert Path(final[1]).is_file() and Path(final[2]).is_file() and len(final[4]) == 5


def test_sd_alone_is_a_complete_request_refused_for_its_missing_weights(served):
    """backend="sd" with every other parameter left out passes validation (SD's
    own defaults: res 512, its prompt …) and is refused for the weights only."""
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        client.predict(backend="sd", api_name="/generate")
    text = error_text(excinfo)
    assert "Stable Diffusion weights" in text and "not available" in text, text
    assert "Fix:" in text and "CFD_MODEL" in text and "hf download" in text, text
    assert "exact prior" in text, text
    assert wait_until(lambda: not run_dirs(runs), 30)
    # the app stays usable on the exact prior
    ply, *_ = generate(client, steps=10, seed=3)
    assert Path(ply).is_file()


def test_sd_backend_runs_when_weights_exist(served, random_sd_model, monkeypatch):
    """With weights (a tiny random SD pipeline in diffusers layout) the SD backend
    loads through the same code path and a run completes."""
    app, client, runs = served
    monkeypatch.setenv("CFD_MODEL", str(random_sd_model))
    ply, render_mp4, noise_mp4, summary, downloads, status = generate(
        client, backend="sd", prompt="a DSLR photo of a corgi", res=64, steps=10, guidance_scale=7.5)
    assert summary["backend"] == "sd" and summary["guidance_scale"] == 7.5
    assert "Stable Diffusion" in summary["guidance"] and summary["prompt"] == "a DSLR photo of a corgi"
    assert summary["config"]["res"] == 64 and summary["steps_done"] == 10
    assert summary["negative_prompt"] and summary["views"] == 1   # SD's own defaults
    assert INRIA_FIELDS <= set(PlyData.read(ply)["vertex"].data.dtype.names)
    assert wait_until(lambda: not run_dirs(runs), 30)


def test_tiny_sd_backend_runs_the_sd_path_with_its_own_defaults(served):
    """backend="tiny-sd": the bundled miniature SD through the same guidance code,
    its own defaults (64 px, empty negative prompt), the nearest bundled variant named."""
    app, client, runs = served
    ply, render_mp4, noise_mp4, summary, downloads, status = generate(client, backend="tiny-sd", prompt=None,
                                                                      steps=10)
    assert summary["backend"] == "tiny-sd" and summary["guidance"] == "tiny-sd"
    assert summary["prompt"] == "a rubber duck" and summary["negative_prompt"] == ""
    assert summary["config"]["res"] == 64 and summary["steps_done"] == 10
    assert summary["nearest"] and summary["nearest_family"], summary
    assert INRIA_FIELDS <= set(PlyData.read(ply)["vertex"].data.dtype.names)
    assert wait_until(lambda: not run_dirs(runs), 30)


# --------------------------------------------------------------------- a full run

def test_exact_prior_run_follows_the_prompt_and_returns_its_files(served):
    app, client, runs = served
    t0 = time.perf_counter()
    ply, render_mp4, noise_mp4, summary, downloads, status = generate(client, prompt="a rubber duck", seed=0,
                                                                      guidance_scale=9, negative_prompt="rocket")
    seconds = time.perf_counter() - t0

    vertex = PlyData.read(ply)["vertex"]
    assert INRIA_FIELDS <= set(vertex.data.dtype.names)
    assert vertex.count == summary["n_splats"] > 0
    for video in (render_mp4, noise_mp4):
        frames = np.stack(list(iio.imiter(video)))
        assert frames.shape[0] >= 24 and frames.shape[-1] == 3, frames.shape
        assert frames.std() > 1.0  # not a blank video

    names = sorted(Path(p).name for p in downloads)
    assert names == sorted(f"cfd_cfd_seed0_{n}" for n in
                           ("scene.ply", "scene.glb", "render.mp4", "noise.mp4", "run.json")), names
    assert next(Path(p) for p in downloads if p.endswith(".glb")).read_bytes()[:4] == b"glTF"
    run_json = json.loads(next(Path(p) for p in downloads if p.endswith("run.json")).read_text())
    assert run_json["nearest_psnr"] == summary["nearest_psnr"]

    # the prompt, negative prompt and CFG travel into the run on the exact backend too
    assert summary["prompt"] == "a rubber duck" and summary["negative_prompt"] == "rocket"
    assert summary["config"]["guidance_scale"] == 9 and summary["config"]["batch_views"] == 4
    assert summary["nearest_family"] == "rubber duck", summary["psnr"]
    assert summary["method"] == "cfd" and summary["seed"] == 0 and summary["steps_done"] == FEW_STEPS
    assert summary["cancelled"] is False and summary["backend"] == "exact"
    assert set(summary["timings_s"]) >= {"distill", "render_video", "noise_video", "glb", "total"}
    assert status.startswith("**Done**") and "rubber duck" in status, status
    # the per-request temp folder is gone once the outputs are delivered
    assert wait_until(lambda: not run_dirs(runs), 30), run_dirs(runs)
    print(f"\nexact prior, {FEW_STEPS} steps: {seconds:.1f} s through the API; timings {summary['timings_s']}")


def test_one_psnr_measure_in_generate_compare_and_the_cli(served, tmp_path):
    """The same scene gets the same PSNR from /generate, /compare and the CLI's run.json."""
    from cfd.cli import main as cli_main

    app, client, runs = served
    kwargs = dict(prompt="a toy", seed=4, steps=20, res=24, views=2)
    *_, summary, _, _ = generate(client, **kwargs)
    _, table, _ = client.predict(n_seeds=1, methods=["cfd"], api_name="/compare", **kwargs)
    row = next(line for line in table.splitlines() if line.startswith("| cfd | 4 |"))
    assert f"| {summary['nearest']} | {summary['nearest_family']} | {summary['nearest_psnr']:.1f} |" in row, \
        (row, summary["nearest_psnr"])
    out = tmp_path / "cli"
    assert cli_main(["generate", "--prompt", "a toy", "--seed", "4", "--steps", "20", "--res", "24", "--views", "2",
                     "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["nearest_psnr"] == summary["nearest_psnr"] and run["psnr"] == summary["psnr"]


def test_compare_shows_each_seed_with_its_nearest_object(served):
    app, client, runs = served
    gallery, table, status = client.predict(prompt="a toy", seed=0, steps=20, n_seeds=2, methods=["cfd", "sds"],
                                            api_name="/compare")
    assert len(gallery) == 4
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("cfd · seed 0 · ") and captions[2].startswith("sds · seed 0 · "), captions
    variants = set(app.backends.exact_prior().names)
    assert all(any(name in c for name in variants) and c.endswith(" dB") for c in captions), captions
    for item in gallery:  # a small orbit loop per seed
        frames = iio.imread(item["image"], index=None)
        assert Path(item["image"]).suffix == ".gif" and frames.shape[0] > 1, frames.shape
    assert "| cfd | 1 |" in table and '"a toy": **cfd** found' in table and "**sds** found" in table, table
    assert status.startswith("**Done**"), status
    assert wait_until(lambda: not run_dirs(runs), 30)


# --------------------------------------------------------------------- cancel and failures

def _wait_running(app, runs, session: str | None = None) -> None:
    assert wait_until(lambda: run_dirs(runs) and (session is None or app.RUNNER.runs(session)), 60), \
        "the run never started"
    time.sleep(1.0)  # let it take a few steps


def test_stop_cancels_this_session_only(served):
    """Stop stops the session's run at the next step: the run ends with a clean
    "cancelled" and its temp folder is removed. A Stop without a session stops nothing."""
    app, client, runs = served
    job = client.submit(prompt="a toy", seed=5, steps=3000, api_name="/generate")
    _wait_running(app, runs, client.session_hash)
    assert app.RUNNER.stop(None) == 0 and app.RUNNER.stop("another-session") == 0
    assert app.RUNNER.stop(client.session_hash) == 1
    ply, render_mp4, noise_mp4, summary, downloads, status = job.result(timeout=60)
    assert ply is None and render_mp4 is None and downloads is None
    assert summary["cancelled"] is True and 0 < summary["steps_done"] < 3000
    assert status.startswith("**Cancelled**"), status
    assert wait_until(lambda: not run_dirs(runs), 30), run_dirs(runs)
    assert wait_until(lambda: not app.RUNNER.runs(), 10)


def test_client_cancel_stops_the_run_and_removes_its_folder(served):
    app, client, runs = served
    job = client.submit(prompt="a toy", seed=6, steps=3000, api_name="/generate")
    _wait_running(app, runs)
    job.cancel()
    assert wait_until(lambda: not run_dirs(runs), 60), run_dirs(runs)
    assert wait_until(lambda: not app.RUNNER.runs(), 30)
    assert wait_until(lambda: not any(t.name == "cfd-run" and t.is_alive() for t in threading.enumerate()), 30)
    # the queue is free again
    ply, *_ = generate(client, steps=10, seed=7)
    assert Path(ply).is_file()


def test_work_over_the_budget_is_refused_before_it_is_queued(served):
    """/generate and /compare refuse a request beyond CFD_MAX_WORK (24 default runs)
    when it is sent, with the budget and the fix; nothing runs, no folder is made."""
    app, client, runs = served
    with pytest.raises(Exception) as excinfo:
        generate(client, steps=3000, views=8, res=128)
    assert excinfo.typename == "ValidationError", error_text(excinfo)
    assert re.search(r"steps: this request asks for 120× the work of a default run .* allows 24× per request\. "
                     r"Fix: fewer steps or views", error_text(excinfo)), error_text(excinfo)
    with pytest.raises(Exception) as excinfo:
        client.predict(steps=3000, n_seeds=4, methods=["cfd", "sds"], api_name="/compare")
    assert "asks for 120× the work" in error_text(excinfo), error_text(excinfo)
    assert not run_dirs(runs) and not app.RUNNER.runs()


def test_a_session_queues_one_request_at_a_time(served, tmp_path):
    """While a session's request runs, a second one of that session is refused at
    once; another session still runs; Stop frees the place."""
    app, client, runs = served
    other = Client(client.src, verbose=False, download_files=str(tmp_path))
    try:
        job = client.submit(prompt="a toy", seed=5, steps=3000, api_name="/generate")
        _wait_running(app, runs, client.session_hash)
        with pytest.raises(Exception) as excinfo:
            generate(client, steps=10)
        assert "prompt: this session already has a request queued or running" in error_text(excinfo)
        queued = other.submit(prompt="a toy", seed=2, steps=10, api_name="/generate")   # admitted: it waits
        app.RUNNER.stop(client.session_hash)
        job.result(timeout=60)
        assert Path(queued.result(timeout=120)[0]).is_file()
        ply, *_ = generate(client, steps=10, seed=3)
        assert Path(ply).is_file()
    finally:
        other.close()


def test_a_run_past_the_time_limit_keeps_its_result(served, monkeypatch):
    app, client, runs = served
    monkeypatch.setattr(app.RUNNER, "time_limit_s", 0.0)
    ply, render_mp4, noise_mp4, summary, downloads, status = generate(client, steps=200)
    assert summary["stopped_by"] == "time limit" and summary["steps_done"] == 1 and not summary["cancelled"]
    assert Path(ply).is_file() and Path(render_mp4).is_file()
    assert "stopped by the time limit** after 1/200 steps" in status, status


@pytest.fixture(params=["this process", "a worker"])
def failing_generate(request, served, monkeypatch):
    """fail(raiser): make the app's generations fail with ``raiser`` (the source
    of a function ``fail(*args, **kwargs)`` that raises) where they run: in the
    app's process, or in worker processes whose ``pipeline.generate`` is it."""
    import sys

    from cfd.workers import WorkerPool

    app = served[0]
    pools = []

    def fail(raiser: str) -> None:
        if request.param == "this process":
            namespace = {"torch": torch}
            exec(raiser, namespace)
            monkeypatch.setattr("cfd.pipeline.generate", namespace["fail"])
            monkeypatch.setattr(app.RUNNER.workers, "size", 1)   # every run in the app's process
            return
        code = f"import torch\nimport cfd.pipeline\n{raiser}\ncfd.pipeline.generate = fail\n" \
               "from cfd.workers import main\nmain()"
        pools.append(WorkerPool(2, command=[sys.executable, "-c", code]))
        monkeypatch.setattr(app.RUNNER, "workers", pools[-1])

    yield fail
    for pool in pools:
        pool.close()


def test_out_of_memory_suggests_a_lower_resolution(served, failing_generate):
    app, client, runs = served
    failing_generate("def fail(*args, **kwargs):\n"
                     "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n")
    with pytest.raises(Exception) as excinfo:
        generate(client, res=64)
    text = error_text(excinfo)
    assert "Out of memory at res=64" in text and "lower resolution (e.g. res=32)" in text, text
    assert wait_until(lambda: not run_dirs(runs), 30)


def test_unexpected_failure_is_a_clear_error_and_leaves_nothing(served, failing_generate, capfd):
    app, client, runs = served
    failing_generate("def fail(*args, **kwargs):\n    raise RuntimeError('renderer exploded')\n")
    with pytest.raises(Exception) as excinfo:
        generate(client)
    text = error_text(excinfo)
    incident = re.search(r"An internal error stopped the run \(incident ([0-9a-f]{8})\); nothing was saved", text)
    assert incident and "renderer exploded" not in text and "Traceback" not in text, text   # no internals shown
    log = capfd.readouterr().err
    assert f"internal error {incident.group(1)}" in log and "renderer exploded" in log   # the log has them
    assert wait_until(lambda: not run_dirs(runs), 30)


def test_the_rest_route_that_skips_the_queue_is_closed(served):
    """POST /gradio_api/run/generate would skip the queue and its admission: it
    is refused, and nothing runs."""
    import httpx

    app, client, runs = served
    response = httpx.post(f"{client.src}gradio_api/run/generate", json={"data": [None] * 14}, timeout=30)
    assert response.status_code >= 400 and not run_dirs(runs) and not app.RUNNER.runs(), response.text


def test_a_request_whose_validator_did_not_run_is_admitted_by_its_handler(served, monkeypatch):
    app, client, runs = served
    monkeypatch.setattr(app, "_refusal", lambda *args: (None, ""))   # as if the validator were skipped
    with pytest.raises(Exception) as excinfo:
        generate(client, steps=3000, views=8, res=128)
    assert "asks for 120× the work of a default run" in error_text(excinfo), error_text(excinfo)
    assert not run_dirs(runs) and not app.RUNNER._tickets


def test_one_address_holds_at_most_its_places_whatever_its_sessions(served, monkeypatch, tmp_path):
    """CFD_MAX_PER_CLIENT per address (behind a trusted proxy: the first of
    X-Forwarded-For); new session hashes from one address do not add places."""
    app, client, runs = served
    monkeypatch.setenv("CFD_TRUST_FORWARDED", "1")
    monkeypatch.setattr(app.RUNNER, "max_per_client", 1)
    same = [Client(client.src, verbose=False, download_files=str(tmp_path), headers={"X-Forwarded-For": "192.0.2.9"})
            for _ in range(2)]
    other = Client(client.src, verbose=False, download_files=str(tmp_path), headers={"X-Forwarded-For": "192.0.2.10"})
    try:
        job = same[0].submit(prompt="a toy", seed=5, steps=3000, api_name="/generate")
        _wait_running(app, runs, same[0].session_hash)
        with pytest.raises(Exception) as excinfo:
            generate(same[1], steps=10)
        assert "prompt: your address already has 1 request(s) queued or running" in error_text(excinfo)
        queued = other.submit(prompt="a toy", seed=2, steps=10, api_name="/generate")   # another address: admitted
        app.RUNNER.stop(same[0].session_hash)
        job.result(timeout=60)
        assert Path(queued.result(timeout=120)[0]).is_file()
        assert Path(generate(same[1], steps=10)[0]).is_file()   # the stopped request's place is free
    finally:
        for c in (*same, other):
            c.close()


# --------------------------------------------------------------------- settings

def test_launch_settings_respect_gradio_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    import app

    kwargs = app.launch_kwargs()
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["server_port"] == 7999
    assert kwargs["allowed_paths"] == [str(app.RUNNER.root)]
    assert "#model3d canvas" in kwargs["css"] and "#ffffff" in kwargs["css"]
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    assert "server_name" not in app.launch_kwargs() and "server_port" not in app.launch_kwargs()


def test_a_process_that_starts_the_app_and_exits_at_once_exits_cleanly(tmp_path):
    """The start-up warm-up renders in a thread; exiting during it must not abort
    the interpreter mid torch op ('terminate called …', exit status 134)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CFD_RUNS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", "import app; app.start()"], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
    assert (tmp_path / "cfd-runs" / ".cfd-runs").is_file()


def test_importing_the_app_builds_the_ui_and_starts_nothing(tmp_path):
    """``import app`` gives the Space its ``demo`` but starts no thread, no worker
    process and makes no folder: ``start()`` (``python app.py``) does that."""
    import os
    import subprocess
    import sys

    probe = ("import threading, app; "
             "print(sorted(t.name for t in threading.enumerate()), app.RUNNER, type(app.demo).__name__)")
    env = {**os.environ, "CFD_RUNS_DIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['MainThread'] None Blocks", done.stdout
    assert not (tmp_path / "runs").exists()

