"""--ab_xla_flags: the same benchmark in two fresh processes, without (A) and with (B) the
flags (XLA reads XLA_FLAGS once, when JAX starts its backend), and the B/A table."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from strokevision_jax.benchmark.report import (
    ab_markdown,
    command_line,
    compare_reports,
    write_outputs,
)


def _without_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """argv without `--name=value` / `--name value` for each of `names`."""
    kept, skip_value = [], False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        match = re.match(r"--(\w+)(=?)", token)
        if match and match.group(1) in names:
            skip_value = not match.group(2)
            continue
        kept.append(token)
    return kept


def run_ab(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """The same benchmark in two fresh processes, without (A) and with (B) --ab_xla_flags."""
    passed = _without_flags(argv, ("ab_xla_flags", "out", "markdown", "xla_flags"))
    with tempfile.TemporaryDirectory() as tmp:
        reports = {}
        base = args.xla_flags or ""
        for label, extra in (("A", base), ("B", f"{base} {args.ab_xla_flags}")):
            out = pathlib.Path(tmp) / f"{label}.json"
            command = [sys.executable, "-m", "strokevision_jax.benchmark", *passed, f"--out={out}"]
            if extra.strip():
                command.append(f"--xla_flags={extra.strip()}")
            print(f"[{label}] {shlex.join(command[1:])}", flush=True)
            status = subprocess.run(command, check=False).returncode
            if not out.exists():
                print(f"error: run {label} wrote no results (exit status {status}); an unknown XLA flag "
                      "aborts the process: check the flags above.", file=sys.stderr)
                return 1
            reports[label] = json.loads(out.read_text())
    rows = compare_reports(reports["A"], reports["B"])
    table = ab_markdown(args.ab_xla_flags, rows, reports["A"]["environment"])
    print(table)
    combined = {"command": command_line(argv), "ab_xla_flags": args.ab_xla_flags, "rows": rows,
                "A": reports["A"], "B": reports["B"]}
    write_outputs(args, combined, table)
    return 0
