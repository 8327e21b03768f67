"""What the benchmarks share: timing, the environment line, JSON out, a scene to
time, and the options that tell tiny-sd's UNet of the view (recipe, samples)."""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ..gaussians import init_scene
from ..guidance.stable_diffusion import CAMERA_INPUTS

FAMILY_PROMPTS = ("a snowman,a mushroom,a rubber duck,a toy rocket,a cactus in a pot,a small tree in a pot,"
                  "sunflowers in a pot,tulips in a pot")
ASYMMETRIC_FAMILIES = ("rubber duck", "rocket", "snowman")   # a front and a back that differ: Janus shows


def sync() -> None:
    """Wait for queued CUDA work (no-op without CUDA), so wall time covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


class PhaseTimer:
    """``timer(name)`` context managers that add up wall time per phase (ms),
    synchronising CUDA so GPU work is charged to the phase that queued it."""

    def __init__(self):
        self.total: dict[str, float] = {}

    def __call__(self, name: str):
        @contextlib.contextmanager
        def phase():
            sync()
            t0 = time.perf_counter()
            yield
            sync()
            self.total[name] = self.total.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

        return phase()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict:
    """What a result was measured on: torch, threads, Python, machine, device."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def write_result(result: dict, path: Path | None) -> None:
    """Print ``result`` as JSON, and write it to ``path`` too if given."""
    text = json.dumps(result, indent=2)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)


def bench_scene(n: int, seed: int = 0):
    """A benchmark scene: ``n`` splats in a ball of radius 0.6, sizes 0.005–0.035."""
    scene = init_scene(n, seed=seed, radius=0.6, opacity=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    scene.log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.005)
    return scene


def prompt_list(text: str) -> list[str]:
    """``--prompts``: comma-separated, blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


def model_input_options(p: argparse.ArgumentParser) -> None:
    """What the model is told of the view: ``--camera-input``, ``--camera-scale``, ``--view-suffix``."""
    p.add_argument("--camera-input", choices=CAMERA_INPUTS, default="guided",
                   help="what the UNet is told of the camera per CFG branch (see CAMERA_INPUTS)")
    p.add_argument("--camera-scale", type=_camera_scale, default="backend",
                   help="the camera's own CFG scale with --camera-input guided, or 'cfg' (the CFG scale); "
                        "default: the backend's")
    p.add_argument("--view-suffix", choices=["on", "off"], default="on")


def _camera_scale(text: str):
    """``--camera-scale``: a number, 'cfg' (None: the CFG scale) or 'backend' (keep it)."""
    return text if text == "backend" else None if text == "cfg" else float(text)


def prepare_tiny_sd(args, prompt: str):
    """The backend's guidance for ``prompt``, told of the view as
    ``model_input_options`` asked."""
    from ..backends import prepare
    from ..request import parse_request

    guidance = prepare(parse_request(backend=args.backend, prompt=prompt))
    guidance.camera_input, guidance.view_dependent = args.camera_input, args.view_suffix == "on"
    if args.camera_scale != "backend":
        guidance.camera_scale = args.camera_scale
    return guidance
