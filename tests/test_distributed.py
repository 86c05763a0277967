"""Multi-process data parallel (strokevision_jax.distributed): jobs of two processes on this
machine, one CPU device each, talking over 127.0.0.1 through JAX's runtime and gloo.

Every run goes through `train.main` (the train command's code) in a fresh process: `DRIVER`
shrinks the presets (PoseConv3D, 8 frames, 24 x 24 heatmaps, base width 8) so that a run
takes seconds, records which training clips each process read, and can SIGKILL a process at
the start of an epoch.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "poseconv3d"
DRIVER = """
import dataclasses, json, os, signal, sys
import jax
from strokevision_jax import loop, presets, train

real_recipe = presets.recipe


def tiny(model, preset):
    recipe = real_recipe(model, preset)
    skeleton = dataclasses.replace(recipe.skeleton, num_frames=8, compact_size=(24, 24), compact_eval_size=(24, 24))
    return recipe.replace(skeleton=skeleton, model_overrides=(("base_channels", 8), ("stage_blocks", (1, 1, 1))))


presets.recipe = tiny
real_cache = train.enable_compilation_cache


def enable_compilation_cache():  # every program cached, also the initialisers' small ones
    real_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


train.enable_compilation_cache = enable_compilation_cache
workdir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
real_loader = loop.Run.loader


def recording_loader(self, split, epoch):  # which training clips this process read
    for batch in real_loader(self, split, epoch):
        if split == "train":
            with open(os.path.join(workdir, f"reads.{jax.process_index()}.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": epoch, "index": batch["index"].tolist()}) + "\\n")
        yield batch


loop.Run.loader = recording_loader
real_epoch = loop.train_one_epoch


def train_one_epoch(run, state, epoch, log):
    if epoch == int(os.environ.get("KILL_AT_EPOCH", "-1")):  # after the previous epoch's checkpoints
        os.kill(os.getpid(), signal.SIGKILL)
    return real_epoch(run, state, epoch, log)


loop.train_one_epoch = train_one_epoch
sys.exit(train.main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, devices: int = 1, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), STROKEVISION_FAST_INIT="1",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # compiling dominates here; both sides alike
               STROKEVISION_XLA_CACHE=str(tmp_path / "xla_cache"), **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return env


