"""The C++ CPU compositor's build ahead of serving (cfd/cpu_kernel.py) and its
input checks (cfd/_composite_cpu.cpp). Every build goes to a temporary
CFD_KERNEL_DIR: two full builds in this file (a stale lock's, a killed build's
rebuild), the rest fail fast or load what those built."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from cfd import cpu_kernel as kernel
from cfd.cameras import orbit_camera
from cfd.gaussians import init_scene
from cfd.render import (ALPHA_MAX, ALPHA_MIN, T_MIN, _intersect_tiles, build_cpu_kernel, composite,
                        composite_torch, cpu_kernel, project)

REPO = Path(__file__).resolve().parent.parent
BUILD_BOUND_S = 240  # a whole build here takes 20–60 s

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: nothing builds")


def processes_under(root: Path) -> list[int]:
    """Pids of the processes working in ``root``: their command line names it, or
    their working folder is inside it (ninja and the compilers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(root) in cmdline or cwd.startswith(str(root)):
            pids.append(int(proc.name))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def lock_is_free(path: Path) -> bool:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.fixture
def fresh_process(monkeypatch):
    """This process as if it had loaded no kernel and warned nothing yet."""
    monkeypatch.setattr(kernel, "_ops", None)
    monkeypatch.setattr(kernel, "_warned", set())
    monkeypatch.setattr(kernel, "_failed_paths", set())
    monkeypatch.setattr(kernel, "_registered", lambda ns: None)
    monkeypatch.delenv("CFD_CPU_KERNEL", raising=False)


@pytest.fixture(scope="module")
def stale_lock_build(tmp_path_factory):
    """A build into a folder left as dead builders leave it — torch's FileBaton
    ``lock``, our ``build.flock``, a scratch folder — by two builders at once (two
    threads, two child processes): (root, their results, seconds taken)."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler: nothing builds")
    root = tmp_path_factory.mktemp("stale") / "kernels"
    folder = kernel.build_dir(root)
    folder.mkdir(parents=True)
    (folder / "lock").touch()
    (folder / "build.flock").touch()
    (folder / "build-dead").mkdir()
    (folder / "build-dead" / "build.ninja").write_text("garbage")
    results = [None, None]

    def build(i):
        results[i] = kernel.build(BUILD_BOUND_S, root=root)

    start = time.monotonic()
    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return root, results, time.monotonic() - start


def test_a_stale_lock_does_not_stop_the_build(stale_lock_build):
    root, results, seconds = stale_lock_build
    assert results == [True, True] and seconds < BUILD_BOUND_S
    folder = kernel.build_dir(root)
    assert kernel.library_path(root).is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["build.flock", kernel.library_path(root).name]
    assert lock_is_free(folder / "build.flock")
    assert processes_under(root) == []


def test_a_built_kernel_returns_at_once_without_a_child(stale_lock_build, monkeypatch):
    root, _, _ = stale_lock_build
    monkeypatch.setenv("CFD_KERNEL_DIR", str(root))

    def refuse(*args, **kwargs):
        raise AssertionError("started a build")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    start = time.monotonic()
    assert build_cpu_kernel() and build_cpu_kernel(timeout_s=0.001)
    assert time.monotonic() - start < 1


@needs_compiler
def test_a_killed_build_leaves_no_lock_and_the_next_build_succeeds(tmp_path):
    """kill -9 of the builder in the middle of compiling (as the OOM killer does):
    the OS drops its flock; its orphaned compiler works in a scratch folder of its
    own, so the next build neither waits nor collides with it."""
    root = tmp_path / "kernels"
    folder = kernel.build_dir(root)
    builder = subprocess.Popen([*kernel.build_command(root), "--hash", kernel.source_hash()],
                               env=kernel.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("build-*/build.ninja")):  # written just before ninja starts compiling
            assert builder.poll() is None and time.monotonic() < deadline, "the builder never started compiling"
            time.sleep(0.1)
        time.sleep(1)
        assert not lock_is_free(folder / "build.flock")  # the builder holds it
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
        assert lock_is_free(folder / "build.flock")
        start = time.monotonic()
        assert kernel.build(BUILD_BOUND_S, root=root)
        assert time.monotonic() - start < BUILD_BOUND_S
        assert kernel.library_path(root).is_file() and not list(folder.glob("build-*"))
    finally:
        kill_all(processes_under(root))  # the dead builder's orphans, if still compiling


def test_a_timeout_stops_the_build_with_its_compilers(tmp_path, monkeypatch, fresh_process):
    """A compile that outlasts the timeout (a compiler that sleeps 5 minutes first):
    the build returns False with one warning, and neither the child, nor ninja,
    nor the compiler (in a process group of its own) is left running."""
    slow = tmp_path / "slow-c++"
    slow.write_text('#!/bin/sh\ncase " $* " in *" -c "*) sleep 300 ;; esac\nexec c++ "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setenv("CXX", str(slow))
    root = tmp_path / "kernels"
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="did not build within 15 s"):
        assert not kernel.build(15, root=root)
    assert time.monotonic() - start < 15 + 5
    leftovers = processes_under(tmp_path)
    kill_all(leftovers)
    assert leftovers == []
    assert list(kernel.build_dir(root).glob("build-*/build.ninja"))  # it was stopped while compiling
    assert not kernel.library_path(root).exists()
    assert lock_is_free(kernel.build_dir(root) / "build.flock")


def test_a_missing_compiler_fails_fast_warns_once_and_torch_renders(tmp_path, monkeypatch, fresh_process):
    monkeypatch.setenv("CFD_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    args = composite_inputs()
    env = dict(os.environ)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        assert not build_cpu_kernel(timeout_s=120)
        assert time.monotonic() - start < 60
        assert dict(os.environ) == env  # the build's PATH and PYTHONPATH were the child's only
        assert cpu_kernel() is None and cpu_kernel() is None
        out = composite(*args)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "did not build" in messages[0] and "/nonexistent/c++" in messages[0] and "pure torch" in messages[0]
    assert torch.equal(out, composite_torch(*args))
    assert processes_under(tmp_path) == []


def test_an_unbuilt_kernel_is_never_built_nor_waited_for_by_a_request(tmp_path, monkeypatch, fresh_process):
    """A request with no library: None at once and one warning that says how to
    build it, though torch's ``lock`` and the build's flock are both held."""
    monkeypatch.setenv("CFD_KERNEL_DIR", str(tmp_path / "kernels"))
    folder = kernel.build_dir(tmp_path / "kernels")
    folder.mkdir(parents=True)
    (folder / "lock").touch()

    def refuse(*args, **kwargs):
        raise AssertionError("a request tried to build")

    from torch.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, "load", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    with open(folder / "build.flock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"not built .*-m cfd\.cpu_kernel.*pure torch") as caught:
            assert cpu_kernel() is None
            args = composite_inputs()   # projected by pure torch, then composited by it
            out = composite(*args)
        assert len(caught) == 1
        assert time.monotonic() - start < 5
    assert torch.equal(out, composite_torch(*args))


def test_a_read_only_cache_loads_without_building_or_writing(stale_lock_build):
    """A fresh process loads the library from a folder it may not write to,
    without a child, a compiler or any write: nothing in the folder changes. (As
    root the mode does not stop writes, so the listing is what is checked.)"""
    root, _, _ = stale_lock_build
    folder = kernel.build_dir(root)
    script = """
import subprocess, sys, warnings
import torch
from torch.utils import cpp_extension
def refuse(*args, **kwargs):
    raise AssertionError("tried to build")
cpp_extension.load = subprocess.Popen = refuse
warnings.simplefilter("error", RuntimeWarning)
from cfd.cpu_kernel import library_path
from cfd.render import build_cpu_kernel, cpu_kernel
assert build_cpu_kernel() is True
ops = cpu_kernel()
assert ops is not None and str(library_path()) in torch.ops.loaded_libraries
print("loaded", ops.forward)
"""
    before = {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}
    modes = {p: p.stat().st_mode for p in [root, folder, *folder.iterdir()]}
    try:
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        env = {**kernel.child_env(), "CFD_KERNEL_DIR": str(root)}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded" in run.stdout
    assert {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]} == before


def test_the_build_is_keyed_by_the_sources_torch_and_flags(monkeypatch, tmp_path):
    sources = kernel.read_sources()
    h = kernel.source_hash()
    assert len(sources) == 2 and h == kernel.source_hash(sources) and len(h) == 16 and int(h, 16) >= 0
    for k in range(len(sources)):   # an edit of either source is a new build
        edited = kernel.source_hash([s + b"\n// edited\n" if j == k else s for j, s in enumerate(sources)])
        assert edited != h
        assert kernel.build_dir(tmp_path, edited) != kernel.build_dir(tmp_path, h)
        assert kernel.library_path(tmp_path, edited).parent == kernel.build_dir(tmp_path, edited)
        assert kernel.namespace(edited) != kernel.namespace(h)
    monkeypatch.setattr(kernel, "CFLAGS", ("-O2", "-fopenmp"))
    assert kernel.source_hash(sources) != h
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert kernel.source_hash(sources) != h


def test_the_cache_root_is_cfd_kernel_dir_else_torchs(monkeypatch, tmp_path):
    monkeypatch.setenv("CFD_KERNEL_DIR", str(tmp_path / "a"))
    assert kernel.cache_root() == tmp_path / "a"
    monkeypatch.delenv("CFD_KERNEL_DIR")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "b"))
    assert kernel.cache_root() == tmp_path / "b" / "cfd"


def test_the_child_finds_pips_ninja_and_this_process_environment_stays(monkeypatch, tmp_path):
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ninja here
    env = dict(os.environ)
    child = kernel.child_env()
    assert ninja.BIN_DIR in child["PATH"].split(os.pathsep)
    assert str(REPO) == child["PYTHONPATH"].split(os.pathsep)[0]
    assert dict(os.environ) == env


# ------------------------------------------------------------- input checks

def composite_inputs():
    """(features, means2d, conics, opacities, depths, radii, width, height) of a small scene."""
    g = torch.Generator().manual_seed(4)
    scene = init_scene(400, seed=3, radius=0.6, opacity=0.6)
    scene.log_scales.data = torch.log(torch.rand(400, 3, generator=g) * 0.06 + 0.01)
    means2d, conics, depths, radii = project(scene, orbit_camera(10, 5, 2.5, 49, 40, 32))
    feats = torch.rand(400, 5, generator=torch.Generator().manual_seed(3))
    return feats, means2d.detach(), conics.detach(), scene.opacities.detach(), depths.detach(), radii, 40, 32


@pytest.fixture(scope="module")
def ops(stale_lock_build):
    """The kernel's ops, loaded from the build above (or, where this hash is
    loaded already, as loaded)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CFD_KERNEL_DIR", str(stale_lock_build[0]))
    mp.delenv("CFD_CPU_KERNEL", raising=False)
    try:
        loaded = cpu_kernel()
    finally:
        mp.undo()
    assert loaded is not None
    return loaded


