import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from cfd.gaussians import GaussianScene, init_scene, load_ply, save_ply


def random_scene(n, degree, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianScene(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g),
                         torch.randn(n, 4, generator=g), torch.randn(n, generator=g),
                         torch.randn(n, k, 3, generator=g))


@pytest.mark.parametrize("degree", [0, 3])
def test_round_trip_is_bit_exact(tmp_path, degree):
    scene = random_scene(257, degree)
    path = tmp_path / "s.ply"
    save_ply(scene, path)
    back = load_ply(path)
    assert back.sh_degree == degree
    for name, t in scene.tensors().items():
        assert torch.equal(getattr(back, name), t), name


def test_inria_layout(tmp_path):
    scene = random_scene(10, 3)
    save_ply(scene, tmp_path / "s.ply")
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert ply.header.count("binary_little_endian") == 1
    names = [p.name for p in ply["vertex"].properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    v = ply["vertex"].data
    # f_rest is channel-major: the 15 higher bands of red first
    assert np.float32(v["f_rest_0"][3]) == scene.sh[3, 1, 0].item()
    assert np.float32(v["f_rest_15"][3]) == scene.sh[3, 1, 1].item()
    assert np.float32(v["f_rest_16"][3]) == scene.sh[3, 2, 1].item()


def write(path, fields, n=4, dtype="f4"):
    data = np.zeros(n, dtype=[(f, dtype) for f in fields])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "bad.ply"
    write(path, [f for f in BASE if f != "opacity"])
    with pytest.raises(ValueError, match=r"bad\.ply.*opacity"):
        load_ply(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "double.ply"
    write(path, BASE, dtype="f8")
    with pytest.raises(ValueError, match=r"double\.ply.*float32"):
        load_ply(path)


def test_truncated_body(tmp_path):
    path = tmp_path / "cut.ply"
    save_ply(init_scene(100), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match=r"cut\.ply"):
        load_ply(path)


def test_not_a_ply_and_missing_file(tmp_path):
    path = tmp_path / "text.ply"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.ply.*not a readable PLY"):
        load_ply(path)
    with pytest.raises(ValueError, match="no such file"):
        load_ply(tmp_path / "absent.ply")


def test_minimal_fields_without_normals_load(tmp_path):
    path = tmp_path / "min.ply"
    write(path, BASE)
    scene = load_ply(path)
    assert len(scene) == 4 and scene.sh_degree == 0


def test_a_failed_write_leaves_no_half_file_and_its_temp_name_is_one_the_sweep_knows(tmp_path, monkeypatch):
    from cfd.files import PARTIAL_FILE

    written = []

    def half_then_fail(self, stream):
        written.append(stream)
        with open(stream, "wb") as f:
            f.write(b"ply\nformat binary_little_endian 1.0\n")   # half a file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PlyData, "write", half_then_fail)
    with pytest.raises(OSError):
        save_ply(init_scene(10, seed=0), tmp_path / "scene.ply")
    assert PARTIAL_FILE.match(written[0].rsplit("/", 1)[-1]), written   # the pipeline's sweep removes such names
    assert not any(tmp_path.iterdir())
