"""3D Gaussian splat scenes: parameters, initialisation, INRIA PLY I/O, and the
3DGS-style grow/prune operations on a scene and its Adam state (the policy of
when and where is ``cfd.densify``).

Parameters are stored *unactivated*, exactly as in the INRIA 3DGS PLY:
means [N,3], log-scales [N,3], quaternions (w,x,y,z, unnormalised) [N,4],
opacity logits [N], spherical-harmonics coefficients [N,K,3] with
K = (degree+1)**2 and sh[:, 0] the DC term (rgb = 0.5 + SH_C0 · sh[:, 0]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .files import atomic_path

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh")


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as ``rgb`` (in [0, 1])."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    """Colour of a DC coefficient, before clamping."""
    return sh_dc * SH_C0 + 0.5


@dataclass
class GaussianScene:
    """A set of N Gaussian splats (unactivated parameters, see module doc)."""

    means: Tensor           # [N, 3] world units
    log_scales: Tensor      # [N, 3] log of the standard deviations along the axes
    quats: Tensor           # [N, 4] w, x, y, z (normalised when used)
    opacity_logits: Tensor  # [N]    opacity = sigmoid(logit)
    sh: Tensor              # [N, K, 3]

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianScene.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        k = self.sh.shape[1] if self.sh.dim() == 3 else -1
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or math.isqrt(k) ** 2 != k:
            raise ValueError(f"GaussianScene.sh has shape {tuple(self.sh.shape)}, expected ({n}, (degree+1)**2, 3)")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[1]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def scales(self) -> Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def colors(self) -> Tensor:
        """[N, 3] view-independent (DC) colour in [0, 1]."""
        return sh_to_rgb(self.sh[:, 0]).clamp(0, 1)

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> "GaussianScene":
        """A new scene with ``fn`` applied to every parameter tensor."""
        return GaussianScene(**{k: fn(v) for k, v in self.tensors().items()})

    def to(self, device) -> "GaussianScene":
        return self.map(lambda t: t.to(device))

    def detach(self) -> "GaussianScene":
        return self.map(lambda t: t.detach())

    def clone(self) -> "GaussianScene":
        return self.map(lambda t: t.detach().clone())

    def requires_grad_(self, flag: bool = True) -> "GaussianScene":
        for t in self.tensors().values():
            t.requires_grad_(flag)
        return self

    def select(self, index: Tensor) -> "GaussianScene":
        """The splats at ``index`` (bool mask or integer indices)."""
        return self.map(lambda t: t[index])

    def with_sh_degree(self, degree: int) -> "GaussianScene":
        """Same splats with SH truncated or zero-padded to ``degree``."""
        k = (degree + 1) ** 2
        sh = self.sh[:, :k]
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(len(self), k - sh.shape[1], 3)], dim=1)
        return GaussianScene(self.means, self.log_scales, self.quats, self.opacity_logits, sh)

    @staticmethod
    def cat(scenes: list["GaussianScene"]) -> "GaussianScene":
        degree = max(s.sh_degree for s in scenes)
        scenes = [s.with_sh_degree(degree) for s in scenes]
        return GaussianScene(**{name: torch.cat([getattr(s, name) for s in scenes]) for name in PARAM_NAMES})


def make_scene(means: Tensor, scales: Tensor, colors: Tensor, opacities: Tensor,
               quats: Tensor | None = None, sh_degree: int = 0) -> GaussianScene:
    """A scene from *activated* values: scales [N,3] (std devs), colours [N,3]
    in [0,1], opacities [N] in (0,1), optional quats [N,4] (default identity)."""
    n = means.shape[0]
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).clone() if quats is None else quats
    sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh(colors.float())
    eps = 1e-6
    op = opacities.float().clamp(eps, 1 - eps)
    return GaussianScene(means.float(), scales.float().log(), quats.float(), torch.log(op / (1 - op)), sh)


def init_scene(n: int = 4096, seed: int = 0, radius: float = 0.5, mode: str = "ball",
               sh_degree: int = 0, opacity: float = 0.1, color_jitter: float = 0.1) -> GaussianScene:
    """``n`` isotropic splats at random points in a ball (``mode="ball"``) or on a
    sphere (``"sphere"``) of ``radius``, grey ± ``color_jitter``, scale ≈ the mean
    point spacing, opacity ``opacity``. Seeded, CPU, float32."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    if mode == "ball":
        r = radius * torch.rand(n, 1, generator=g) ** (1 / 3)
        spacing = radius * (4 / 3 * math.pi / n) ** (1 / 3)
    elif mode == "sphere":
        r = torch.full((n, 1), radius)
        spacing = radius * math.sqrt(4 * math.pi / n)
    else:
        raise ValueError(f"init_scene: unknown mode {mode!r}; use 'ball' or 'sphere'")
    colors = (0.5 + color_jitter * (2 * torch.rand(n, 3, generator=g) - 1)).clamp(0, 1)
    return make_scene(direction * r, torch.full((n, 3), 0.5 * spacing), colors,
                      torch.full((n,), opacity), sh_degree=sh_degree)


