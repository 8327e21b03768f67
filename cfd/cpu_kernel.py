"""The C++ CPU kernels — the compositor (``cfd/_composite_cpu.cpp``) and the
projection (``cfd/_project_cpu.cpp``), one library: built ahead of serving,
only ever loaded by a request.

``build`` compiles it in a child process (``python -m cfd.cpu_kernel``, the same
command a person or ``make`` runs) with a timeout, killing the child's whole
process group when it runs out; ``load`` (behind ``cfd.render.cpu_kernel``) loads
the built library if it is there and otherwise returns None at once, with one
warning: it never compiles and never waits on a lock, so a request cannot stall
on a build.

The build is keyed by a hash of the sources, torch's version and the flags
(``source_hash``): it lives in ``<root>/cfd_composite_cpu_<hash>/`` with
``cfd_composite_cpu_<hash>.so`` in it, and its ops are registered in the torch
namespace ``cfd_composite_cpu_<hash>`` (two checkouts, or an edited source, never
load each other's library, and two versions can be loaded in one process). The
root is ``$CFD_KERNEL_DIR``, else torch's extensions folder
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``) ``/cfd``.

The builder serialises on an ``fcntl.flock`` of ``build.flock`` in that folder,
which the OS releases when its holder dies (a killed build never leaves a lock
behind), and compiles in a fresh scratch folder of its own (with torch's
``cpp_extension.load``, whose ``lock`` file is then never contended), publishing
the library by an atomic rename only once it has loaded: a reader sees a whole
library or none. Builders that find the library already there return at once.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

SOURCES = (Path(__file__).with_name("_composite_cpu.cpp"), Path(__file__).with_name("_project_cpu.cpp"))
OPS = ("forward", "backward", "project_forward", "project_backward")   # what the library registers
NAME = "cfd_composite_cpu"
# the flags the kernel has always been built with: results stay bit-for-bit the same
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)
DEFAULT_TIMEOUT_S = 300.0
# seconds between SIGTERM (ninja then stops its compilers) and SIGKILL of a timed-out build
_GRACE_S = 1.0
_FAILED = "cfd.cpu_kernel: build failed: "


def source_hash(sources: Sequence[bytes] | None = None) -> str:
    """16 hex digits of blake2b over the kernels' sources (``sources``, else the
    files of SOURCES), torch's version and the compiler and linker flags."""
    if sources is None:
        return _default_hash()
    h = hashlib.blake2b(digest_size=8)
    for part in (*sources, torch.__version__.encode(), " ".join(CFLAGS).encode(), " ".join(LDFLAGS).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def read_sources() -> list[bytes]:
    return [path.read_bytes() for path in SOURCES]


@functools.cache
def _default_hash() -> str:
    """The hash of the sources as this process first read them (fixed for its life)."""
    return source_hash(read_sources())


def cache_root() -> Path:
    """Where builds live: ``$CFD_KERNEL_DIR``, else torch's extensions folder /cfd."""
    if os.environ.get("CFD_KERNEL_DIR"):
        return Path(os.environ["CFD_KERNEL_DIR"])
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / "cfd"


def namespace(h: str | None = None) -> str:
    """The torch.ops namespace (and library name) of the build with hash ``h``."""
    return f"{NAME}_{h or source_hash()}"


def build_dir(root: Path | None = None, h: str | None = None) -> Path:
    """The folder of the build with hash ``h`` (default: this source's) under ``root``."""
    return (root or cache_root()) / namespace(h)


def library_path(root: Path | None = None, h: str | None = None) -> Path:
    """The built library of hash ``h`` under ``root``: there only when whole."""
    return build_dir(root, h) / f"{namespace(h)}.so"


def build_command(root: Path | None = None) -> list[str]:
    """The command that builds the kernel (what ``build`` runs as its child)."""
    return [sys.executable, "-m", "cfd.cpu_kernel", "--dir", str(root or cache_root())]


# ------------------------------------------------------------------- in-process

_lock = threading.Lock()   # guards the fields below; never held across a build or a file lock
_ops = None                # the loaded ops, once loaded
_failed_paths: set[str] = set()  # libraries that did not load (not tried again)
_warned: set[str] = set()  # "build", "load": the warnings this process gave


def _warn_once(kind: str, message: str) -> None:
    """Warn that pure torch renders instead, once per process for a failed
    build ("build") and once for a missing library ("load"), the latter not after
    the former (it would add nothing)."""
    with _lock:
        if kind in _warned or (kind == "load" and "build" in _warned):
            return
        _warned.add(kind)
    warnings.warn(f"cfd: {message}; projecting and compositing with pure torch (several times slower)", RuntimeWarning,
                  stacklevel=3)


def _registered(ns: str):
    """torch.ops.<ns> if its ops are registered in this process, else None."""
    ops = getattr(torch.ops, ns)
    try:
        for op in OPS:
            getattr(ops, op)
    except (AttributeError, RuntimeError):
        return None
    return ops


def load():
    """The kernels' ops (OPS) from the built library of these
    sources, or None (warned once per process) where it is not built. Never builds
    and never waits on a file lock: at worst a stat and a dlopen of a finished
    library, which needs no write access to its folder. A library that a build
    (e.g. the app's start-up) finishes meanwhile is picked up by a later call."""
    global _ops
    if _ops is not None:
        return _ops
    h = source_hash()
    ns, path = namespace(h), library_path(h=h)
    failure = None
    with _lock:
        if _ops is None:
            _ops = _registered(ns)  # this hash already loaded (from any folder): the same code
        if _ops is None and path.is_file() and str(path) not in _failed_paths:
            try:
                torch.ops.load_library(str(path))
                _ops = _registered(ns)
                if _ops is None:
                    raise RuntimeError(f"it does not register every one of {ns}::{', '.join(OPS)}")
            except (OSError, RuntimeError) as err:
                _failed_paths.add(str(path))
                failure = f"the C++ CPU kernels did not load from {path} ({_build_error(err)})"
        ops = _ops
    if ops is None:
        _warn_once("load", failure or f"the C++ CPU kernels are not built (no {path}; build it with "
                   f"`{sys.executable} -m cfd.cpu_kernel` or `make`, or let the app's start-up build it)")
    return ops


def build(timeout_s: float = DEFAULT_TIMEOUT_S, root: Path | None = None) -> bool:
    """Build the kernel for this source unless it is built: True once its library
    is there. Compiles in a child process (``build_command``) in a session of its
    own, stopped with its compilers after ``timeout_s`` seconds; never changes this
    process's environment. On a failure or a timeout, warns once (with the
    compiler's first complaint) and returns False: ``load`` then gives None and
    the pure-torch compositor is used. Safe to call from several threads and
    processes at once: the builders take turns on a file lock and the later ones
    find the library. Returns at once where the library is there (a read-only
    cache too)."""
    root = root or cache_root()
    h = source_hash()
    if library_path(root, h).is_file():
        return True
    start = time.monotonic()
    try:
        proc = subprocess.Popen([*build_command(root), "--hash", h], env=child_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except OSError as err:
        _warn_once("build", f"the C++ CPU kernels did not build ({err})")
        return False
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _warn_once("build", f"the C++ CPU kernels did not build within {timeout_s:g} s (stopped)")
        return False
    except BaseException:  # e.g. KeyboardInterrupt: no build outlives its caller
        _kill_group(proc)
        raise
    if proc.returncode == 0 and library_path(root, h).is_file():
        return True
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    cause = next((line[len(_FAILED):] for line in reversed(lines) if line.startswith(_FAILED)), None)
    if cause is None and proc.returncode < 0:
        cause = f"the build was killed by signal {-proc.returncode}"
    cause = cause or (lines[-1][:300] if lines else f"exit status {proc.returncode}")
    _warn_once("build", f"the C++ CPU kernels did not build ({cause}; after {time.monotonic() - start:.0f} s)")
    return False


def child_env() -> dict[str, str]:
    """The build child's environment: this one, with this cfd first on PYTHONPATH
    and pip's ninja on PATH where no ninja is (it is there only in an activated
    venv). This process's own environment is left as it is."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    if shutil.which("ninja", path=env.get("PATH")) is None:
        try:
            import ninja

            env["PATH"] = os.pathsep.join(filter(None, [env.get("PATH"), ninja.BIN_DIR]))
        except ImportError:
            pass
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the build ``proc`` leads and all it started: SIGTERM to its process
    group (ninja passes it on to its compilers, which run in groups of their own),
    then SIGKILL to what is left of the group. ``proc`` is reaped only after, so
    its group id cannot have been reused meanwhile."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(_GRACE_S)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stdout.close()


def _build_error(err: BaseException) -> str:
    """A failed build in one line: the compiler's or the shell's first complaint (a
    line with "error" or "not found"), else the message's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = next((line for line in lines[1:] if "error" in line.lower() or "not found" in line), None)
    return (cause or (lines[0] if lines else type(err).__name__))[:300]


# -------------------------------------------------------------------- the child

def _build_here(root: Path, expected: str | None = None) -> Path:
    """Build the library under ``root`` in this process (the child), under the
    folder's flock; returns its path. ``expected``: the hash the caller wants (it
    read the source earlier). Raises on a failure."""
    sources = read_sources()
    h = source_hash(sources)
    if expected and h != expected:
        raise RuntimeError(f"the kernels' sources changed since the caller read them (hash {h}, not {expected})")
    folder, target = build_dir(root, h), library_path(root, h)
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.flock", "a") as lock:  # the OS releases it when this process dies
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # built by the builder we waited for
            return target
        # we hold the flock, so nobody else builds here: what is left is from dead builders
        (folder / "lock").unlink(missing_ok=True)  # torch's FileBaton
        for stale in folder.glob("build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
        try:
            copies = [scratch / path.name for path in SOURCES]  # compile exactly the bytes that were hashed
            for copy, source in zip(copies, sources):
                copy.write_bytes(source)
            from torch.utils import cpp_extension

            cpp_extension.load(namespace(h), [str(copy) for copy in copies], extra_cflags=[*CFLAGS, f"-DCFD_OPS_NAMESPACE={namespace(h)}"],
                               extra_ldflags=list(LDFLAGS), build_directory=str(scratch), is_python_module=False,
                               verbose=False)
            if _registered(namespace(h)) is None:
                raise RuntimeError(f"the library does not register every one of {namespace(h)}::{', '.join(OPS)}")
            os.replace(scratch / target.name, target)  # atomic: readers see all of it or nothing
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cfd.cpu_kernel",
                                     description="Build cfd's C++ CPU kernels (once per source, torch and flags).")
    parser.add_argument("--dir", type=Path, default=None,
                        help="cache root (default: $CFD_KERNEL_DIR, else torch's extensions folder /cfd)")
    parser.add_argument("--hash", default=None, help="fail unless the source has this hash (see source_hash)")
    args = parser.parse_args(argv)
    root = args.dir or cache_root()
    os.environ["PATH"] = child_env()["PATH"]  # this process only builds: pip's ninja where no ninja is
    start = time.monotonic()
    try:
        path = _build_here(root, args.hash)
    except Exception as err:  # noqa: BLE001 (any failure is reported in one line)
        print(f"{_FAILED}{_build_error(err)}", file=sys.stderr, flush=True)
        return 1
    print(f"cfd.cpu_kernel: {path} ({time.monotonic() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
