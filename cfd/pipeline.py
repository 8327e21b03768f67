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
artefacts). The PLYs and the preview come first (the run's picture, reported
by ``on_picture``), then the videos, the GLB and the nearest-variant measure
side by side. The videos and the GLB are optional: one that cannot be written
is noted in run.json (``<key>_error``) and the run stands without it. Used by the
app and the CLI; nothing here imports gradio.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .distill import DistillConfig, StepInfo, distill, noise_grid, noise_source, preview, run_threads
from .errors import InputError
from .files import PARTIAL_FILE, atomic_path
from .gaussians import GaussianScene, save_ply

__all__ = ["ARTEFACTS", "generate", "write_exports", "compare_job", "scene_fingerprint", "nearest_reference",
           "versions", "config_dict", "write_json"]

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
OnPicture = Callable[[dict, dict], None]          # (files: key → path, run.json's data so far)
OnArtefact = Callable[[str, Path], None]          # (key, path)
EXPORT_WORKERS = 2   # the exports after the picture written side by side (on a CPU: the loop's core and one more)


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
    """InputError for an existing, non-empty ``out_dir`` that holds no earlier run
    of ours: a run never writes into (or deletes from) a folder it did not make."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and earlier_run_files(out_dir) is None:
        raise InputError(f"the output folder {out_dir} is not empty and holds no earlier cfd run (no run.json of "
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


class StagingFolder:
    """The hidden sibling of ``out_dir`` a run writes into (a context manager): on
    leaving it, whatever was not published (an error, a cancelled run) is removed."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.path = out_dir, hidden_sibling(out_dir, "partial")

    def __enter__(self) -> "StagingFolder":
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self) -> None:
        """Move the finished files into ``out_dir`` (``_publish``)."""
        _publish(self.path, self.out_dir)


class StepWatch:
    """The loop's callback: counts steps, asks the caller's callback and
    ``should_stop`` whether to stop, and stops the run at its wall-clock limit.
    ``stopped_by`` says who stopped it: None, "caller" (the callback or
    ``should_stop``: the one decision of whether it was cancelled) or "time limit"
    (the run is kept: it ends early with what it has)."""

    def __init__(self, callback: Callable[[StepInfo], bool | None] | None, should_stop: Callable[[], bool] | None,
                 time_limit_s: float | None = None):
        self.callback, self.should_stop = callback, should_stop
        self.deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self.steps_done = self.skipped = 0
        self.stopped_by: str | None = None

    def __call__(self, info: StepInfo) -> bool:
        self.steps_done, self.skipped = info.step, info.skipped_steps
        stop = bool(self.callback(info)) if self.callback is not None else False
        if stop or (self.should_stop is not None and self.should_stop()):
            self.stopped_by = "caller"
        elif self.deadline is not None and time.monotonic() >= self.deadline and info.step < info.steps:
            self.stopped_by = "time limit"
        return self.stopped_by is not None

    def cancelled(self, steps: int) -> bool:
        """Stopped by the caller before the last of ``steps``: a run stopped on its
        last step is finished, one stopped by the time limit is kept."""
        return self.stopped_by == "caller" and self.steps_done < steps


@dataclass(frozen=True)
class ExportStep:
    """One artefact of a run: ``write(path)`` writes it. ``stage``: the name
    ``stage_progress`` and the timings use; ``optional``: the run stands without
    it, so any error writing it (nothing to export, e.g. a fully transparent
    scene for the GLB; out of memory in marching cubes; a failed encoder) is
    noted in run.json as ``<key>_error`` instead of failing the run. The
    required steps make the run's picture (written first, in order); the
    optional ones are written side by side after it."""

    stage: str
    key: str                       # in ARTEFACTS
    write: Callable[[Path], None]
    optional: bool = False


