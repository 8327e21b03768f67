"""The bundled reference scene sets (``assets/scenes/<set_id>/``): the vocabulary
of the exact prior.

Each set folder holds splat PLYs and a ``set.json``: a theme and its families,
each family a caption and aliases that every one of its variants answers, each
variant a PLY, a short name, a description and aliases naming it alone::

    {"name": "Toys", "prompt": "a toy on a table", "theme": "a toy", "theme_aliases": ["toy", ...],
     "families": [{"id": "rubber_duck", "name": "rubber duck", "caption": "a rubber duck",
                   "aliases": ["duck", ...],
                   "variants": [{"file": "rubber_duck_0.ply", "name": "yellow duck",
                                 "description": "a classic yellow rubber duck",
                                 "aliases": ["yellow duck"]}, ...]}, ...]}

The sets are built by ``scripts/make_scenes.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .gaussians import GaussianScene, load_ply
from .vocabulary import Group, Vocabulary

SCENES_DIR = Path(__file__).resolve().parent.parent / "assets" / "scenes"
FIRST_SET = "toys"  # listed first


@dataclass(frozen=True)
class SceneObject:
    """One bundled object (a variant of a family): its PLY, name, description and
    the texts that name it alone."""

    path: Path
    name: str
    description: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """Variants that all answer one caption ("a rubber duck")."""

    id: str
    name: str
    caption: str
    aliases: tuple[str, ...]
    variants: tuple[SceneObject, ...]


@dataclass(frozen=True)
class SceneSet:
    """One bundled set of families sharing a theme."""

    id: str
    name: str
    prompt: str
    theme: str
    theme_aliases: tuple[str, ...]
    families: tuple[Family, ...]

    @property
    def objects(self) -> tuple[SceneObject, ...]:
        """Every variant of every family, family by family."""
        return tuple(v for f in self.families for v in f.variants)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def paths(self) -> list[Path]:
        return [o.path for o in self.objects]

    def originals(self) -> "SceneSet":
        """This set with only the first variant of each family, named, described
        and aliased as the family: the set's objects before they had variants (a
        small prior for tests and the benchmarks' reference table)."""
        families = tuple(replace(f, variants=(replace(f.variants[0], name=f.name, description=f.caption,
                                                      aliases=f.aliases),)) for f in self.families)
        return replace(self, families=families)


def _read_set(folder: Path) -> SceneSet:
    meta_path = folder / "set.json"
    try:
        meta = json.loads(meta_path.read_text())
        families = tuple(
            Family(f["id"], f["name"], f["caption"], tuple(f.get("aliases", ())),
                   tuple(SceneObject(folder / v["file"], v["name"], v.get("description", v["name"]),
                                     tuple(v.get("aliases", ()))) for v in f["variants"]))
            for f in meta["families"])
        if not families or not all(f.variants for f in families):
            raise ValueError("a set needs at least one family and every family a variant")
        return SceneSet(folder.name, meta["name"], meta["prompt"], meta.get("theme", meta["prompt"]),
                        tuple(meta.get("theme_aliases", ())), families)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a valid scene set description ({type(exc).__name__}: {exc})") from None


def list_scene_sets(root: Path = SCENES_DIR) -> list[SceneSet]:
    """Every set under ``root``: ``FIRST_SET`` first, then the others by id."""
    folders = [p for p in root.iterdir() if (p / "set.json").is_file()] if root.is_dir() else []
    folders.sort(key=lambda p: (p.name != FIRST_SET, p.name))
    return [_read_set(p) for p in folders]


def find_scene_sets(set_ids: list[str] | None = None, root: Path = SCENES_DIR,
                    originals: bool = False) -> list[SceneSet]:
    """The sets ``set_ids`` in that order (None: every bundled set); ``originals``:
    their ``SceneSet.originals()``. ValueError naming the available ids for an
    unknown one."""
    sets = {s.id: s.originals() if originals else s for s in list_scene_sets(root)}
    if set_ids is None:
        return list(sets.values())
    unknown = [i for i in set_ids if i not in sets]
    if unknown or not set_ids:
        available = ", ".join(sets) or f"none (no set.json under {root})"
        raise ValueError(f"unknown scene set {unknown[0] if unknown else ''!r}; available: {available}")
    return [sets[i] for i in set_ids]


def vocabulary(sets: list[SceneSet]) -> Vocabulary:
    """The vocabulary of the variants of ``sets`` (in order): one family per
    family, one theme per set."""
    objects = [o for s in sets for o in s.objects]
    themes, families, start = [], [], 0
    for s in sets:
        set_start = start
        for f in s.families:
            members = tuple(range(start, start + len(f.variants)))
            families.append(Group(f.name, (f.caption, *f.aliases), members))
            start += len(f.variants)
        themes.append(Group(s.theme, (s.prompt, *s.theme_aliases), tuple(range(set_start, start))))
    return Vocabulary(tuple(o.name for o in objects), tuple(o.description for o in objects),
                      tuple(o.aliases for o in objects), tuple(themes), tuple(families))


def load_scene_set(set_id: str, root: Path = SCENES_DIR, originals: bool = False
                   ) -> tuple[SceneSet, list[GaussianScene]]:
    """The set ``set_id`` and the scenes of all its variants (CPU; ``originals``:
    of its ``SceneSet.originals()``). ValueError naming the available ids if
    there is no such set."""
    (scene_set,) = find_scene_sets([set_id], root, originals)
    return scene_set, [load_ply(p) for p in scene_set.paths]
