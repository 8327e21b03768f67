"""CFD_CONCURRENCY=2: two clients run at the same time (really, not one after the
other in the queue), each gets its own files, and Stop in one session leaves
the other running."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from plyfile import PlyData

pytest.importorskip("gradio_client")
from conftest import served_app  # noqa: E402
from gradio_client import Client  # noqa: E402


def test_two_clients_run_at_once_and_stop_is_per_session(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs2")
    with served_app(runs, CFD_CONCURRENCY="2") as (app, url, _):
        downloads = str(tmp_path_factory.mktemp("dl2"))
        a, b, c = (Client(url, verbose=False, download_files=downloads) for _ in range(3))
        try:
            job_a = a.submit(prompt="a rubber duck", method="cfd", seed=1, steps=40, api_name="/generate")
            job_b = b.submit(prompt="a plant in a pot", method="sds", seed=2, steps=40, api_name="/generate")
            # both are running at the same moment, each in its own folder
            peak = 0
            end = time.monotonic() + 120
            while time.monotonic() < end and not (job_a.done() and job_b.done()):
                peak = max(peak, len({r.key for r in app.RUNNER.runs()}))
                if peak == 2:
                    break
                time.sleep(0.05)
            assert peak == 2, "the two requests never ran at the same time"
            (ply1, vid1, _, sum1, dl1, _), (ply2, vid2, _, sum2, dl2, _) = job_a.result(300), job_b.result(300)
            assert (sum1["prompt"], sum1["method"], sum1["seed"]) == ("a rubber duck", "cfd", 1)
            assert (sum2["prompt"], sum2["method"], sum2["seed"]) == ("a plant in a pot", "sds", 2)
            assert ply1 != ply2 and vid1 != vid2 and not set(dl1) & set(dl2)
            assert Path(ply1).read_bytes() != Path(ply2).read_bytes()
            for ply in (ply1, ply2):
                assert PlyData.read(ply)["vertex"].count > 0

            # Stop in one session: its run ends cancelled, the other one finishes
            long_run = a.submit(prompt="a toy", seed=3, steps=3000, api_name="/generate")
            other = c.submit(prompt="a snowman", seed=4, steps=60, api_name="/generate")
            end = time.monotonic() + 60
            while time.monotonic() < end and not (app.RUNNER.runs(a.session_hash) and app.RUNNER.runs(c.session_hash)):
                time.sleep(0.05)
            assert app.RUNNER.runs(a.session_hash) and app.RUNNER.runs(c.session_hash)
            assert app.RUNNER.stop(a.session_hash) == 1
            *_, summary, _, status = long_run.result(60)
            assert summary["cancelled"] is True and status.startswith("**Cancelled**")
            ply, *_, summary, _, status = other.result(300)
            assert status.startswith("**Done**") and summary["steps_done"] == 60 and Path(ply).is_file()
        finally:
            for client in (a, b, c):
                client.close()
