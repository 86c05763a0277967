"""--processes=1,2: the train and infer steps of a job of N processes on this machine, beside
one process: N fresh processes per count, joined over 127.0.0.1 (--coordinator_address,
--num_processes, --process_id; strokevision_jax.distributed), each with its local devices (one
CPU device unless XLA_FLAGS says otherwise). The global batch stays --batch_size (or the
recipe's), split over all processes' devices; clips/s is that batch over the median step time
of process 0 (the steps synchronise every process through their collectives).

On one machine the processes share its cores and talk through gloo over the loopback device:
the figures measure what the multi-process path costs, not what a second machine would add.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from strokevision_jax.benchmark.ab import _without_flags
from strokevision_jax.benchmark.report import _fmt, command_line, write_outputs
from strokevision_jax.benchmark.settings import UsageError

JOB_FLAGS = ("coordinator_address", "num_processes", "process_id", "initialization_timeout")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_count(count: int, passed: list[str], out: pathlib.Path, timeout: float) -> tuple[int, str]:
    """The benchmark as a job of `count` processes; (exit status, the failing processes' output)."""
    base = [sys.executable, "-m", "strokevision_jax.benchmark", *passed]
    if count == 1:
        print(f"[1 process] {shlex.join(base[1:] + [f'--out={out}'])}", flush=True)
        status = subprocess.run(base + [f"--out={out}"], check=False, timeout=timeout).returncode
        return status, ""
    port = _free_port()
    processes = []
    with tempfile.TemporaryDirectory() as logs:
        for index in range(count):
            job = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}", f"--process_id={index}"]
            command = base + job + ([f"--out={out}"] if index == 0 else [])
            if index == 0:
                print(f"[{count} processes] {shlex.join(command[1:])} (and --process_id=1..{count - 1})", flush=True)
            log = pathlib.Path(logs) / f"{index}.log"
            stdout = None if index == 0 else log.open("w")
            processes.append((subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT if stdout else None),
                              log))
        statuses = []
        for process, _ in processes:
            try:
                statuses.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                for other, _ in processes:
                    other.kill()
                statuses.append(-1)
        failed = [f"process {i} (exit status {s}):\n" + (log.read_text()[-2000:] if log.exists() else "")
                  for i, ((_, log), s) in enumerate(zip(processes, statuses)) if s != 0]
    return (0 if not failed else 1), "\n".join(failed)


def run_processes(args: argparse.Namespace, argv: Sequence[str], timeout: float = 3600) -> int:
    """The benchmark at each of --processes, each in fresh processes; the comparison table."""
    counts = sorted({int(c) for c in args.processes.split(",") if c.strip()})
    if not counts or counts[0] < 1:
        raise UsageError(f"--processes={args.processes!r}: give process counts >= 1, e.g. 1,2.")
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if modes - {"train", "infer"} or args.compare:
        raise UsageError("--processes measures the train and infer steps only (--modes=train,infer, no --compare).")
    passed = _without_flags(argv, ("processes", "out", "markdown", *JOB_FLAGS))
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            out = pathlib.Path(tmp) / f"{count}.json"
            status, failure = _run_count(count, passed, out, timeout)
            if status or not out.exists():
                print(f"error: the run of {count} process(es) failed{': ' + failure if failure else ''}",
                      file=sys.stderr)
                return 1
            reports[count] = json.loads(out.read_text())
    rows = compare_counts(reports)
    table = processes_markdown(rows, reports)
    print(table)
    write_outputs(args, {"command": command_line(argv), "rows": rows,
                         "reports": {str(k): v for k, v in reports.items()}}, table)
    return 0


def compare_counts(reports: dict[int, dict]) -> list[dict]:
    """One row per (model, mode, process count): clips/s and its ratio to the fewest processes."""
    first = min(reports)
    base = {(r["model"], r["mode"]): r.get("clips_per_s") for r in reports[first]["results"]
            if r["framework"] == "jax"}
    rows = []
    for count, report in sorted(reports.items()):
        env = report["environment"]
        for r in report["results"]:
            if r["framework"] != "jax":
                continue
            rate, reference = r.get("clips_per_s"), base.get((r["model"], r["mode"]))
            rows.append({"model": r["model"], "mode": r["mode"], "processes": count,
                         "devices": env["device_count"], "batch_size": r["batch_size"],
                         "median_step_s": (r.get("step") or {}).get("median_s"), "clips_per_s": rate,
                         "over_first": rate / reference if rate and reference else None,
                         "error": r.get("error")})
    return rows


def processes_markdown(rows: list[dict], reports: dict[int, dict]) -> str:
    env = reports[min(reports)]["environment"]
    first = min(reports)
    lines = [f"Processes on one machine ({env['host_cpus']} CPUs, {env['platform']}), {env['device_kind']} "
             f"devices, jax {env['jax']}; each process with its local devices, collectives through "
             f"{'gloo' if env['backend'] == 'cpu' else env['backend']}", "",
             f"| model | mode | processes | devices | global batch | step ms median | clips/s | ÷ {first} process"
             f"{'es' if first > 1 else ''} |", "|" + "---|" * 8]
    for r in rows:
        step = None if r["median_step_s"] is None else 1e3 * r["median_step_s"]
        lines.append(f"| {r['model']} | {r['mode']} | {r['processes']} | {r['devices']} | {r['batch_size']} "
                     f"| {_fmt(step, '.1f')} | {_fmt(r['clips_per_s'], '.1f')} | {_fmt(r['over_first'], '.2f')} |")
    return "\n".join(lines) + "\n"
