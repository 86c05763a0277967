"""`python -m strokevision_jax.benchmark` on the CPU: a tiny smoke run (train, infer, the loader
table and, with torch installed, the PyTorch comparison), the same on 2 forced host devices in a
subprocess, and the pieces that decide figures (peak table, batch check, A/B report)."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from strokevision_jax import benchmark, presets
from strokevision_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_TORCH = all(importlib.util.find_spec(name) for name in ("torch", "torchvision"))
# R3D-18 at base width 4 (cpu preset: one block per stage) on 2 x 16 x 16 clips, batch 2.
TINY = ["--models=r3d_18", "--preset=cpu", "--frames=2", "--crop=16,16", '--overrides={"base_width": 4}',
        "--batch_size=2", "--steps=2", "--warmup=1"]
PEAK_TFLOPS = 0.5  # any value: MFU on a CPU is only computed with --peak_tflops


def _positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One in-process run of TINY (XLA's optimisations off: compile time dominates here)."""
    tmp = tmp_path_factory.mktemp("benchmark")
    argv = TINY + ["--modes=train,infer,pipeline", "--workers=0", "--pipeline_batches=1",
                   "--pipeline_source=fake", f"--peak_tflops={PEAK_TFLOPS}", f"--out={tmp / 'r.json'}",
                   f"--markdown={tmp / 'r.md'}"]
    if HAS_TORCH:
        argv += ["--compare=torch", "--torch_variants=eager", "--rounds=2"]
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        status = benchmark.main(argv)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    assert status == 0
    return json.loads((tmp / "r.json").read_text()), (tmp / "r.md").read_text()


def _jax_rows(report) -> dict:
    return {r["mode"]: r for r in report["results"] if r["framework"] == "jax"}


def test_smoke_run_records_every_figure(smoke):
    report, _ = smoke
    env = report["environment"]
    assert env["device_count"] == jax.device_count() and env["jax"] == jax.__version__
    assert env["backend"] == "cpu" and env["jaxlib"] and env["flax"]
    rows = _jax_rows(report)
    assert set(rows) == {"train", "infer"}
    for mode, row in rows.items():
        step = row["step"]
        assert step["steps"] == 2, mode
        for value in (row["compile_s"], row["first_step_s"], step["median_s"], row["clips_per_s"],
                      row["flops_per_clip"], row["memory_plan_bytes"], row["peak_memory_bytes"]):
            assert _positive(value), (mode, row)
        assert step["p10_s"] <= step["median_s"] <= step["p90_s"]
        assert row["clips_per_s"] == pytest.approx(2 / step["median_s"], rel=1e-12)
        assert row["input"] == "2x16x16x3 float32" and row["batch_size"] == 2
        assert row["peak_memory_kind"].startswith("host RSS")
        assert 0.0 < row["mfu"] < 1.0  # its formula: test_mfu_and_ratios_of_known_figures
    # The backward pass and the update cost more than the forward alone (about 3x).
    assert 1.5 < rows["train"]["flops_per_clip"] / rows["infer"]["flops_per_clip"] < 6
    (loader,) = report["pipeline"]
    assert loader["workers"] == 0 and _positive(loader["clips_per_s"])
    assert loader["output"] == "2x16x16x3 float32"


def test_smoke_markdown_table(smoke):
    report, table = smoke
    assert "| model | mode | framework | precision |" in table
    assert "| r3d_18 | train | jax | fp32 | 2 | 2x16x16x3 float32 |" in table
    assert "| r3d_18 | cpu | 2 | 0 | fake records" in table
    assert report["command"].startswith("python -m strokevision_jax.benchmark --models=r3d_18")


@pytest.mark.skipif(not HAS_TORCH, reason="--compare=torch needs torch and torchvision")
def test_smoke_torch_comparison(smoke):
    report, table = smoke
    rows = _jax_rows(report)
    torch_rows = {r["mode"]: r for r in report["results"] if r["framework"] == "torch eager"}
    assert set(torch_rows) == {"train", "infer"}
    for mode, row in torch_rows.items():
        assert _positive(row["clips_per_s"]) and row["torch_precision"] == "float32"
        assert row["step"]["steps"] == 2  # one per round, two rounds
        assert row["jax_over_this"] == pytest.approx(rows[mode]["clips_per_s"] / row["clips_per_s"])
    # The JAX model holds the torch model's converted weights: float32 logits agree.
    assert torch_rows["infer"]["max_abs_logit_diff"] <= 1e-4
    assert "max |logit difference| JAX vs torch eager" in table


