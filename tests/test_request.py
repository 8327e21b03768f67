"""cfd.request: one set of ranges, defaults and messages for the app and the CLI."""
from __future__ import annotations

import pytest

from cfd import backends, params
from cfd import request as rq
from cfd.cli_options import request_from_args
from cfd.cli import build_parser, main as cli_main


def cli_request(*argv: str) -> rq.Request:
    return request_from_args(build_parser().parse_args(["generate", *argv]))


def test_every_parameter_has_a_per_backend_default():
    exact, sd = rq.parse_request(), rq.parse_request(backend="sd")
    assert (exact.backend, exact.steps, exact.res, exact.views) == ("exact", 200, 64 if not params.cuda_available()
                                                                    else params.EXACT_CUDA_RES, 4)
    assert exact.guidance_scale == params.EXACT_DEFAULTS.guidance_scale and exact.prompt == "a toy"
    assert (sd.steps, sd.res, sd.views, sd.guidance_scale) == (1000, 512, 1, params.SD_DEFAULTS.guidance_scale)
    assert sd.negative_prompt == params.SD_DEFAULTS.negative_prompt and sd.prompt
    assert sd.t_end > exact.t_end and exact.gamma is None and exact.densify_every is None
    # None means "the default", explicitly given values win
    assert rq.parse_request(steps=None, backend="sd").steps == 1000
    assert rq.parse_request(backend="sd", steps="20", res=64).steps == 20
    assert params.defaults("exact", cuda=True)["res"] == params.EXACT_CUDA_RES
    assert params.defaults("exact", cuda=False)["res"] == params.EXACT_DEFAULTS.res


def test_request_round_trips_through_plain_values_and_builds_the_config():
    req = rq.parse_request(prompt="a rubber duck", seed="12", steps=100.0, views=2, method="cfd-sde", gamma=1e-3,
                           t_start=900, negative_prompt="rocket", guidance_scale=9)
    assert (req.seed, req.steps) == (12, 100)
    assert rq.parse_request(req.values()) == req
    config = req.config()
    assert config.method == "cfd-sde" and config.t_knots == ((0.0, 900), (1.0, 20)) and config.gamma == 1e-3
    assert (config.prompt, config.negative_prompt, config.guidance_scale) == ("a rubber duck", "rocket", 9.0)
    assert config.batch_views == 2 and config.preview_every == 0
    assert req.app_config().preview_every == params.PREVIEW_EVERY["exact"]
    sds = rq.parse_request(backend="sd", method="sds", lr_scale=2.0).config()
    base = params.base_config("sd")
    assert sds.res == 512 and sds.lr_sh == 2 * base.lr_sh
    # SDS keeps its own t range (DreamFusion's [20, 980]), not CFD's last knot, unless the user sets one
    assert sds.t_range == (20, 980) and base.t_knots[-1][1] == 212
    assert rq.parse_request(backend="sd", method="sds", t_end=100).config().t_range == (100, 980)
    # SD's UNet on a CPU uses the machine's threads; the exact prior's small ops stay on one
    assert base.cpu_threads is None and params.base_config("tiny-sd").cpu_threads is None
    assert params.base_config("exact").cpu_threads == 1
    # SD keeps its recipe unless asked: the authors' t and γ knots, densification that follows the run's length
    sd = rq.parse_request(backend="sd", steps=50).config()
    assert sd.t_knots == base.t_knots and sd.gamma == base.gamma and sd.densify_every == 5
    sd = rq.parse_request(backend="sd", t_start=900, t_end=300, gamma=0.01, densify_every=0).config()
    assert [t for _, t in sd.t_knots][::3] == [900, 300] and len(sd.t_knots) == len(base.t_knots)
    assert all(a[1] > b[1] for a, b in zip(sd.t_knots, sd.t_knots[1:])) and sd.gamma == 0.01
    assert sd.densify_every == 0
    assert req.exports.pipeline_kwargs() == {"video_frames": 48, "video_res": 256, "glb_resolution": 96,
                                             "ply_sh_degree": 0}


