"""One generation into a folder: distil, then export every artefact.

``generate(guidance, config, out_dir)`` runs ``cfd.distill.distill`` and writes

    out_dir/scene.ply     the splats, INRIA layout, full SH (``gaussians.save_ply``)
    out_dir/viewer.ply    the PLY for a gsplat.js viewer / gr.Model3D (``export.save_viewer_ply``)
    out_dir/render.mp4    orbit render video (H.264, ``export.orbit_video``)
    out_dir/noise.mp4     render | the noise the run added, along the same orbit (``export.noise_frames``)
    out_dir/scene.glb     marching-cubes mesh of the splats' density (``export.export_glb``)
    out_dir/preview.png   the preview view of the final scene (only when ``preview_res`` is given)
    out_dir/run.json      config, condition used, seed, method, timings, versions, n_splats,
                          skipped_steps, cancelled flag, …

Atomic: everything is written into a hidden staging folder next to ``out_dir``
and moved into place only when the run has finished; a failed or cancelled run
leaves nothing behind (unless ``keep_partial`` asks for the partial scene's
artefacts). Used by the app and the CLI; nothing here imports gradio.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .distill import DistillConfig, StepInfo, distill, noise_grid, noise_source, preview, run_threads
from .export import PARTIAL_FILE, atomic_path
from .gaussians import GaussianScene, save_ply

__all__ = ["ARTEFACTS", "generate", "nearest_reference", "versions", "config_dict", "write_json"]

ARTEFACTS = {  # key in the result's "files" → file name in out_dir
    "scene_ply": "scene.ply",
    "viewer_ply": "viewer.ply",
    "render_mp4": "render.mp4",
    "noise_mp4": "noise.mp4",
    "glb": "scene.glb",
    "preview_png": "preview.png",
    "run_json": "run.json",
}

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


def versions() -> dict[str, str]:
    """Versions of the pieces a result depends on."""
    from . import __version__

    out = {"cfd": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("gsplat", "diffusers", "numpy"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            out[name] = module.__version__
    return out


def config_dict(config: DistillConfig) -> dict:
    """``config`` as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def nearest_reference(scene: GaussianScene, guidance, res: int) -> dict | None:
    """For a guidance with reference scenes (the exact prior's ``scene_psnr``, or a
    model's ``references``: tiny-sd carries the bundled objects it was trained on),
    the PSNR of ``scene`` to each reference, the nearest one and its family; None
    otherwise. The project's one PSNR measure (``cfd.framing``: PSNR_VIEWS orbit views at
    ``res``, the run's render resolution): the app, its seed comparison, the
    CLI's run.json and ``bench toy`` all report this number, with ``psnr_res``."""
    references = guidance if hasattr(guidance, "scene_psnr") else getattr(guidance, "references", None)
    if references is None:
        return None
    psnr = references.scene_psnr(scene, res)
    best = max(range(len(psnr)), key=psnr.__getitem__)
    return {"nearest": references.names[best], "nearest_family": references.vocabulary.family(best),
            "nearest_psnr": round(psnr[best], 3), "psnr_res": res,
            "psnr": {name: round(p, 3) for name, p in zip(references.names, psnr)}}


def write_json(data: dict, path: Path) -> None:
    """Write ``data`` as JSON to ``path`` atomically (``export.atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


# hidden staging siblings (``hidden_sibling``) and atomic_path's temporary files: what a killed run leaves
HIDDEN_LEFTOVER = re.compile(rf"^\..+\.(partial|error|old)-[0-9a-f]{{8}}$|{PARTIAL_FILE.pattern}")


def hidden_sibling(path: Path, kind: str) -> Path:
    """A new hidden sibling of ``path``, ``.<name>.<kind>-<8 hex>`` (staging, or a
    folder on its way out)."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


