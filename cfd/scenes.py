"""The bundled reference scene sets (``assets/scenes/<set_id>/``).

Each set folder holds splat PLYs and a ``set.json``:
``{"name": human name, "prompt": text the app shows,
"scenes": [{"file": "snowman.ply", "name": "snowman"}, ...]}``.
The sets are built by ``scripts/make_scenes.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .gaussians import GaussianScene, load_ply

SCENES_DIR = Path(__file__).resolve().parent.parent / "assets" / "scenes"
FIRST_SET = "toys"  # listed first: the app's and CLI's default set


@dataclass(frozen=True)
class SceneSet:
    """One bundled set: ``paths[i]`` is the PLY of the object called ``names[i]``."""

    id: str
    name: str
    prompt: str
    paths: list[Path]
    names: list[str]


def _read_set(folder: Path) -> SceneSet:
    meta_path = folder / "set.json"
    try:
        meta = json.loads(meta_path.read_text())
        entries = meta["scenes"]
        return SceneSet(folder.name, meta["name"], meta["prompt"],
                        [folder / e["file"] for e in entries], [e["name"] for e in entries])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a valid scene set description ({type(exc).__name__}: {exc})") from None


def list_scene_sets(root: Path = SCENES_DIR) -> list[SceneSet]:
    """Every set under ``root``: ``FIRST_SET`` first, then the others by id."""
    folders = [p for p in root.iterdir() if (p / "set.json").is_file()] if root.is_dir() else []
    folders.sort(key=lambda p: (p.name != FIRST_SET, p.name))
    return [_read_set(p) for p in folders]


def load_scene_set(set_id: str, root: Path = SCENES_DIR) -> tuple[SceneSet, list[GaussianScene]]:
    """The set ``set_id`` and its scenes (CPU). ValueError naming the available
    ids if there is no such set."""
    sets = {s.id: s for s in list_scene_sets(root)}
    if set_id not in sets:
        available = ", ".join(sets) or f"none (no set.json under {root})"
        raise ValueError(f"unknown scene set {set_id!r}; available: {available}")
    scene_set = sets[set_id]
    return scene_set, [load_ply(p) for p in scene_set.paths]