def test_two_forced_host_devices(smoke, tmp_path):
    """The data-parallel path: the batch split over 2 devices, the state replicated."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    out = tmp_path / "r.json"
    command = [sys.executable, "-m", "strokevision_jax.benchmark", *TINY, "--modes=train,infer", f"--out={out}"]
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["device_count"] == 2
    assert report["command"].startswith("XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m")
    rows, one_device = _jax_rows(report), _jax_rows(smoke[0])
    for row in rows.values():
        assert _positive(row["clips_per_s"]) and row["mfu"] is None  # CPU: no peak without --peak_tflops
    # FLOPs are counted per device and scaled by the device count: inference costs the same per
    # clip as on one device; a training step more, as each device repeats the optimiser update.
    assert rows["infer"]["flops_per_clip"] == pytest.approx(one_device["infer"]["flops_per_clip"], rel=0.02)
    assert rows["train"]["flops_per_clip"] > one_device["train"]["flops_per_clip"]
    assert "2 x cpu" in result.stdout


def test_batch_must_split_over_the_devices():
    benchmark.check_batch(8, 4, "r3d_18")
    with pytest.raises(benchmark.UsageError, match=r"r3d_18: .* 3 devices, so it must be a multiple of 3; "
                                                   r"pass --batch_size=9"):
        benchmark.check_batch(8, 3, "r3d_18")


def test_mfu_and_ratios_of_known_figures():
    """2 GFLOP a clip at 100 clips/s on 2 devices of 1 TFLOP/s each is 10 % MFU; the torch row's
    50 clips/s at the same FLOPs is 5 %, and JAX is 2x faster."""
    records = [{"flops_per_clip": 2e9, "peak_flops_per_device": 1e12, "clips_per_s": 100.0},
               {"clips_per_s": 50.0}, {"clips_per_s": None}]
    benchmark._add_ratios(records, device_count=2)
    assert records[0]["mfu"] == pytest.approx(0.10) and "jax_over_this" not in records[0]
    assert records[1]["mfu"] == pytest.approx(0.05) and records[1]["jax_over_this"] == pytest.approx(2.0)
    assert records[2]["mfu"] is None and "jax_over_this" not in records[2]


def test_peak_table():
    assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == pytest.approx(989.4e12)
    assert benchmark.peak_flops("NVIDIA H100 PCIe", "bfloat16")[0] == pytest.approx(756.5e12)
    assert benchmark.peak_flops("NVIDIA H200", "bfloat16")[0] == pytest.approx(989.4e12)
    assert benchmark.peak_flops("NVIDIA H200 NVL", "bfloat16")[0] == pytest.approx(835.5e12)
    assert benchmark.peak_flops("NVIDIA A100-SXM4-80GB", "float32")[0] == pytest.approx(156e12)
    assert benchmark.peak_flops("NVIDIA L4", "bfloat16")[0] == pytest.approx(121e12)
    assert benchmark.peak_flops("NVIDIA L40S", "bfloat16")[0] == pytest.approx(362.1e12)
    assert benchmark.peak_flops("TPU v5 lite", "bfloat16")[0] == pytest.approx(197e12)
    peak, why = benchmark.peak_flops("Tesla V100-SXM2-16GB", "bfloat16")
    assert peak is None and "pass --peak_tflops" in why
    peak, why = benchmark.peak_flops("Some Future GPU", "float32")
    assert peak is None and "'Some Future GPU'" in why
    assert benchmark.peak_flops("Some Future GPU", "float32", 100.0) == (1e14, "--peak_tflops=100")


def test_recipe_follows_the_command_line():
    settings = benchmark.Settings(preset="cpu", dtype="bfloat16", batch_size=4, frames=4, crop=(80, 80),
                                  overrides=(("base_width", 8),))
    recipe = benchmark.benchmark_recipe("r2plus1d_18", settings)
    assert (recipe.batch_size, recipe.compute_dtype, recipe.video.num_frames) == (4, "bfloat16", 4)
    assert recipe.video.crop == (80, 80) and recipe.video.resize == (80, 80)  # resize grown to the crop
    assert dict(recipe.model_overrides) == {"base_width": 8, "stage_blocks": (1, 1, 1, 1)}
    mvit = benchmark.benchmark_recipe("mvit_v2_s", benchmark.Settings(preset="cpu", frames=4, crop=(32, 32)))
    overrides = dict(mvit.model_overrides)  # the input size follows the clip; the rest is the preset's
    assert (overrides["temporal_size"], overrides["spatial_size"]) == (4, (32, 32))
    assert overrides["block_setting"] == dict(presets.recipe("mvit_v2_s", "cpu").model_overrides)["block_setting"]


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch and torchvision")
@pytest.mark.parametrize("name", ["r2plus1d_18", "mc3_18"])
def test_slim_torch_references_convert_into_the_cpu_models(name):
    """torchvision's blocks at the cpu preset's widths (11-channel (2+1)D stem, widths 16-128,
    one block per stage): every tensor converts into the JAX model, shapes checked."""
    recipe = benchmark.benchmark_recipe(name, benchmark.Settings(preset="cpu"))
    reference = registry.torch_reference(benchmark._model_config(recipe))
    model = benchmark._converted_model(reference, recipe, seed=0)
    assert model.config.base_width == 16 and reference.fc.in_features == 128
    assert len(reference.layer1) == 1


def test_usage_errors(capsys):
    assert benchmark.main(["--models=nope", "--modes=train"]) == 2
    assert "--models: Unknown model 'nope'; models: r2plus1d_18" in capsys.readouterr().err
    assert benchmark.main(["--modes=fly"]) == 2
    assert "choose from train, infer, pipeline" in capsys.readouterr().err
    assert benchmark.main(["--crop=112"]) == 2
    assert "give H,W" in capsys.readouterr().err
    jax.devices()  # the backend has started: flags can no longer reach XLA
    assert benchmark.main(["--xla_flags=--xla_gpu_autotune_level=0", "--models=r3d_18"]) == 2
    assert "run the command in a fresh process" in capsys.readouterr().err


def test_xla_flags_before_the_backend_starts_and_the_import_order():
    """In a fresh process: the public backend probe says False until JAX starts a backend, so
    --xla_flags reach XLA_FLAGS, then True; it leaves jax_num_cpu_devices as it was."""
    code = """
