"""The README says what the app and the CLI do, for users: commands that run
as written, the UI's own names, the request layer's defaults, the settings;
at most 300 lines, the measurements in docs/ (each table with the command that
regenerates it). (Its API paragraph is checked against the running app in
test_app.py.)"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cfd import params
from cfd.cli_options import request_from_args

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 300
VENV_PYTHON = ".venv/bin/python"


def bash_lines(text: str = README) -> list[str]:
    """The commands of ``text``'s bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def all_bash_lines() -> list[tuple[str, str]]:
    """(page, command) of the README and every docs page."""
    return [(page.name, line) for page in [ROOT / "README.md", *DOCS] for line in bash_lines(page.read_text())]


def section(title: str, text: str = README) -> str:
    body = text[text.index(f"\n## {title}\n"):]
    return body[:body.find("\n## ", 4) if "\n## " in body[4:] else len(body)]


def test_the_readme_is_at_most_300_lines():
    assert len(README.splitlines()) <= MAX_LINES, len(README.splitlines())


def test_every_linked_page_exists_and_every_docs_page_is_linked():
    """Relative links of the README and the docs pages resolve; the README links every docs page."""
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (page.parent / target.split("#")[0]).exists(), (page.name, target)
    linked = set(re.findall(r"\]\(docs/([^)#\s]+)", section("Results and docs")))
    assert {page.name for page in DOCS} <= linked, {page.name for page in DOCS} - linked


def test_measurement_tables_live_in_docs_with_their_commands():
    """The README's tables are its defaults, settings and methods; every docs
    section with a table names the command that regenerates it (or says why none)."""
    readme_tables = [line for line in README.splitlines() if line.startswith("|---")]
    assert len(readme_tables) <= 3, readme_tables
    assert "PSNR (dB)" not in README and "ms per step" not in README
    command = re.compile(r"```bash|`(\.venv/bin/python |python -m cfd|bench |scripts/)|No command|"
                         r"not in the repository|Not measurements")
    for page in DOCS:
        if page.name in ("design.md", "reliability.md"):
            continue
        for part in re.split(r"\n## ", page.read_text())[1:]:
            if "\n|---" in part:
                assert command.search(part), (page.name, part.splitlines()[0])


def test_the_families_are_counted_as_they_are():
    """'each a family of N variants': N as the bundled sets hold it (twelve)."""
    counts = {len(family["variants"]) for set_json in (ROOT / "assets" / "scenes").glob("*/set.json")
              for family in json.loads(set_json.read_text())["families"]}
    assert counts == {12}, counts
    assert "family of twelve variants" in README and "8 families of 12 variants" in README
    assert "eight variants" not in README and "eight modes" not in README


def test_every_setting_has_its_line():
    from cfd.settings import SETTINGS

    rows = [line for line in section("Settings").splitlines() if line.startswith("| `")]
    names = [name for row in rows for name in re.findall(r"`([A-Z_]+)`", row.split("|")[1])]
    expected = {*SETTINGS, "GRADIO_SERVER_NAME", "CFD_MODEL", "HF_HUB_OFFLINE", "CFD_RUNS_DIR", "CFD_CPU_KERNEL",
                "CFD_KERNEL_DIR"}
    assert expected <= set(names), expected - set(names)
    assert len(names) == len(set(names)), names


def test_the_api_names_every_backend_and_method():
    from cfd.distill import METHODS

    api = section("API")
    for value in (*params.BACKENDS, *METHODS):
        assert f'"{value}"' in api, value


def test_commands_use_the_venv_python():
    """`python -m cfd` fails with the system python: every command names the venv's."""
    for page, line in all_bash_lines():
        words = shlex.split(line)
        assert "python" not in words and "python3" not in words, (page, line)
        if any(w.endswith("python") for w in words):
            assert VENV_PYTHON in words, (page, line)


def cfd_argv(line: str, module: str) -> list[str] | None:
    """The arguments after ``-m MODULE`` in a command line, or None."""
    marker = f" -m {module} "
    return shlex.split(line.split(marker, 1)[1]) if marker in line else None


def test_every_cfd_and_bench_command_parses():
    """Every `-m cfd …` and `-m cfd.bench …` line of the README and the docs
    is accepted by the CLI's own parser as written."""
    from cfd.bench import parser as bench_parser
    from cfd.cli import build_parser

    seen = {"cfd": 0, "cfd.bench": 0}
    for page, line in all_bash_lines():
        for module, make in (("cfd", build_parser), ("cfd.bench", bench_parser)):
            argv = cfd_argv(line, module)
            if argv is None or "--help" in argv:
                continue
            make().parse_args(argv)
            seen[module] += 1
    assert seen["cfd"] >= 10 and seen["cfd.bench"] >= 10, seen


def test_scripts_the_commands_name_exist():
    """Every `scripts/…` a command runs exists; tiny_sd_recipes.sh knows every group it is given."""
    recipes = (ROOT / "scripts" / "tiny_sd_recipes.sh").read_text()
    groups = set(re.findall(r"^    ([a-z]+)\)", recipes, flags=re.M))
    for page, line in all_bash_lines():
        for script in re.findall(r"(?:^|\s)(scripts/[\w.]+)", line):
            assert (ROOT / script).is_file(), (page, line)
        if "tiny_sd_recipes.sh" in line:
            asked = line.split("tiny_sd_recipes.sh", 1)[1].split()[1:]
            assert asked and set(asked) <= groups, (page, line, groups)


def test_cli_examples_are_valid_requests():
    from cfd.cli import build_parser

    examples = [line for line in bash_lines() if " -m cfd generate" in line and "--help" not in line]
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


def quick(line: str) -> bool:
    """A README command cheap enough to run here: `--help`, a generate on the
    exact prior of at most 20 steps, or a render of a PLY such a run made."""
    argv = cfd_argv(line, "cfd")
    if argv is None or not line.startswith(VENV_PYTHON + " -m cfd "):
        return False
    if "--help" in argv:
        return True
    if argv[0] == "generate":
        steps = option(argv, "--steps") or ""
        return steps.isdigit() and int(steps) <= 20 and option(argv, "--backend") in (None, "exact")
    return argv[0] == "render"


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_the_quick_commands_run_as_written(tmp_path):
    """The README's cheap commands, as written, in a folder like a fresh clone's
    root (its `assets/`), with the venv's python: exit 0 and their files."""
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    made: set[str] = set()
    ran = []
    for line in bash_lines():
        if not quick(line):
            continue
        argv = cfd_argv(line, "cfd")
        if argv[0] == "render" and argv[1] not in made:
            continue   # renders a run too long to make here
        words = shlex.split(line)
        words[0] = sys.executable   # .venv/bin/python, as the test suite runs under it
        result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, (line, result.stderr[-2000:])
        if "--help" in argv:
            assert "usage: python -m cfd" in result.stdout, line
        elif argv[0] == "generate":
            out = option(argv, "--out")
            for name in ("scene.ply", "viewer.ply", "run.json"):
                assert (tmp_path / out / name).is_file(), (line, name)
            made.add(str(Path(out) / "scene.ply"))
        else:
            assert (tmp_path / option(argv, "--out")).is_file(), line
        ran.append(argv[0] if "--help" not in argv else "help")
    assert {"generate", "render", "help"} <= set(ran), ran
