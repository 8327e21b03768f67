"""Files written whole or not at all: ``atomic_path`` and the pattern of its
temporary names (``PARTIAL_FILE``), which the pipeline's leftover sweep knows;
``hold``, a file kept where its producer will move it. Nothing from cfd is
imported here."""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# the temporary files of ``atomic_path``: .<stem>.<pid>.partial<suffix>
PARTIAL_FILE = re.compile(r"^\..+\.\d+\.partial(\.[^.]+)?$")


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Write a file atomically: the block writes the yielded temporary sibling of
    ``path`` (it keeps the suffix: ffmpeg and trimesh pick the format from it),
    which is renamed to ``path`` when the block ends, or removed if it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def hold(path, folder) -> Path:
    """A hard link (a copy where links fail) of file ``path`` in ``folder``, under
    its own name: it stays while ``path`` is renamed or removed (a run's
    staging folder being published), and costs no copy."""
    path, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    held = folder / path.name
    held.unlink(missing_ok=True)
    try:
        os.link(path, held)
    except OSError:
        shutil.copyfile(path, held)
    return held