import os, jax
from strokevision_jax.benchmark import cli, hardware
before = jax.config.jax_num_cpu_devices
assert not hardware.backend_started()
cli.apply_xla_flags("--xla_gpu_autotune_level=0")
assert os.environ["XLA_FLAGS"] == "--xla_gpu_autotune_level=0", os.environ["XLA_FLAGS"]
assert len(jax.devices()) == 1 and hardware.backend_started()
assert jax.config.jax_num_cpu_devices == before
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ab_runs_both_processes_and_reports_the_ratio(monkeypatch, tmp_path, capsys):
    commands = []

    def fake_run(command, check):
        commands.append(command)
        out = pathlib.Path(next(a for a in command if a.startswith("--out=")).split("=", 1)[1])
        rate = 20.0 if any(a.startswith("--xla_flags=") for a in command) else 10.0
        out.write_text(json.dumps({"environment": {"device_count": 1, "device_kind": "cpu", "XLA_FLAGS": ""},
                                   "results": [{"model": "r3d_18", "mode": "train", "framework": "jax",
                                                "clips_per_s": rate, "compile_s": 1.0}]}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(benchmark.ab.subprocess, "run", fake_run)
    out = tmp_path / "ab.json"
    flags = "--ab_xla_flags=--xla_gpu_force_conv_nhwc=true"
    assert benchmark.main(["--models=r3d_18", flags, "--out", str(out)]) == 0
    a, b = commands
    assert not any(x.startswith("--xla_flags") for x in a) and str(out) not in a
    assert "--xla_flags=--xla_gpu_force_conv_nhwc=true" in b and "--models=r3d_18" in b
    (row,) = json.loads(out.read_text())["rows"]
    assert row["b_over_a"] == pytest.approx(2.0)
    assert "| r3d_18 | train | jax | 10.0 | 20.0 | 2.000 |" in capsys.readouterr().out


def test_processes_runs_each_count_as_a_job_and_compares(monkeypatch, tmp_path, capsys):
    """--processes=1,2: one process alone, then two joined over 127.0.0.1, each in fresh
    processes (faked here: tests/test_distributed.py runs real jobs); the table puts them side by side."""
    from strokevision_jax.benchmark import processes

    started = []

    def report(count: int, out: str) -> None:
        rate = {1: 10.0, 2: 15.0}[count]
        pathlib.Path(out).write_text(json.dumps({
            "environment": {"device_count": count, "device_kind": "cpu", "backend": "cpu", "jax": "x",
                            "host_cpus": 2, "platform": "test"},
            "results": [{"model": "r3d_18", "mode": "train", "framework": "jax", "batch_size": 4,
                         "clips_per_s": rate, "step": {"median_s": 4 / rate}}]}))

    class FakePopen:
        def __init__(self, command, stdout=None, stderr=None):
            started.append(command)
            out = next((a.split("=", 1)[1] for a in command if a.startswith("--out=")), None)
            if out:
                report(2, out)

        def wait(self, timeout=None):
            return 0

    def fake_run(command, check, timeout):
        started.append(command)
        report(1, next(a for a in command if a.startswith("--out=")).split("=", 1)[1])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(processes.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(processes.subprocess, "run", fake_run)
    out = tmp_path / "p.json"
    assert benchmark.main(["--models=r3d_18", "--processes=1,2", f"--out={out}"]) == 0
    alone, first, second = started
    assert not any(a.startswith("--coordinator_address") for a in alone)
    port = next(a for a in first if a.startswith("--coordinator_address=127.0.0.1:"))
    assert port in second and "--num_processes=2" in first
    assert ("--process_id=0", "--process_id=1") == (first[-2], second[-1])
    assert not any(a.startswith("--out") for a in second)  # process 0 writes the report
    rows = json.loads(out.read_text())["rows"]
    assert [(r["processes"], r["clips_per_s"]) for r in rows] == [(1, 10.0), (2, 15.0)]
    assert rows[1]["over_first"] == pytest.approx(1.5)
    assert "| r3d_18 | train | 2 | 2 | 4 | 266.7 | 15.0 | 1.50 |" in capsys.readouterr().out
    assert benchmark.main(["--models=r3d_18", "--processes=1,2", "--modes=pipeline"]) == 2  # steps only


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch and torchvision")
def test_layers_mode_times_every_stage_in_both_frameworks(tmp_path):
    from strokevision_jax.benchmark import layers

    out = tmp_path / "layers.json"
    args = [*TINY, "--modes=layers", "--steps=1", "--warmup=0", "--rounds=1", f"--out={out}"]
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)  # compile time dominates here
    try:
        assert benchmark.main(args) == 0
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    rows = json.loads(out.read_text())["layers"]
    assert [(r["mode"], r["stage"]) for r in rows] == [(m, s) for m in ("train", "infer") for s in layers.STAGES]
    assert all(_positive(r["jax_ms"]) and _positive(r["torch_ms"]) for r in rows)
    assert rows[1]["input"] == "2x8x8x4"  # layer1 reads the stem's output
    assert not layers.supports("motionbert") and layers.supports("r2plus1d_18")


def test_single_convolution_timer():
    from strokevision_jax.benchmark import convs

    rows = convs.time_convs(shapes=((2, 8, 8, 3, 4, 3, 2),), steps=1, with_torch=HAS_TORCH)
    assert rows[0]["shape"] == (2, 8, 8, 3, 4, 3, 2) and _positive(rows[0]["xla_ms"])
    assert not HAS_TORCH or _positive(rows[0]["torch_ms"])
