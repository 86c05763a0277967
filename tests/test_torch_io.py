"""Reading torch checkpoints without torch: formats, safety, errors, the converter CLI."""

import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from checkpoints_convert import CheckpointError, UnsafeCheckpointError, read_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_checkpoint(path: pathlib.Path, payload) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("archive/version", "3\n")


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    for name, write in [("zip.pth", _zip_checkpoint),
                        ("legacy.pth", lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=2)))]:
        path = tmp_path / name
        write(path, {"weight": _RunsCode(marker)})
        with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
            read_checkpoint(path)
        assert not marker.exists(), "unpickling ran code from the file"
    # Unpickling it for real would run it: the test above is not vacuous.
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()


def test_arbitrary_classes_are_refused(tmp_path):
    path = tmp_path / "module.pth"
    _zip_checkpoint(path, {"model": pathlib.Path("x")})
    with pytest.raises(UnsafeCheckpointError, match="pathlib"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(junk)


def _write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_safetensors(tmp_path):
    tensors = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": np.arange(3, dtype=np.int64), "c": np.ones((2, 2), np.float16)}
    _write_safetensors(tmp_path / "x.safetensors", tensors)
    out = read_checkpoint(tmp_path / "x.safetensors")
    assert list(out) == list(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(out[key], value)
        assert out[key].dtype == value.dtype


def test_torch_formats_match_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch to write the files")
    state = {"w": torch.randn(3, 4), "t": torch.randn(4, 3).t(), "slice": torch.arange(10)[2:7],
             "bf16": torch.randn(5).bfloat16(), "half": torch.randn(2, 2).half(),
             "flag": torch.tensor(True), "empty": torch.zeros(0, 3)}
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}):
        path = tmp_path / "state.pth"
        torch.save(state, path, **kwargs)
        out = read_checkpoint(path)
        assert list(out) == list(state)
        for key, tensor in state.items():
            expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
            assert out[key].shape == expected.shape, key
            np.testing.assert_array_equal(np.asarray(out[key], expected.dtype), expected, err_msg=key)


def test_convert_cli_without_torch(tmp_path):
    """`python -m checkpoints_convert` on a torch.save file, with torch unimportable."""
    torch = pytest.importorskip("torch", reason="needs torch to write the file")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.video.mc3_18(num_classes=7).eval()
    src = tmp_path / "mc3.pth"
    torch.save(model.state_dict(), src)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.save(tmp_path / "x.npy", x.permute(0, 2, 3, 4, 1).numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        sys.modules["torchvision"] = None
        from checkpoints_convert.__main__ import main
        code = main(["--model=mc3_18", "--src={src}", "--out={tmp_path / 'out'}"])
        assert code == 0, code
        import numpy as np
        from flax import nnx
        from checkpoints_convert import restore_converted
        from strokevision_jax.models import MODELS
        model = restore_converted(MODELS["mc3_18"](num_classes=7, rngs=nnx.Rngs(5)), "{tmp_path / 'out'}")
        np.save("{tmp_path / 'logits.npy'}", np.asarray(model(np.load("{tmp_path / 'x.npy'}"))))
        assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mc3_18:" in result.stdout and "7 classes" in result.stdout
    logits = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(logits, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_convert_cli_errors(tmp_path, capsys):
    from checkpoints_convert.__main__ import main

    assert main(["--model=nope", f"--src={tmp_path / 'x.pth'}", f"--out={tmp_path}"]) == 1
    assert "r2plus1d_18" in capsys.readouterr().err  # lists the valid names
    path = tmp_path / "wrong.safetensors"
    _write_safetensors(path, {"fc.weight": np.zeros((4, 512), np.float32), "extra": np.zeros(3, np.float32)})
    assert main(["--model=r3d_18", f"--src={path}", f"--out={tmp_path / 'o'}"]) == 1
    err = capsys.readouterr().err
    assert "unexpected keys" in err and "extra" in err and "missing" in err and "stem.0.kernel" in err
