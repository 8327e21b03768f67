"""The examples' results (CFD_EXAMPLE_CACHE=1): made ahead or by a first click,
kept in gradio's example cache under a folder keyed by what a result depends
on. Its own servers (the app's module state is one engine at a time)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
from conftest import served_app  # noqa: E402


def test_an_examples_result_is_made_once_ahead_and_kept_until_the_code_or_a_model_changes(tmp_path, monkeypatch):
    """CFD_EXAMPLE_CACHE=1: the exact prior's examples are made ahead in the
    background (``prefill_examples``), kept in gradio's example cache under a
    folder keyed by ``results_fingerprint``; a click then shows the result at
    once; another fingerprint (new code or model) is another folder."""
    import app as app_module
    from cfd import backends

    monkeypatch.setattr(app_module, "_examples",
                        lambda kind: [["a rubber duck", "exact", "cfd", 4]] if kind == "exact" else [])
    cache = tmp_path / "examples"
    with served_app(tmp_path / "runs", CFD_EXAMPLE_CACHE="1", GRADIO_EXAMPLES_CACHE=str(cache)) as (app, url, demo):
        examples = demo.cfd_examples["exact"]
        assert Path(examples.cached_folder).parent == cache / f"cfd-{backends.results_fingerprint()}"
        app.prefill_examples(demo).join(timeout=120)
        start = time.monotonic()
        image, viewer, glb, render_mp4, noise_mp4, downloads, summary, status = examples.load_from_cache(0)
        assert status.startswith("**Example**") and "seed 4" in status and summary["seed"] == 4
        assert Path(viewer.path).is_file() and Path(viewer.path).is_relative_to(examples.cached_folder)
        made = [p for p in Path(examples.cached_folder).rglob("*") if p.suffix in (".ply", ".mp4", ".glb")]
        assert {p.suffix for p in made} == {".ply", ".mp4", ".glb"}
    monkeypatch.setattr(backends, "results_fingerprint", lambda: "0123456789abcdef")
    with served_app(tmp_path / "runs2", CFD_EXAMPLE_CACHE="1", GRADIO_EXAMPLES_CACHE=str(cache)) as (_, _, demo):
        folder = Path(demo.cfd_examples["exact"].cached_folder)
        assert folder.parent == cache / "cfd-0123456789abcdef" and not folder.exists()   # made anew when clicked