def earlier_run_files(out_dir: Path) -> set[str] | None:
    """The names of the files an earlier run of ours wrote into ``out_dir`` (its
    run.json's "files"); None if ``out_dir`` holds no run of ours."""
    try:
        data = json.loads((out_dir / ARTEFACTS["run_json"]).read_text())
        names = set(data["files"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return names & set(ARTEFACTS.values())


def check_out_dir(out_dir: Path) -> None:
    """ValueError for an existing, non-empty ``out_dir`` that holds no earlier run
    of ours: a run never writes into (or deletes from) a folder it did not make."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and earlier_run_files(out_dir) is None:
        raise ValueError(f"the output folder {out_dir} is not empty and holds no earlier cfd run (no run.json of "
                         "ours): choose a new or empty folder, e.g. --out outputs/run1")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder's files into ``out_dir`` (renaming the
    folder itself when ``out_dir`` does not exist yet). In a folder of an
    earlier run, that run's files the new one lacks are removed; nothing else."""
    if not out_dir.exists():
        staging.replace(out_dir)
        return
    for name in earlier_run_files(out_dir) or ():  # a reused folder keeps no artefact of an earlier run
        if not (staging / name).exists():
            (out_dir / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        os.replace(item, out_dir / item.name)
    staging.rmdir()


def generate(guidance, config: DistillConfig, out_dir, *, callback: Callable[[StepInfo], bool | None] | None = None,
             video_frames: int = 48, video_res: int = 256, noise_res: int | None = None, glb_resolution: int = 96,
             should_stop: Callable[[], bool] | None = None, stage_progress: StageProgress | None = None,
             keep_partial: bool = False, metadata: dict | None = None, preview_res: int | None = None) -> dict:
    """Run one generation and write its artefacts (see the module doc) into ``out_dir``.

    guidance: a ``cfd.guidance`` backend; config: the ``DistillConfig`` (its
        seed drives the run and the noise video).
    callback: passed on to ``distill`` (return True to stop the run).
    video_frames, video_res: orbit videos (frames, square pixels). The noise
        video shows the render next to the noise the run added, drawn from the
        run's noise source (``distill.noise_source``) at ``noise_res`` (default:
        the guidance's diffusion resolution, res / latent_factor) with the run's
        supersampling, shown at video_res.
    glb_resolution: marching-cubes grid points along the longest side.
    should_stop: polled between export stages; True cancels the run there.
    stage_progress(stage, done, total): export progress, stage in
        "render_video", "noise_video", "glb".
    keep_partial: when the run is stopped early, still write the partial
        scene's artefacts (run.json says ``"cancelled": true``); by default a
        cancelled run writes nothing.
    metadata: extra JSON data stored in run.json (e.g. the prompt).
    preview_res: also write preview.png, the final scene from the preview view
        (``cameras.preview_camera``) at this many pixels (square); None: no PNG.

    Returns ``{"cancelled", "out_dir", "files": {key: path}, "summary": run.json
    data, "scene": the final (or partial) GaussianScene, on the CPU}``; ``files`` is empty
    and ``out_dir`` None when a cancelled run wrote nothing. A GLB that cannot
    be meshed (e.g. a fully transparent scene) is skipped, its reason in
    ``summary["glb_error"]``; any other error removes the staging folder and
    propagates.
    """
    from . import export

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = hidden_sibling(out_dir, "partial")
    stopped = {"by_callback": False, "step": 0, "skipped": 0}
    timings: dict[str, float] = {}

    def step_callback(info: StepInfo):
        stopped["step"] = info.step
        stopped["skipped"] = info.skipped_steps
        stop = bool(callback(info)) if callback is not None else False
        if not stop and should_stop is not None and should_stop():
            stop = True
        stopped["by_callback"] = stop
        return stop

    def cancelled() -> bool:
        return stopped["by_callback"] or (should_stop is not None and should_stop())

    def stage(name: str):
        if stage_progress is None:
            return None
        return lambda done, total: stage_progress(name, done, total)

    def summary(n_splats: int, is_cancelled: bool, extra: dict) -> dict:
        return {
            "method": config.method, "seed": config.seed, "steps": config.steps,
            "steps_done": stopped["step"], "skipped_steps": stopped["skipped"], "res": config.res,
            "cancelled": is_cancelled,
            "guidance": getattr(guidance, "name", type(guidance).__name__), "condition": condition,
            "n_splats": n_splats,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            **extra, **(metadata or {}),
            "config": config_dict(config), "versions": versions(),
        }

    # the conditioning the run uses, backend defaults resolved (distill prepares the same)
    cond = guidance.condition(config.prompt, config.negative_prompt, config.guidance_scale)
    condition = {"prompt": cond.prompt, "negative_prompt": cond.negative_prompt,
                 "guidance_scale": cond.guidance_scale}
    start = time.perf_counter()
    threads = run_threads(guidance, config)
    threads.__enter__()  # exports are small-op renders too: same thread policy as the loop
    try:
        staging.mkdir()
        t0 = time.perf_counter()
        scene = distill(guidance, config, callback=step_callback)
        timings["distill"] = time.perf_counter() - t0
        if cancelled() and not keep_partial:
            shutil.rmtree(staging, ignore_errors=True)
            timings["total"] = time.perf_counter() - start
            return {"cancelled": True, "out_dir": None, "files": {}, "summary": summary(len(scene), True, {}),
                    "scene": scene.detach().to("cpu")}
        scene = scene.detach()  # stays on the guidance's device: the videos render there (gsplat on CUDA)
        extra: dict = {}
        files: dict[str, Path] = {}

        t0 = time.perf_counter()
        save_ply(scene, staging / ARTEFACTS["scene_ply"])
        export.save_viewer_ply(scene, staging / ARTEFACTS["viewer_ply"])
        files["scene_ply"], files["viewer_ply"] = ARTEFACTS["scene_ply"], ARTEFACTS["viewer_ply"]
        timings["ply"] = time.perf_counter() - t0
        if preview_res:
            import imageio.v3 as iio

            iio.imwrite(staging / ARTEFACTS["preview_png"], export.to_uint8(preview(scene, preview_res)))
            files["preview_png"] = ARTEFACTS["preview_png"]

        orbit_cache: dict = {}

        def write_render(path):
            orbit_cache["frames"] = export.orbit_frames(scene, n_frames=video_frames, res=video_res,
                                                        progress=stage("render_video"))
            export.write_video(orbit_cache["frames"], path)

        def write_noise(path):
            # the run's own noise source on its noise grid, next to the orbit render of the render video
            frames = export.noise_frames(scene, noise_source(guidance, config), n_frames=video_frames, res=n_res,
                                         display_res=video_res, supersample=n_ss, steps=max(stopped["step"], 1),
                                         channels=int(getattr(guidance, "channels", 4)), renders=orbit_cache["frames"],
                                         progress=stage("noise_video"))
            export.write_video(frames, path)

        run_res, n_ss = noise_grid(guidance, config)
        n_res = noise_res if noise_res is not None else run_res
        plan = [
            ("render_video", "render_mp4", write_render),
            ("noise_video", "noise_mp4", write_noise),
            ("glb", "glb", lambda p: export.export_glb(scene, p, resolution=glb_resolution)),
        ]
        for name, key, write in plan:
            if cancelled() and not keep_partial:
                shutil.rmtree(staging, ignore_errors=True)
                timings["total"] = time.perf_counter() - start
                return {"cancelled": True, "out_dir": None, "files": {},
                        "summary": summary(len(scene), True, {}), "scene": scene.to("cpu")}
            t0 = time.perf_counter()
            if name == "glb" and stage_progress is not None:
                stage_progress("glb", 0, 1)
            try:
                write(staging / ARTEFACTS[key])
                files[key] = ARTEFACTS[key]
            except ValueError as exc:
                if name != "glb":
                    raise
                extra["glb_error"] = str(exc)  # nothing to mesh: the other artefacts still stand
            timings[name] = time.perf_counter() - t0

        t0 = time.perf_counter()
        near = nearest_reference(scene, guidance, config.res)
        if near is not None:
            extra.update(near)
            timings["nearest"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        data = summary(len(scene), cancelled(), extra)
        files["run_json"] = ARTEFACTS["run_json"]
        data["files"] = dict(files)
        write_json(data, staging / ARTEFACTS["run_json"])
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        threads.__exit__(None, None, None)
    return {"cancelled": data["cancelled"], "out_dir": out_dir,
            "files": {k: out_dir / v for k, v in files.items()}, "summary": data, "scene": scene.to("cpu")}