# --------------------------------------------------------------------------- PLY

def _ply_names(n_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_ply(scene: GaussianScene, path) -> None:
    """Write ``scene`` as an INRIA 3DGS binary little-endian float32 PLY.

    Fields: x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3, with
    f_rest channel-major (all of R's higher bands, then G's, then B's). The file is
    written to a temporary name and renamed (``files.atomic_path``), so a failure
    never leaves half a file.
    """
    from plyfile import PlyData, PlyElement

    s = scene.detach().to("cpu")
    n, k = len(s), s.sh.shape[1]
    rest = s.sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1))
    columns = torch.cat([s.means, torch.zeros(n, 3), s.sh[:, 0], rest, s.opacity_logits[:, None],
                         s.log_scales, s.quats], dim=1).float().numpy()
    names = _ply_names(3 * (k - 1))
    data = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        data[name] = columns[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(tmp))


def load_ply(path) -> GaussianScene:
    """Read an INRIA 3DGS PLY (any SH degree) into a CPU float32 scene.

    Raises InputError (a ValueError) naming the file and the problem for unreadable files,
    missing fields, non-float32 fields or an inconsistent number of SH terms.
    """
    from plyfile import PlyData

    path = Path(path)
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
        data = vertex.data
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:  # plyfile raises several types for damaged files
        raise InputError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc}). "
                         "Expected a 3D Gaussian splat PLY in the INRIA 3DGS layout.") from None
    props = {p.name: p.val_dtype for p in vertex.properties}
    n_rest = sum(1 for name in props if name.startswith("f_rest_"))
    required = [n for n in _ply_names(n_rest) if n not in ("nx", "ny", "nz")]
    missing = [n for n in required if n not in props]
    if missing:
        raise InputError(f"{path}: missing vertex field(s) {', '.join(missing)}; "
                         "a 3D Gaussian splat PLY needs x y z f_dc_0..2 opacity scale_0..2 rot_0..3")
    wrong = [f"{n} ({props[n]})" for n in required if np.dtype(props[n]) != np.dtype("float32")]
    if wrong:
        raise InputError(f"{path}: field(s) {', '.join(wrong)} must be float32")
    if n_rest % 3 or math.isqrt(n_rest // 3 + 1) ** 2 != n_rest // 3 + 1:
        raise InputError(f"{path}: {n_rest} f_rest fields do not match any SH degree "
                         "(expected 3·((d+1)²−1): 0, 9, 24 or 45)")

    def col(names):
        return torch.from_numpy(np.stack([np.asarray(data[n], dtype=np.float32) for n in names], axis=1))

    n = len(data)
    k = n_rest // 3 + 1
    rest = col([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    sh = torch.cat([col(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1)
    scene = GaussianScene(col(["x", "y", "z"]), col(["scale_0", "scale_1", "scale_2"]),
                          col(["rot_0", "rot_1", "rot_2", "rot_3"]), col(["opacity"])[:, 0], sh.contiguous())
    if not all(torch.isfinite(t).all() for t in scene.tensors().values()):
        raise InputError(f"{path}: contains NaN or infinite values")
    return scene


# ---------------------------------------------------------- grow, prune, reset

def make_optimizer(scene: GaussianScene, lrs: dict[str, float], betas=(0.9, 0.99), eps: float = 1e-15
                   ) -> torch.optim.Adam:
    """Adam with one parameter group per scene tensor, named as in PARAM_NAMES;
    ``lrs`` maps each name to its learning rate."""
    scene.requires_grad_(True)
    groups = [{"params": [getattr(scene, name)], "lr": lrs[name], "name": name} for name in PARAM_NAMES]
    return torch.optim.Adam(groups, betas=betas, eps=eps)


def remap_splats(scene: GaussianScene, optimizer: torch.optim.Adam, source: Tensor,
                 new_values: dict[str, Tensor] | None = None, fresh: Tensor | None = None) -> GaussianScene:
    """Rebuild ``scene`` as the splats ``scene[source]`` and move the Adam state with
    them, in place in ``optimizer``.

    source: [M] long, index of the old splat each new splat comes from.
    new_values: optional replacement tensors (M rows) per parameter name.
    fresh: optional [M] bool, new splats whose Adam moments start at zero.
    Returns the new scene (leaf tensors that ``optimizer`` now optimises).
    """
    new_values = new_values or {}
    tensors = {}
    for group in optimizer.param_groups:
        name, old = group["name"], group["params"][0]
        new = new_values.get(name, old.detach()[source]).detach().clone().requires_grad_(True)
        state = optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                moved = state[key][source]
                if fresh is not None:
                    moved[fresh] = 0
                state[key] = moved
            optimizer.state[new] = state
        group["params"][0] = new
        tensors[name] = new
    return GaussianScene(**tensors)


def grow_splats(scene: GaussianScene, optimizer: torch.optim.Adam, clone: Tensor, split: Tensor,
                generator: torch.Generator) -> GaussianScene:
    """Clone and split splats, in place in ``optimizer`` (gsplat's ``duplicate``
    and ``split``).

    clone: [N] bool, splats copied exactly; the copy's Adam moments start at zero.
    split: [N] bool, splats replaced by two samples of their own Gaussian (offsets
    drawn from ``generator``, a CPU generator) with scales / 1.6, both with zero
    Adam moments. Returns the new scene: the unsplit splats in their order, then
    the clones, then the split halves.
    """
    with torch.no_grad():
        dev = scene.device
        idx = torch.arange(len(scene), device=dev)
        kept, cloned, halves = idx[~split], idx[clone & ~split], idx[split].repeat(2)
        source = torch.cat([kept, cloned, halves])
        values = {name: getattr(scene, name).detach()[source].clone() for name in PARAM_NAMES}
        rows = slice(len(kept) + len(cloned), len(source))
        if len(halves):
            s = values["log_scales"][rows].exp()
            R = quat_to_rotmat(values["quats"][rows])
            offset = torch.randn(len(halves), 3, generator=generator).to(dev) * s
            values["means"][rows] += (R @ offset[:, :, None])[:, :, 0]
            values["log_scales"][rows] -= math.log(1.6)
        fresh = torch.zeros(len(source), dtype=torch.bool, device=dev)
        fresh[len(kept):] = True
        return remap_splats(scene, optimizer, source, values, fresh)


def prune_splats(scene: GaussianScene, optimizer: torch.optim.Adam, prune: Tensor) -> GaussianScene:
    """Remove the splats where ``prune`` ([N] bool) is set, in place in ``optimizer``."""
    return remap_splats(scene, optimizer, torch.nonzero(~prune).reshape(-1))


def reset_opacity(scene: GaussianScene, optimizer: torch.optim.Adam, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacities' Adam
    moments, in place (3DGS's periodic opacity reset)."""
    with torch.no_grad():
        scene.opacity_logits.clamp_(max=math.log(value / (1 - value)))
        state = optimizer.state.get(scene.opacity_logits)
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key].zero_()


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N,4] (w,x,y,z) → [N,3,3] rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)