@pytest.fixture
def call():
    """(forward args, backward args) of a valid call, as lists to spoil."""
    feats, means2d, conics, opacities, depths, radii, width, height = composite_inputs()
    isect = _intersect_tiles(means2d, radii, depths, width, height, 8)
    assert len(isect.tile_splats) > 0
    splats = [feats, means2d, conics, opacities.log()]
    forward = [isect.tile_start, isect.tile_splats, *splats, *isect.geometry, ALPHA_MIN, ALPHA_MAX, T_MIN]
    return forward, isect


def spoiled(args, index, value):
    args = list(args)
    args[index] = value
    return args


def test_a_valid_call_runs(ops, call):
    forward, isect = call
    out, final_T, n_used = ops.forward(*forward)
    grads = ops.backward(*forward[:6], torch.ones_like(out), final_T, n_used, *forward[6:])
    assert out.shape == (isect.n_tiles, 64, 5) and len(grads) == 4


@pytest.mark.parametrize("case", [
    "splat index = M", "negative splat index", "tile_start ends short", "tile_start ends past the pairs",
    "tile_start decreases", "tile_start starts past 0", "tile_start of a partial view", "means2d rows",
    "means2d columns", "conics rows", "conics columns", "log_opacities length", "width off its tiles",
    "height off its tiles", "zero tile size"])