def export_steps(scene: GaussianScene, guidance, config: DistillConfig, steps_done: int, *, video_frames: int,
                 video_res: int, noise_res: int | None, glb_resolution: int, preview_res: int | None,
                 ply_sh_degree: int, stage_progress: StageProgress | None = None) -> list[ExportStep]:
    """The exports of a finished run, in order (see the module doc): the orbit
    videos have ``video_frames`` frames of ``video_res`` square pixels, the noise
    drawn from the run's noise source (``distill.noise_source``) at ``noise_res``
    (default: the guidance's diffusion resolution, res / latent_factor) with the
    run's supersampling; the GLB's marching cubes take ``glb_resolution`` points
    along the longest side; ``preview_res``: also preview.png, the preview view
    (``cameras.preview_camera``) at that many pixels (None: no PNG);
    ``ply_sh_degree``: scene.ply's SH degree, at least the scene's own (3: the
    48-coefficient layout, zeros above the scene's bands, for viewers that
    require it)."""
    from . import export

    def stage(name: str):
        return None if stage_progress is None else (lambda done, total: stage_progress(name, done, total))

    def write_render(path):
        export.write_video(export.orbit_chunks(scene, n_frames=video_frames, res=video_res,
                                               progress=stage("render_video")), path)

    def write_noise(path):  # the run's own noise source on its noise grid, beside the orbit render
        run_res, supersample = noise_grid(guidance, config)
        chunks = export.noise_chunks(scene, noise_source(guidance, config), n_frames=video_frames,
                                     res=noise_res or run_res, display_res=video_res, supersample=supersample,
                                     steps=max(steps_done, 1), channels=int(getattr(guidance, "channels", 4)),
                                     renders="orbit", progress=stage("noise_video"))
        export.write_video(chunks, path)

    def write_glb(path):
        stage("glb")(0, 1)   # marching cubes report no progress of their own: announce the stage
        export.export_glb(scene, path, resolution=glb_resolution)

    def write_preview(path):
        import imageio.v3 as iio

        iio.imwrite(path, export.to_uint8(preview(scene, preview_res)))

    full = scene.with_sh_degree(max(scene.sh_degree, ply_sh_degree))
    steps = [ExportStep("ply", "scene_ply", lambda p: save_ply(full, p)),
             ExportStep("ply", "viewer_ply", lambda p: export.save_viewer_ply(scene, p))]
    if preview_res:
        steps.append(ExportStep("preview", "preview_png", write_preview))
    return steps + [ExportStep("render_video", "render_mp4", write_render, optional=True),
                    ExportStep("noise_video", "noise_mp4", write_noise, optional=True),
                    ExportStep("glb", "glb", write_glb, optional=True)]


