import filecmp
import itertools
import runpy

import pytest

from cfd.cameras import orbit_camera
from cfd.render import render
from cfd.scenes import FIRST_SET, SCENES_DIR, list_scene_sets, load_scene_set

SETS = list_scene_sets()


def test_sets_are_listed_in_a_stable_order_with_the_default_first():
    ids = [s.id for s in SETS]
    assert len(ids) >= 2 and ids[0] == FIRST_SET
    assert ids[1:] == sorted(ids[1:])
    assert [s.id for s in list_scene_sets()] == ids


@pytest.mark.parametrize("scene_set", SETS, ids=lambda s: s.id)
def test_bundled_set_loads_and_its_objects_are_small_centred_and_distinct(scene_set):
    meta, scenes = load_scene_set(scene_set.id)
    assert meta == scene_set and meta.name and meta.prompt
    assert len(scenes) >= 3 and len(meta.names) == len(scenes) == len(set(meta.names))
    for path, scene in zip(meta.paths, scenes):
        assert path.stat().st_size <= 1_000_000
        assert 800 <= len(scene) <= 2000 and scene.sh_degree == 0
        assert scene.means.norm(dim=1).max() < 1.0
    cam = orbit_camera(30, 15, 2.5, 49, 64, 64)
    images = [render(s, cam).rgb for s in scenes]
    for img in images:
        assert (img < 0.9).any(dim=-1).float().mean() > 0.1  # the object fills a good part of the view
    for (i, a), (j, b) in itertools.combinations(enumerate(images), 2):
        assert (a - b).abs().mean() > 0.05, f"{meta.names[i]} and {meta.names[j]} look alike"


def test_unknown_set_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown scene set 'nope'.*" + FIRST_SET):
        load_scene_set("nope")


def test_the_script_reproduces_the_bundled_files_bit_for_bit(tmp_path):
    script = runpy.run_path(str(SCENES_DIR.parents[1] / "scripts" / "make_scenes.py"), run_name="make_scenes")
    script["build_sets"](tmp_path)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(SCENES_DIR) for p in SCENES_DIR.rglob("*") if p.is_file())
    assert built == bundled
    assert all(filecmp.cmp(tmp_path / p, SCENES_DIR / p, shallow=False) for p in built)