def test_validation_lists_every_problem_and_never_clamps():
    with pytest.raises(rq.RequestError, match=r"steps must be an integer between 10 and 3000 \(got 3001\)"):
        rq.parse_request(steps=3001)
    with pytest.raises(rq.RequestError) as excinfo:
        rq.parse_request(seed=-1, steps=5, guidance_scale=0, res=31, lr_scale=0.0, gamma=2.0, views=9)
    for name in ("seed", "steps", "guidance_scale", "res", "lr_scale", "gamma", "views"):
        assert name in str(excinfo.value)
    with pytest.raises(rq.RequestError, match="unknown parameter"):
        rq.parse_request(scene_set="toys")
    with pytest.raises(rq.RequestError, match="scenes .* exact prior"):
        rq.parse_request(backend="sd", scenes=["a.ply"])


def test_exact_prior_refuses_unknown_objects_with_what_it_knows():
    with pytest.raises(rq.RequestError) as excinfo:
        backends.prepare(rq.parse_request(prompt="a giraffe"))
    text = str(excinfo.value)
    assert "does not know 'a giraffe'" in text and backends.exact_prior().vocabulary.describe() in text
    assert backends.prepare(rq.parse_request(prompt="a plant in a pot")) is backends.exact_prior()


def test_cli_and_app_share_every_default_and_range(capsys):
    """The CLI's generate options and the app's inputs come from the request
    layer: same defaults (backend by backend), same refusals, same messages."""
    import app

    assert cli_request() == rq.parse_request()
    assert cli_request("--backend", "sd") == rq.parse_request(backend="sd")
    assert cli_request("--res", "48", "--views", "2", "--steps", "50") == rq.parse_request(res=48, views=2, steps=50)
    # the app's inputs start at the request layer's defaults
    d = params.defaults("exact")
    ui = {c.label: c.value for c in app.demo.blocks.values() if getattr(c, "label", None) and hasattr(c, "value")}
    for name in params.PARAM_NAMES:
        label = next(p.label for p in params.PARAMS if p.name == name)
        assert ui[label] == d[name], (name, ui[label], d[name])
    res_choices = next(c for c in app.demo.blocks.values() if getattr(c, "elem_id", None) == "res").choices
    assert [v for _, v in res_choices] == params.res_choices("exact")
    # one refusal, word for word
    for argv, values in [(["--res", "30"], dict(res=30)), (["--steps", "5000"], dict(steps=5000)),
                         (["--seed", "-5"], dict(seed=-5)), (["--backend", "sd", "--res", "32"], dict(backend="sd", res=32))]:
        with pytest.raises(rq.RequestError) as excinfo:
            rq.parse_request(values)
        assert cli_main(["generate", *argv, "--out", "/nonexistent/never"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {excinfo.value}"


def test_compare_request():
    base, methods, n = rq.parse_compare(prompt="a toy", methods="cfd,sds,cfd", n_seeds=2)
    assert methods == ["cfd", "sds"] and n == 2 and base.method == "cfd"
    assert rq.parse_compare()[1:] == (["cfd", "sds"], min(4, params.max_seeds()))
    with pytest.raises(rq.RequestError, match="seed \\+ n_seeds − 1 must stay ≤ 2147483647"):
        rq.parse_compare(seed=2**31 - 1, n_seeds=2)
    with pytest.raises(rq.RequestError, match="methods must be a non-empty list"):
        rq.parse_compare(methods=[])


def test_warm_up_renders_what_the_default_run_would_render_first():
    """After warm_up, the default run renders no reference view of its own."""
    from cfd.distill import distill

    backends.warm_up()
    prior = backends.exact_prior()
    cached = len(prior._cache)
    req = rq.parse_request(steps=10)
    distill(prior, req.config())
    assert len(prior._cache) == cached, "the run still rendered reference views"