def generate(guidance, config: DistillConfig, out_dir, *, callback: Callable[[StepInfo], bool | None] | None = None,
             video_frames: int = 48, video_res: int = 256, noise_res: int | None = None, glb_resolution: int = 96,
             should_stop: Callable[[], bool] | None = None, stage_progress: StageProgress | None = None,
             keep_partial: bool = False, metadata: dict | None = None, preview_res: int | None = None,
             ply_sh_degree: int = 0, time_limit_s: float | None = None, on_picture: OnPicture | None = None,
             on_artefact: OnArtefact | None = None, export_workers: int = EXPORT_WORKERS) -> dict:
    """Run one generation and write its artefacts (see the module doc) into ``out_dir``.

    guidance: a ``cfd.guidance`` backend; config: the ``DistillConfig`` (its
        seed drives the run and the noise video).
    callback: passed on to ``distill`` (return True to stop the run).
    should_stop: polled after every step and before every export; True stops
        the run there. Stopped before its last step, or during its exports, the
        run is cancelled: nothing is published (unless ``keep_partial``, for a
        stop inside the loop).
    time_limit_s: wall-clock seconds the loop may take; past them it stops and
        the scene so far is exported as the result (run.json: ``"stopped_by":
        "time limit"`` and its ``steps_done``). None: no limit.
    keep_partial: when the run is stopped early, still write the partial
        scene's artefacts (run.json says ``"cancelled": true``); by default a
        cancelled run writes nothing.
    metadata: extra JSON data stored in run.json (e.g. the prompt).
    stage_progress(stage, done, total): export progress (``ExportStep.stage``).
    on_picture(files, summary): once the loop's result can be shown: scene.ply,
        viewer.ply (and preview.png) are written (key → path in the staging
        folder, valid until this returns) and ``summary`` is run.json's data so
        far; the other exports start after it.
    on_artefact(key, path): each later artefact as it is written (the videos
        and the GLB, ``export_workers`` of them at a time beside the
        nearest-variant measure); run.json is written when the last is done.
    video_frames, video_res, noise_res, glb_resolution, preview_res,
        ply_sh_degree: the exports' settings (``export_steps``).

    Returns ``{"cancelled", "out_dir", "files": {key: path}, "summary": run.json
    data, "scene": the final (or partial) scene, on the CPU}`` (no files and no
    out_dir when a cancelled run wrote nothing). An optional artefact that
    fails (the videos, the GLB) is skipped (``summary["<key>_error"]``); any
    other error removes the staging folder.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)                                                           # 1. check the inputs
    cond = guidance.condition(config.prompt, config.negative_prompt, config.guidance_scale)   # 2. prepare
    log = RunLog(config, guidance, cond, StepWatch(callback, should_stop, time_limit_s), metadata)
    # the exports are small-op renders too: the loop's thread policy holds for them
    with run_threads(guidance, config), StagingFolder(out_dir) as staging:
        t0 = time.perf_counter()
        scene = distill(guidance, config, callback=log.watch, cond=cond).detach()   # 3. the loop
        log.timings["distill"] = time.perf_counter() - t0
        cancelled = log.watch.cancelled(config.steps)
        if cancelled and not keep_partial:
            return log.unpublished(scene)
        should_stop = None if cancelled else should_stop   # keep_partial's exports were asked for
        steps = export_steps(scene, guidance, config, log.watch.steps_done, video_frames=video_frames,
                             video_res=video_res, noise_res=noise_res, glb_resolution=glb_resolution,
                             preview_res=preview_res, ply_sh_degree=ply_sh_degree,
                             stage_progress=_stopping(stage_progress, should_stop))
        try:
            files, data = log.write(scene, cancelled, steps, staging.path, should_stop,   # 4. exports, run.json
                                    on_picture, on_artefact, export_workers)
        except ExportsStopped:   # Stop during the exports: nothing is published, the slot is free at once
            return log.unpublished(scene)
        staging.publish()                                                            # 5. publish
    return {"cancelled": cancelled, "out_dir": out_dir, "files": {k: out_dir / v for k, v in files.items()},
            "summary": data, "scene": scene.to("cpu")}


@dataclass
class RunLog:
    """What run.json records of one ``generate`` run, kept as the run goes: the
    loop's ``watch``, each stage's seconds (``timings``, from ``start``) and the
    caller's ``metadata``."""

    config: DistillConfig
    guidance: object
    cond: object                   # the run's Condition (``guidance.condition``)
    watch: StepWatch
    metadata: dict | None = None
    timings: dict = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def summary(self, scene: GaussianScene, cancelled: bool, extra: dict) -> dict:
        """run.json's data (without its "files") as of now; ``extra`` adds notes."""
        self.timings["total"] = time.perf_counter() - self.start
        return run_record(self.config, self.guidance, self.cond, self.watch, len(scene), cancelled, self.timings,
                          {**extra, **(self.metadata or {})})

    def unpublished(self, scene: GaussianScene) -> dict:
        """``generate``'s answer for a cancelled run that published nothing."""
        return {"cancelled": True, "out_dir": None, "files": {}, "summary": self.summary(scene, True, {}),
                "scene": scene.to("cpu")}

    def write(self, scene: GaussianScene, cancelled: bool, steps: list[ExportStep], folder: Path,
              should_stop: Callable[[], bool] | None, on_picture: OnPicture | None = None,
              on_artefact: OnArtefact | None = None, workers: int = EXPORT_WORKERS) -> tuple[dict, dict]:
        """Write the exports ``steps`` into ``folder`` (ExportsStopped on a stop):
        the required ones in order, then ``on_picture``; then the optional ones
        ``workers`` at a time beside the nearest-reference measure; then
        run.json. Returns (files written, key → name; run.json's data)."""
        files, notes = write_exports([s for s in steps if not s.optional], folder, self.timings, should_stop)
        self.timings["picture"] = time.perf_counter() - self.start
        if on_picture is not None:
            on_picture({key: folder / name for key, name in files.items()}, self.summary(scene, cancelled, notes))

        def nearest() -> dict:
            t0 = time.perf_counter()
            near = nearest_reference(scene, self.guidance, self.config.res) or {}
            self.timings["nearest"] = time.perf_counter() - t0
            return near

        with ThreadPoolExecutor(1) as measure:
            near = measure.submit(nearest)
            more, more_notes = write_exports([s for s in steps if s.optional], folder, self.timings, should_stop,
                                             on_artefact, workers)
            extra = {**notes, **more_notes, **near.result()}
        files.update(more, run_json=ARTEFACTS["run_json"])
        data = {**self.summary(scene, cancelled, extra), "files": dict(files)}
        write_json(data, folder / ARTEFACTS["run_json"])
        return files, data


class ExportsStopped(Exception):
    """Stop came while a run's exports were being written (``write_exports``)."""


