"""The benchmark's outputs: the markdown tables of a report (step results, loader rates), the
A/B table of two reports, the log line of one result, and writing --out / --markdown."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
from collections.abc import Sequence


def command_line(argv: Sequence[str]) -> str:
    """The command as a shell line (with XLA_FLAGS when set), for the report."""
    flags = os.environ.get("XLA_FLAGS")
    prefix = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
    return prefix + "python -m strokevision_jax.benchmark " + shlex.join(list(argv))


def write_outputs(args: argparse.Namespace, report: dict, table: str, log=print) -> None:
    """The report as JSON to --out and the table to --markdown, where given."""
    log = log or (lambda *_: None)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"results: {args.out}")
    if args.markdown:
        pathlib.Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.markdown).write_text(table)
        log(f"table: {args.markdown}")


def one_line(record: dict) -> str:
    """One result record as the log line printed while the benchmark runs."""
    if "error" in record and "step" not in record:
        return f"{record['framework']}: {record['error']}"
    step = record["step"]
    return (f"{record['framework']}: {1e3 * step['median_s']:.1f} ms/step "
            f"(p10 {1e3 * step['p10_s']:.1f}, p90 {1e3 * step['p90_s']:.1f}), "
            f"{record['clips_per_s']:.1f} clips/s" +
            (f", compile {record['compile_s']:.1f} s" if record.get("compile_s") else ""))


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _gib(value) -> str:
    return _fmt(None if value is None else value / 2**30, ".2f")


def _precision(record: dict) -> str:
    if "torch_precision" in record:
        return record["torch_precision"]
    return {"bfloat16": "bf16", "float32": "fp32"}.get(record["compute_dtype"], record["compute_dtype"])


def markdown(report: dict) -> str:
    """The tables of a report (see cli.run()), as markdown."""
    env = report["environment"]
    lines = [f"**{env['device_count']} x {env['device_kind']}** ({env['backend']}), jax {env['jax']}, "
             f"jaxlib {env['jaxlib']}, flax {env['flax']}"
             + (f", torch {env['torch']}" if "torch" in env else "")
             + f"; XLA_FLAGS=`{env['XLA_FLAGS'] or '(none)'}`", "",
             f"`{report['command']}`", ""]
    results = report.get("results", [])
    if results:
        lines += [("| model | mode | framework | precision | batch | input (per clip) | compile s "
                   "| step ms median (p10–p90) | clips/s | GFLOP/clip | MFU | mem plan GiB | peak mem GiB "
                   "| JAX ÷ this |"), "|" + "---|" * 14]
        for r in results:
            step = r.get("step")
            timing = (f"{1e3 * step['median_s']:.1f} ({1e3 * step['p10_s']:.1f}–{1e3 * step['p90_s']:.1f})"
                      if step else r.get("error", "—"))
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['framework']} | {_precision(r)} | {r['batch_size']} "
                f"| {r['input']} "
                f"| {_fmt(r.get('compile_s'), '.1f')} | {timing} | {_fmt(r.get('clips_per_s'), '.1f')} "
                f"| {_fmt(None if r.get('flops_per_clip') is None else r['flops_per_clip'] / 1e9, '.3g')} "
                f"| {_fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f', 'n/a')}"
                f"{'%' if r.get('mfu') is not None else ''} "
                f"| {_gib(r.get('memory_plan_bytes'))} | {_gib(r.get('peak_memory_bytes'))} "
                f"| {_fmt(r.get('jax_over_this'), '.2f')} |")
        notes = sorted({r["note"] for r in results if r.get("note")})
        diffs = [f"{r['model']}: {r['max_abs_logit_diff']:.1e}" for r in results
                 if r.get("max_abs_logit_diff") is not None]
        kinds = sorted({r["peak_memory_kind"] for r in results if r.get("peak_memory_kind")})
        peaks = sorted({r["peak_source"] for r in results if r.get("peak_source")})
        lines.append("")
        lines += [f"- peak mem: {kind}" for kind in kinds]
        lines += [f"- MFU peak: {peak}" for peak in peaks]
        if diffs:
            lines.append("- max |logit difference| JAX vs torch eager (same weights, infer): "
                         + ", ".join(diffs))
        lines += [f"- {note}" for note in notes]
    pipeline_rows = report.get("pipeline", [])
    if pipeline_rows:
        train_rates = {r["model"]: r["clips_per_s"] for r in results
                       if r["mode"] == "train" and r["framework"] == "jax" and r.get("clips_per_s")}
        lines += ["", ("| model | preset | batch | workers | source | first batch s | loader clips/s "
                       "| JAX train clips/s | loader ÷ device |"), "|" + "---|" * 9]
        for p in pipeline_rows:
            device_rate = train_rates.get(p["model"])
            lines.append(
                f"| {p['model']} | {p['preset']} | {p['batch_size']} | {p['workers']} | {p['source']} "
                f"| {p['first_batch_s']:.2f} | {p['clips_per_s']:.1f} | {_fmt(device_rate, '.1f')} "
                f"| {_fmt(p['clips_per_s'] / device_rate if device_rate else None, '.2f')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- A/B of XLA flags

def compare_reports(a: dict, b: dict) -> list[dict]:
    """Rows matched by (model, mode, framework): clips/s and compile s of A and B, B/A."""
    index = {(r["model"], r["mode"], r["framework"]): r for r in b.get("results", [])}
    rows = []
    for ra in a.get("results", []):
        rb = index.get((ra["model"], ra["mode"], ra["framework"]))
        if rb is None:
            continue
        rate_a, rate_b = ra.get("clips_per_s"), rb.get("clips_per_s")
        rows.append({"model": ra["model"], "mode": ra["mode"], "framework": ra["framework"],
                     "a_clips_per_s": rate_a, "b_clips_per_s": rate_b,
                     "b_over_a": rate_b / rate_a if rate_a and rate_b else None,
                     "a_compile_s": ra.get("compile_s"), "b_compile_s": rb.get("compile_s"),
                     "a_error": ra.get("error"), "b_error": rb.get("error")})
    return rows


def ab_markdown(flags: str, rows: list[dict], a_env: dict) -> str:
    lines = [(f"A/B of XLA flags on {a_env.get('device_count')} x {a_env.get('device_kind')}: "
              f"A = XLA_FLAGS `{a_env.get('XLA_FLAGS') or '(none)'}`, B = A + `{flags}`"), "",
             "| model | mode | framework | A clips/s | B clips/s | B ÷ A | A compile s | B compile s |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['framework']} | {_fmt(r['a_clips_per_s'], '.1f')} "
                     f"| {_fmt(r['b_clips_per_s'], '.1f')} | {_fmt(r['b_over_a'], '.3f')} "
                     f"| {_fmt(r['a_compile_s'], '.1f')} | {_fmt(r['b_compile_s'], '.1f')} |")
    return "\n".join(lines) + "\n"