def test_a_mismatched_forward_raises_instead_of_reading_out_of_bounds(ops, call, case):
    forward, isect = call
    start, splats = isect.tile_start, isect.tile_splats
    M = forward[2].shape[0]
    bad = {
        "splat index = M": lambda: spoiled(forward, 1, splats.clone().index_fill_(0, torch.tensor([0]), M)),
        "negative splat index": lambda: spoiled(forward, 1, splats.clone().index_fill_(0, torch.tensor([3]), -1)),
        "tile_start ends short": lambda: spoiled(forward, 0, torch.cat([start[:-1], start[-1:] - 1])),
        "tile_start ends past the pairs": lambda: spoiled(forward, 0, torch.cat([start[:-1], start[-1:] + 5])),
        "tile_start decreases": lambda: spoiled(forward, 0, torch.cat([start[:1], start[-1:], start[2:]])),
        "tile_start starts past 0": lambda: spoiled(forward, 0, torch.cat([start[:1] + 1, start[1:]])),
        "tile_start of a partial view": lambda: spoiled(forward, 0, start[:-1].contiguous()),
        "means2d rows": lambda: spoiled(forward, 3, forward[3][:-1].contiguous()),
        "means2d columns": lambda: spoiled(forward, 3, torch.zeros(M, 3)),
        "conics rows": lambda: spoiled(forward, 4, forward[4][:-1].contiguous()),
        "conics columns": lambda: spoiled(forward, 4, torch.zeros(M, 2)),
        "log_opacities length": lambda: spoiled(forward, 5, forward[5][:-1].contiguous()),
        "width off its tiles": lambda: spoiled(forward, 9, 41),
        "height off its tiles": lambda: spoiled(forward, 10, 8),
        "zero tile size": lambda: spoiled(forward, 6, 0),
    }[case]()
    with pytest.raises(RuntimeError, match=r"tile_start|tile_splats|means2d|conics|log_opacities|width|tile_size"):
        ops.forward(*bad)
    forward_ok = ops.forward(*forward)  # the valid call still runs after
    assert forward_ok[0].shape[0] == isect.n_tiles


