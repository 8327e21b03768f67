"""The README says what the app and the CLI do: commands that run, the UI's own
names, the request layer's defaults. (Its API paragraph is checked against the
running app in test_app.py.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from cfd import params
from cfd.cli_options import request_from_args

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_commands_use_the_venv_python():
    """`python -m cfd` fails with the system python: every command names the venv's."""
    for line in bash_lines():
        words = shlex.split(line)
        assert "python" not in words and "python3" not in words, line
        if any(w.endswith("python") for w in words):
            assert ".venv/bin/python" in words, line


def test_cli_examples_are_valid_requests():
    from cfd.cli import build_parser

    examples = [line for line in bash_lines() if " -m cfd generate" in line]
    assert examples
    for line in examples:
        args = build_parser().parse_args(shlex.split(line.split(" -m cfd ", 1)[1]))
        request_from_args(args)   # raises RequestError for a value the app would refuse


def test_batch_examples_are_valid_batches(monkeypatch):
    """Every README command that runs ``-m cfd batch`` (plain or under a launcher) parses into a batch."""
    from cfd.batch import _parse
    from cfd.cli import build_parser

    lines = [line for line in bash_lines() if " -m cfd batch " in line]
    assert len(lines) >= 6 and any("accelerate launch" in line for line in lines)
    assert any("--nnodes 2" in line for line in lines) and any("--num_machines 2" in line for line in lines)
    monkeypatch.chdir(ROOT)   # the examples name assets/prompts.txt
    for line in lines:
        args = build_parser().parse_args(shlex.split(line.split(" -m cfd ", 1)[1]))
        prompts, seeds, methods, _ = _parse(args)
        assert prompts and seeds == list(range(8)) and methods, line


def test_names_match_the_ui():
    import app

    labels = {getattr(b, "label", None) for b in app.demo.blocks.values()} | \
        {getattr(b, "value", None) for b in app.demo.blocks.values() if type(b).__name__ == "Button"}
    for name in ("Compare seeds", "Result", "Generate", "Stop", "This session's results"):
        assert name in README, name
        assert any(name in str(label) for label in labels if label), name
    assert "Seed comparison" not in README


def test_defaults_table_is_the_request_layers():
    from cfd.guidance.exact_prior import DEFAULT_EXACT_GUIDANCE_SCALE
    from cfd.guidance.stable_diffusion import DEFAULT_GUIDANCE_SCALE

    exact, tiny, sd = params.defaults("exact", cuda=False), params.defaults("tiny-sd"), params.defaults("sd")
    base_exact, base_tiny, base_sd = params.base_config("exact"), params.base_config("tiny-sd"), params.base_config("sd")
    assert (exact["guidance_scale"], sd["guidance_scale"]) == (DEFAULT_EXACT_GUIDANCE_SCALE, DEFAULT_GUIDANCE_SCALE)
    rows = {
        "guidance_scale": f"| guidance_scale | {exact['guidance_scale']} | {tiny['guidance_scale']} | "
                          f"{sd['guidance_scale']} |",
        "steps": f"| steps | {exact['steps']} | {tiny['steps']} | {sd['steps']} |",
        "res": f"| res | {exact['res']} ({params.EXACT_CUDA_RES} on a GPU) | {tiny['res']} (its training size) | "
               f"{sd['res']} |",
        "views": f"| views | {exact['views']} | {tiny['views']} | {sd['views']} |",
        "t": f"| t_start → t_end | {exact['t_start']} → {exact['t_end']} | {tiny['t_start']} → {tiny['t_end']} | "
             f"{sd['t_start']} → {sd['t_end']} (the authors' knots, through {base_sd.t_knots[1][1]} and "
             f"{base_sd.t_knots[2][1]}) |",
        "gamma": "| gamma (cfd-sde) | " + " | ".join(
            [f"the authors' schedule, {base_sd.gamma[0][1]} → {base_sd.gamma[-1][1]}"] * 3) + " |",
        "densify": f"| densify_every | {base_exact.densify_every}: off (a fixed {base_exact.init_splats} splats) | "
                   f"{base_tiny.densify_every}: off (a fixed {base_tiny.init_splats} splats) | every 10 % of the run |",
        "prompt": f"| prompt | `{exact['prompt']}` | `{tiny['prompt']}` | `{sd['prompt']}` |",
    }
    assert base_sd.densify_every == base_sd.steps // 10
    assert base_exact.gamma == base_tiny.gamma == base_sd.gamma   # one γ schedule, over the run's progress
    for name, row in rows.items():
        assert row in README, (name, row)


def test_viewer_ply_is_said_to_be_a_half_scale_copy():
    from cfd.framing import VIEWER_SCALE

    assert VIEWER_SCALE == 0.5 and "half-scale" in README and "viewer.ply" in README
