"""The bundled reference scene sets (``assets/scenes/<set_id>/``): the vocabulary
of the exact prior.

Each set folder holds splat PLYs and a ``set.json``::

    {"name": human name, "prompt": the set's example prompt,
     "theme": "a toy", "theme_aliases": ["toy", ...],
     "scenes": [{"file": "snowman.ply", "name": "snowman",
                 "caption": "a snowman with a top hat", "aliases": ["snowman", ...]}, ...]}

The sets are built by ``scripts/make_scenes.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .gaussians import GaussianScene, load_ply
from .vocabulary import Theme, Vocabulary

SCENES_DIR = Path(__file__).resolve().parent.parent / "assets" / "scenes"
FIRST_SET = "toys"  # listed first


@dataclass(frozen=True)
class SceneObject:
    """One bundled object: its PLY, display name, caption and the texts that name it."""

    path: Path
    name: str
    caption: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class SceneSet:
    """One bundled set of objects sharing a theme."""

    id: str
    name: str
    prompt: str
    theme: str
    theme_aliases: tuple[str, ...]
    objects: tuple[SceneObject, ...]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def paths(self) -> list[Path]:
        return [o.path for o in self.objects]


def _read_set(folder: Path) -> SceneSet:
    meta_path = folder / "set.json"
    try:
        meta = json.loads(meta_path.read_text())
        objects = tuple(SceneObject(folder / e["file"], e["name"], e.get("caption", e["name"]),
                                    tuple(e.get("aliases", ()))) for e in meta["scenes"])
        return SceneSet(folder.name, meta["name"], meta["prompt"], meta.get("theme", meta["prompt"]),
                        tuple(meta.get("theme_aliases", ())), objects)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a valid scene set description ({type(exc).__name__}: {exc})") from None


def list_scene_sets(root: Path = SCENES_DIR) -> list[SceneSet]:
    """Every set under ``root``: ``FIRST_SET`` first, then the others by id."""
    folders = [p for p in root.iterdir() if (p / "set.json").is_file()] if root.is_dir() else []
    folders.sort(key=lambda p: (p.name != FIRST_SET, p.name))
    return [_read_set(p) for p in folders]


def find_scene_sets(set_ids: list[str] | None = None, root: Path = SCENES_DIR) -> list[SceneSet]:
    """The sets ``set_ids`` in that order (None: every bundled set). ValueError
    naming the available ids for an unknown one."""
    sets = {s.id: s for s in list_scene_sets(root)}
    if set_ids is None:
        return list(sets.values())
    unknown = [i for i in set_ids if i not in sets]
    if unknown or not set_ids:
        available = ", ".join(sets) or f"none (no set.json under {root})"
        raise ValueError(f"unknown scene set {unknown[0] if unknown else ''!r}; available: {available}")
    return [sets[i] for i in set_ids]


def vocabulary(sets: list[SceneSet]) -> Vocabulary:
    """The vocabulary of the objects of ``sets`` (in order), one theme per set."""
    objects = [o for s in sets for o in s.objects]
    themes, start = [], 0
    for s in sets:
        themes.append(Theme(s.theme, (s.prompt, *s.theme_aliases), tuple(range(start, start + len(s.objects)))))
        start += len(s.objects)
    return Vocabulary(tuple(o.name for o in objects), tuple(o.caption for o in objects),
                      tuple(o.aliases for o in objects), tuple(themes))


def load_scene_set(set_id: str, root: Path = SCENES_DIR) -> tuple[SceneSet, list[GaussianScene]]:
    """The set ``set_id`` and its scenes (CPU). ValueError naming the available
    ids if there is no such set."""
    (scene_set,) = find_scene_sets([set_id], root)
    return scene_set, [load_ply(p) for p in scene_set.paths]