@pytest.mark.parametrize("which,shape", [("grad_out", "tiles"), ("grad_out", "pixels"), ("grad_out", "features"),
                                         ("final_T", "tiles"), ("final_T", "pixels"), ("n_used", "tiles"),
                                         ("n_used", "pixels")])
def test_a_mismatched_backward_raises(ops, call, which, shape):
    forward, _ = call
    out, final_T, n_used = ops.forward(*forward)
    grads = {"grad_out": torch.ones_like(out), "final_T": final_T, "n_used": n_used}
    x = grads[which]
    dim = {"tiles": 0, "pixels": 1, "features": 2}[shape]
    grads[which] = x.narrow(dim, 0, x.shape[dim] - 1).contiguous()
    with pytest.raises(RuntimeError, match=which):
        ops.backward(*forward[:6], grads["grad_out"], grads["final_T"], grads["n_used"], *forward[6:])


def test_the_child_reports_a_failure_in_one_line(tmp_path):
    """``python -m cfd.cpu_kernel`` (what ``make`` runs) exits 1 with one line on a
    source that changed under it; its output is what a failed build warns."""
    run = subprocess.run([*kernel.build_command(tmp_path), "--hash", "0" * 16], env=kernel.child_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("cfd.cpu_kernel: build failed: ")
    assert "changed" in run.stderr and "cfd.cpu_kernel:" not in run.stdout
    assert not kernel.library_path(tmp_path).exists()
