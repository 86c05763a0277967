"""Failure modes a new user meets, and what each must do instead of breaking: building from any
kind of script, damaged checkpoints (the workdir lock is tests/test_workdir_lock.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from strokevision_jax import checkpoints as checkpoints_lib
from strokevision_jax import train
from tests.torch_names import torch_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]

BUILD_AND_READ = """
import tensorflow_datasets as tfds
import tfds_builder.strokevision  # registers strokevision
data_dir = {data_dir!r}
tfds.builder("strokevision/synthetic_small", data_dir=data_dir).download_and_prepare()
print("train clips:", len(tfds.data_source("strokevision/synthetic_small", split="train", data_dir=data_dir)))
"""


@pytest.mark.parametrize("how", ["unguarded script", "stdin"])
def test_a_plain_tfds_script_builds_and_reads(tmp_path, how):
    """TFDS's way: download_and_prepare() at a script's top level, no __main__ guard (or the
    script fed on standard input). The build's workers must not re-run the caller's script."""
    code = BUILD_AND_READ.format(data_dir=str(tmp_path / "tfds"))
    script = tmp_path / "build.py"
    script.write_text(code)
    command = [sys.executable, str(script)] if how == "unguarded script" else [sys.executable, "-"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, input=code if how == "stdin" else None, capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train clips: 60" in result.stdout
    assert "Traceback" not in result.stderr


def test_worker_pool_keeps_order_and_reports_a_failing_task():
    from tfds_builder.strokevision.workers import WorkerError, WorkerPool

    with WorkerPool(2) as pool:
        assert list(pool.imap(divmod, [(n, 3) for n in range(10)], chunksize=3)) == [divmod(n, 3) for n in range(10)]
        with pytest.raises(WorkerError, match="ZeroDivisionError"):
            list(pool.imap(divmod, [(1, 1), (1, 0)], chunksize=1))
    with pytest.raises(ValueError, match="module-level"):
        with WorkerPool(1) as pool:
            list(pool.imap(lambda x: x, [(1,)]))


# ----------------------------------------------------------------------------- checkpoints

def _state(epoch: int) -> dict:
    return {"w": jnp.full((4, 8), float(epoch)), "step": jnp.asarray(epoch, jnp.int32)}


def _two_epochs(workdir: pathlib.Path) -> checkpoints_lib.Checkpoints:
    saved = checkpoints_lib.Checkpoints(workdir, log=None)
    for epoch in (1, 2):
        saved.save(saved.latest, epoch, _state(epoch), {"epoch": epoch, "history": [epoch]})
    saved.close()
    return saved


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


def test_a_truncated_file_of_the_latest_checkpoint_never_breaks_a_restore(tmp_path, capfd):
    """Each file of the newest step truncated in turn: the file list written at save time tells,
    and the restore gives the older intact step with a log line, without orbax's own failure
    (which floods stderr with tracebacks). Without the list (checkpoints of an older version) the
    restore still never raises or returns other values than those saved."""
    workdir = tmp_path / "run"
    _two_epochs(workdir)
    newest = workdir / "checkpoints" / "latest" / "2"
    files = _files(newest)
    assert len(files) >= 4
    fell_back = []
    for path in files:
        scratch = tmp_path / f"scratch-{len(fell_back)}-{path.name}"
        subprocess.run(["cp", "-r", str(workdir), str(scratch)], check=True)
        damaged = scratch / path.relative_to(workdir)
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        lines = []
        checkpoints = checkpoints_lib.Checkpoints(scratch, log=lines.append)
        state, meta = checkpoints.restore(checkpoints.latest, _state(0))
        checkpoints.close()
        expected = _state(meta["epoch"])
        assert np.array_equal(state["w"], expected["w"]) and int(state["step"]) == meta["epoch"]
        if meta["epoch"] == 1:
            fell_back.append(path.name)
            assert any("is damaged and skipped" in line and "/latest/2" in line for line in lines), lines
            assert (scratch / "checkpoints" / "damaged" / "latest-2").is_dir()  # set aside, not deleted
        else:
            assert not lines
    assert fell_back == [path.name for path in files]  # every truncation is caught by the list
    assert "Traceback" not in capfd.readouterr().err

    # Without the file lists: orbax's errors are the only check; some files are not read at all.
    unlisted = []
    for path in files:
        scratch = tmp_path / f"unlisted-{len(unlisted)}"
        subprocess.run(["cp", "-r", str(workdir), str(scratch)], check=True)
        subprocess.run(["rm", "-r", str(scratch / "checkpoints" / "verify")], check=True)
        damaged = scratch / path.relative_to(workdir)
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        checkpoints = checkpoints_lib.Checkpoints(scratch, log=None)
        state, meta = checkpoints.restore(checkpoints.latest, _state(0))
        checkpoints.close()
        assert np.array_equal(state["w"], _state(meta["epoch"])["w"])
        unlisted.append(meta["epoch"])
    assert 1 in unlisted


def test_every_step_damaged_is_a_named_error(tmp_path):
    workdir = tmp_path / "run"
    _two_epochs(workdir)
    for step in ("1", "2"):
        for path in _files(workdir / "checkpoints" / "latest" / step):
            path.write_bytes(b"")
    checkpoints = checkpoints_lib.Checkpoints(workdir, log=None)
    with pytest.raises(checkpoints_lib.CheckpointDamaged, match=r"(?s)every checkpoint in .*latest is damaged.*"
                                                                r"Delete .*latest and run train again"):
        checkpoints.restore(checkpoints.latest, _state(0))
    checkpoints.close()
    assert issubclass(checkpoints_lib.CheckpointDamaged, train.TrainingError)  # main: "error: ...", exit 1


# ----------------------------------------------------------------------------- converter messages

def test_a_checkpoint_of_another_model_is_named_first():
    from checkpoints_convert import api
    from strokevision_jax.models import registry

    state_dict = torch_state_dict(registry.get("r3d"))
    with pytest.raises(api.ConversionError) as error:
        api.from_state_dict("r2plus1d_18", state_dict, num_classes=4)
    first_line = str(error.value).splitlines()[0]
    assert first_line.startswith("the file looks like a r3d_18 checkpoint")
    assert "pass --model=r3d_18" in first_line
    with pytest.raises(api.ConversionError, match="none of the file's 2 keys belong to a model"):
        api.from_state_dict("r3d_18", {"encoder.weight": np.zeros((2, 2)), "decoder.bias": np.zeros(2)})


def test_a_truncated_pth_says_so(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from checkpoints_convert import __main__ as cli
    from checkpoints_convert import api

    path = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.zeros(400, 512), "fc.bias": torch.zeros(400)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(api.CheckpointError, match="truncated or damaged torch.save archive"):
        api.load_torch_checkpoint("r3d_18", path)
    # The command line: one clear line, exit status 1, nothing written.
    assert cli.main(["--model=r3d_18", f"--src={path}", f"--out={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truncated or damaged torch.save archive" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