def _stopping(stage_progress: StageProgress | None, should_stop: Callable[[], bool] | None) -> StageProgress:
    """``stage_progress`` that first raises ExportsStopped once ``should_stop()``:
    an export stops within one of its progress steps (a chunk of video frames)."""
    def progress(stage: str, done: int, total: int) -> None:
        if should_stop is not None and should_stop():
            raise ExportsStopped(stage)
        if stage_progress is not None:
            stage_progress(stage, done, total)
    return progress


def write_exports(steps: list[ExportStep], folder: Path, timings: dict, should_stop: Callable[[], bool] | None = None,
                  on_artefact: OnArtefact | None = None, workers: int = 1) -> tuple[dict[str, str], dict]:
    """Write ``steps`` into ``folder``, ``workers`` at a time (threads: the
    renders and the encoders release the interpreter), each artefact passed to
    ``on_artefact(key, path)`` once written: (files written, key → name, in
    ``steps``' order; notes for run.json: an optional step's ``<key>_error``,
    "Type: message"). Adds each stage's seconds to ``timings``. ExportsStopped,
    once every started step has ended, when ``should_stop()`` is true before a
    step (or at a progress step: ``_stopping``)."""
    lock = threading.Lock()

    def write(step: ExportStep) -> str | None:
        """The step's error note (None: written)."""
        if should_stop is not None and should_stop():
            raise ExportsStopped(step.key)
        path, t0 = folder / ARTEFACTS[step.key], time.perf_counter()
        try:
            step.write(path)
        except ExportsStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - an optional artefact fails alone; run.json says why
            if not step.optional:
                raise
            path.unlink(missing_ok=True)
            return f"{type(exc).__name__}: {exc}"
        finally:
            with lock:
                timings[step.stage] = timings.get(step.stage, 0.0) + time.perf_counter() - t0
        if on_artefact is not None:
            on_artefact(step.key, path)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        errors = list(pool.map(write, steps))
    files = {s.key: ARTEFACTS[s.key] for s, error in zip(steps, errors) if error is None}
    return files, {f"{s.key}_error": error for s, error in zip(steps, errors) if error is not None}


COMPARE_FRAMES, COMPARE_RES = 24, 128   # each compared seed's orbit loop (GIF)


def scene_fingerprint(scene: GaussianScene) -> str:
    """A short hash of every parameter of ``scene`` (bit-level identity of two runs)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    for tensor in (scene.means, scene.log_scales, scene.quats, scene.opacity_logits, scene.sh):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compare_job(config: DistillConfig, guidance, gif: Path, step_callback: Callable, should_stop: Callable[[], bool],
                time_limit_s: float | None = None) -> dict | None:
    """One run of a seed comparison (in a thread or a worker process): distil
    ``config``, write its orbit GIF to ``gif``, measure its nearest variant;
    ``time_limit_s``: the loop's wall-clock limit (``StepWatch``). Returns plain
    data (gif, near, seconds, n_splats, fingerprint, steps_done, stopped_by), or
    None if stopped."""
    from .export import orbit_frames, write_gif

    t0 = time.perf_counter()
    watch = StepWatch(step_callback, should_stop, time_limit_s)
    scene = distill(guidance, config, callback=watch)
    if watch.cancelled(config.steps) or should_stop():
        return None
    with run_threads(guidance, config):
        write_gif(orbit_frames(scene, n_frames=COMPARE_FRAMES, res=COMPARE_RES), gif)
        near = nearest_reference(scene, guidance, config.res)
    return {"gif": str(gif), "near": near, "seconds": time.perf_counter() - t0, "n_splats": len(scene),
            "fingerprint": scene_fingerprint(scene), "steps_done": watch.steps_done, "stopped_by": watch.stopped_by}


def run_record(config: DistillConfig, guidance, cond, watch: StepWatch, n_splats: int, cancelled: bool,
               timings: dict, extra: dict) -> dict:
    """run.json's data of a run (without its "files")."""
    return {
        "method": config.method, "seed": config.seed, "steps": config.steps,
        "steps_done": watch.steps_done, "skipped_steps": watch.skipped, "res": config.res, "cancelled": cancelled,
        "stopped_by": watch.stopped_by,
        "guidance": getattr(guidance, "name", type(guidance).__name__),
        "condition": {"prompt": cond.prompt, "negative_prompt": cond.negative_prompt,
                      "guidance_scale": cond.guidance_scale},
        "n_splats": n_splats, "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **extra, "config": config_dict(config), "versions": versions(),
    }