def _start(args: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _job_args(port: int, process: int, processes: int = 2) -> list[str]:
    return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={process}"]


def _run_args(workdir: pathlib.Path, data_dir, **overrides) -> list[str]:
    settings = {"model": MODEL, "preset": "cpu", "dataset": "synthetic_small", "epochs": 2, "batch_size": 16,
                "workdir": workdir, "data_dir": data_dir} | overrides
    return [f"--{k}={v}" for k, v in settings.items()]


def _start_job(workdir, data_dir, tmp_path, name: str, **env_extra) -> list[tuple[subprocess.Popen, pathlib.Path]]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    job = []
    for process in range(2):
        log = tmp_path / f"{name}.{process}.log"
        job.append((_start(_run_args(workdir, data_dir) + _job_args(port, process), _env(tmp_path, **env_extra), log),
                    log))
    return job


def _wait(processes, timeout: float = 400) -> list[tuple[int, str]]:
    deadline = time.time() + timeout
    results = []
    for process, log in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for other, _ in processes:
                other.kill()
            pytest.fail(f"a process did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
        results.append((process.returncode, log.read_text()))
    return results


def _reads(workdir: pathlib.Path, process: int) -> dict[int, list[list[int]]]:
    """epoch -> the batches of training clip indices that `process` read."""
    out: dict[int, list[list[int]]] = {}
    for line in (workdir / f"reads.{process}.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["epoch"], []).append(record["index"])
    return out


# One process with 2 forced devices and a 2-process job compute the same global batch on the same
# 2-device mesh; they differ only in how the cross-device sums (BatchNorm statistics, the gradient
# all-reduce, the loss) travel: inside one XLA program, or through gloo between the processes.
# Measured on this 2-core VM: every history value and test metric identical (difference 0.0, also
# for the resumed job). RTOL leaves room for a different float32 summation order (~1e-7 relative)
# only, far below what a different batch composition or a clip read twice would change (the
# reads themselves are also checked below).
RTOL = 1e-6
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1")


def _assert_same_run(report: dict, reference: dict) -> None:
    assert [r["epoch"] for r in report["history"]] == [r["epoch"] for r in reference["history"]] == [1, 2]
    for mine, theirs in zip(report["history"], reference["history"]):
        for key in HISTORY_KEYS:
            np.testing.assert_allclose(mine[key], theirs[key], rtol=RTOL, err_msg=f"epoch {mine['epoch']} {key}")
    for key in ("accuracy", "macro_f1", "loss"):
        np.testing.assert_allclose(report["test"][key], reference["test"][key], rtol=RTOL, err_msg=f"test {key}")
    assert report["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"]


def test_two_processes_train_as_one_process_on_two_devices_and_resume_after_kill(small_data_dir, tmp_path):
    from strokevision_jax import dataset as dataset_lib

    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    one.mkdir()
    # The reference (1 process, 2 forced devices) and the 2-process job at once; then a second
    # 2-process job whose processes are SIGKILLed at the start of epoch 2 (after epoch 1's
    # checkpoints), and the same command again.
    reference = [(_start(_run_args(one, small_data_dir), _env(tmp_path, devices=2), tmp_path / "one.log"),
                  tmp_path / "one.log")]
    job = _start_job(two, small_data_dir, tmp_path, "two")
    (status, output), = _wait(reference)
    assert status == 0, output[-3000:]
    for status, output in _wait(job):
        assert status == 0, output[-3000:]
    # Compiled programs now come from the cache (tmp_path / "xla_cache").
    for status, output in _wait(_start_job(killed, small_data_dir, tmp_path, "killed", KILL_AT_EPOCH="1")):
        assert status != 0, output[-3000:]  # killed (SIGKILL, or JAX's abort once its peer is gone)
    assert (killed / "checkpoints" / "latest" / "1").is_dir()
    assert not (killed / "checkpoints" / "latest" / "2").exists()  # killed mid-run, before epoch 2 ended
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = _wait(_start_job(killed, small_data_dir, tmp_path, "resumed"))  # the same command again
    for status, output in resumed:
        assert status == 0, output[-3000:]
    assert "Resuming from the checkpoint of epoch 1" in resumed[0][1]

    reports = {name: json.loads((path / "report.json").read_text()) for name, path in
               (("one", one), ("two", two), ("killed", killed))}
    assert "(2 processes)" in reports["two"]["run"]["devices"]
    assert reports["one"]["run"]["devices"].startswith("2 x ")
    _assert_same_run(reports["two"], reports["one"])
    _assert_same_run(reports["killed"], reports["two"])  # resumed: as the uninterrupted job
    # Process 0 alone writes the run's files: one line per epoch, each test clip once.
    assert [json.loads(line)["epoch"] for line in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    test_clips = len(dataset_lib.load_source("test", "synthetic_small", small_data_dir))
    test = reports["two"]["test"]
    assert test["num_examples"] == test_clips == sum(map(sum, test["confusion_matrix"]))
    assert len((two / "test_predictions.csv").read_text().splitlines()) == 1 + test_clips

    # Each process read a disjoint half of every epoch's training clips: its rows of each global
    # batch, so that the two halves of a step, stacked, are the one-process batch of that step.
    single, halves = _reads(one, 0), [_reads(two, p) for p in range(2)]
    for epoch in (0, 1):
        first, second = (np.concatenate(h[epoch]) for h in halves)
        assert len(first) == len(second) == 24  # 3 steps x 8 clips: 48 of the 60 clips (batch 16)
        assert not set(first.tolist()) & set(second.tolist())
        stacked = [a + b for a, b in zip(halves[0][epoch], halves[1][epoch], strict=True)]
        assert stacked == single[epoch]
    assert single[0] != single[1]  # a new order every epoch


def test_unreachable_coordinator_ends_with_the_address(tmp_path):
    port = _free_port()  # nothing listens there
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "strokevision_jax.train", f"--model={MODEL}", f"--workdir={tmp_path / 'run'}",
         *_job_args(port, 1), "--initialization_timeout=3"],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"could not join the job at 127.0.0.1:{port} within --initialization_timeout=3 s" in out.stderr
    assert "nothing answers there" in out.stderr
    assert time.time() - started < 60
    assert not (tmp_path / "run").exists()  # it stopped before touching anything


@pytest.mark.parametrize("case", ["batch", "num_processes"])
def test_bad_job_ends_every_process_with_a_message(case, small_data_dir, tmp_path):
    """A global batch that does not split over the job's devices, or processes started with
    different --num_processes: every process stops with the reason, none waits for the others."""
    port = _free_port()
    started = time.time()
    processes = []
    for process in range(2):
        args = _run_args(tmp_path / "run", small_data_dir, batch_size=7 if case == "batch" else 16)
        count = 3 if case == "num_processes" and process == 1 else 2  # process 0's count forms the job
        log = tmp_path / f"{process}.log"
        processes.append((_start(args + _job_args(port, process, count), _env(tmp_path), log), log))
    for status, output in _wait(processes, timeout=180):
        assert status == 1, output[-3000:]
        if case == "batch":
            assert "--batch_size=7 (the global batch) must be a multiple of the device count, 2" in output
            assert "pass --batch_size=8 or 6" in output
        else:
            assert "were started with different --num_processes" in output
    assert time.time() - started < 150
    assert not (tmp_path / "run" / "checkpoints").exists()
