"""Files written whole or not at all: ``atomic_path`` and the pattern of its
temporary names (``PARTIAL_FILE``), which the pipeline's leftover sweep knows.
Nothing from cfd is imported here."""
from __future__ import annotations

import os
import re
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
