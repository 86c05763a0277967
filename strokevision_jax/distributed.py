"""Multi-process (multi-machine) data-parallel jobs, on JAX's own runtime.

A job is N processes, each with its local devices (typically one machine each, or one per GPU).
`initialize` joins it through `jax.distributed.initialize`, before any other JAX call: from the
flags --coordinator_address=HOST:PORT --num_processes=N --process_id=I (the names of that
function's arguments), or, without them, from an environment JAX detects by itself (SLURM, Open
MPI, Kubernetes, Cloud TPU) when it holds more than one process. On CPUs the collectives between
processes go through gloo (`jax_cpu_collectives_implementation`), so a job of several processes
on one machine, talking over 127.0.0.1, runs the whole path.

Then every process sees every device (`jax.devices()`); the 'data' mesh of `steps.make_mesh`
spans them, the state is replicated and --batch_size is the global batch, split over all devices.

Data. Each process reads only the rows of each global batch that its own devices hold
(`process_rows`): the loader serves them as shard k of S, rows [k*b, (k+1)*b) of every global
batch of the epoch's one order (same seed everywhere; see data/loader.py). The global batch is
therefore, row for row, the batch one process would read at that step, and a job follows the
single-process run on the same number of devices up to the order of float reductions. grain's
own `ShardByJaxProcess` shards the records instead (process k takes records k, k+S, ...), which
changes which clips meet in a batch, so it is not used.

Who does what. Every process computes (train steps; evaluations, whose logits are gathered with
`process_allgather` so that every clip counts once) and takes part in orbax's saves and restores
(one copy on disk, written by the primary host, process 0; the checkpoint directory must be one
that every process sees, e.g. a shared file system). Process 0 alone logs, holds the workdir lock
and writes the run's own files (run_config.json, metrics.jsonl, report.*, predictions,
checkpoint file lists). Decisions that read the disk (the lock, a workdir's settings, whether a
checkpoint is intact) are made by process 0 and shared (`on_primary`, `from_primary`), so the
processes never go different ways and then wait for each other.

Failures end in bounded time, with a message:
  - no coordinator, or not all processes, within --initialization_timeout seconds: each waiting
    process says which address it waited on (`_join`), and exits with status 1;
  - processes started with different settings (--num_processes, model, batch, seed, ...):
    `check_same_settings` compares them right after joining and every process names the
    difference (when the --num_processes values differ, the job forms with process 0's count; a
    process whose --process_id does not fit in it is refused at once by JAX, which aborts it
    with "Unexpected task registered", and the others time out as above);
  - an error on every process (a check on the same settings) ends all of them together; an
    error on one process ends it after a short wait (`exit_now`), and the others' next
    collective then fails, or JAX's heartbeat (100 s) ends them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import zlib

import jax
import numpy as np

from strokevision_jax.errors import TrainingError, UsageError

JOIN_EXIT_STATUS = 1
_MESSAGE_BYTES = 4096  # errors shared by process 0 are cut to this


# ----------------------------------------------------------------------------- joining a job

def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process jobs (README: 'Training on several machines'); without these flags a job "
        "is formed only where JAX detects one (SLURM, Open MPI, Kubernetes, Cloud TPU)")
    group.add_argument("--coordinator_address", default=None,
                       help="HOST:PORT of process 0, the same for every process of the job")
    group.add_argument("--num_processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process_id", type=int, default=None, help="this process, 0 .. num_processes - 1")
    group.add_argument("--initialization_timeout", type=int, default=300,
                       help="seconds to wait for the coordinator and every process to join (default 300)")


def detected_environment() -> tuple[str, int] | None:
    """(name, process count) of a cluster environment that `jax.distributed.initialize()` would
    detect by itself, or None. JAX's list of environments (`jax._src.clusters`) is not public
    API: if it moves, this finds nothing, and the flags still work."""
    try:
        from jax._src import clusters
    except ImportError:
        return None
    for environment in getattr(clusters.ClusterEnv, "_cluster_types", []):
        if getattr(environment, "opt_in_only_method", False):
            continue
        try:
            if environment.is_env_present():
                return environment.__name__, int(environment.get_process_count())
        except Exception:  # noqa: BLE001 (an environment that cannot say is not this one)
            continue
    return None


def initialize(args: argparse.Namespace, settings: dict | None = None, log=print) -> bool:
    """Joins the job that the flags (or the environment) describe; False for a single process.

    Call it first thing, before any other JAX call. `settings`: what must be equal on every
    process (the command line without --process_id), checked by `check_same_settings`."""
    flags = {name: getattr(args, name) for name in ("coordinator_address", "num_processes", "process_id")}
    timeout = args.initialization_timeout
    if timeout is not None and timeout < 1:
        raise UsageError(f"--initialization_timeout={timeout} must be at least 1 (seconds).")
    given = [name for name, value in flags.items() if value is not None]
    if given:
        missing = [f"--{name}" for name, value in flags.items() if value is None]
        if missing:
            raise UsageError(f"--{given[0]} needs {' and '.join(missing)} too: a multi-process job takes "
                             "--coordinator_address=HOST:PORT --num_processes=N --process_id=I.")
        if flags["num_processes"] < 1 or not 0 <= flags["process_id"] < flags["num_processes"]:
            raise UsageError(f"--process_id={flags['process_id']} must be in 0 .. --num_processes - 1 "
                             f"(--num_processes={flags['num_processes']}).")
        host, _, port = flags["coordinator_address"].rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--coordinator_address={flags['coordinator_address']}: give HOST:PORT, e.g. "
                             "10.0.0.1:1234 (process 0's address, a free port).")
        if flags["num_processes"] == 1:
            return False
        where = flags["coordinator_address"]
        _join(where, flags["num_processes"], flags["process_id"], timeout)
    else:
        environment = detected_environment()
        if environment is None or environment[1] < 2:
            return False
        where = f"the {environment[0]} environment's coordinator"
        _join(None, environment[1], None, timeout, environment[0])
    if log is not None:
        log(f"distributed: process {jax.process_index()} of {jax.process_count()} ({where}), "
            f"{jax.local_device_count()} local device(s), {jax.device_count()} in all", flush=True)
    # --num_processes as given: a process given another count than process 0's fails here.
    check_same_settings(dict(settings or {}, num_processes=flags["num_processes"] or jax.process_count()))
    return True


def _join(address: str | None, count: int, process_id: int | None, timeout: int, environment: str = "") -> None:
    """jax.distributed.initialize, ended after `timeout` s with a message naming the address.

    JAX's own timeout aborts the process from C++ (SIGABRT, a stack trace, no word of the
    address); a watchdog thread says what was waited for and exits first."""
    where = address or f"the address JAX derives from the {environment} environment"
    me = f"process {process_id}" if process_id is not None else "this process"
    joined = threading.Event()

    def watchdog():
        if joined.wait(timeout):
            return
        if process_id == 0:
            why = (f"not all {count} processes joined the job coordinated here, at {where}, within "
                   f"--initialization_timeout={timeout} s. Start every other process with "
                   f"--coordinator_address={address} --num_processes={count} and its --process_id, "
                   "on a machine that can reach this address and port.")
        else:
            why = (f"{me} could not join the job at {where} within --initialization_timeout={timeout} s: "
                   + ("nothing answers there. Start process 0 (--process_id=0) with the same --coordinator_address "
                      "on that host, and check that the port is open to this machine."
                      if address is not None and not _reachable(address) else
                      f"the coordinator answers, but not all {count} processes joined (or --num_processes "
                      "differs between them). Start every process with the same --coordinator_address and "
                      "--num_processes."))
        sys.stdout.flush()
        sys.stderr.write(f"error: {why}\n")
        sys.stderr.flush()
        os._exit(JOIN_EXIT_STATUS)

    threading.Thread(target=watchdog, name="join-timeout", daemon=True).start()
    try:
        # JAX's own timeout a little later: the watchdog speaks first.
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=process_id,
                                   initialization_timeout=timeout + 30)
    except (RuntimeError, ValueError) as error:
        raise TrainingError(f"{me} could not join the job at {where}: {error}") from None
    finally:
        joined.set()


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def _fingerprint(value) -> int:
    return zlib.crc32(repr(value).encode()) & 0x7FFFFFFF


def check_same_settings(settings: dict) -> None:
    """Every process must be started with the same settings; each process names the ones that
    differ (this process's values; the others' are in their own messages)."""
    if jax.process_count() == 1 or not settings:
        return
    from jax.experimental import multihost_utils

    names = sorted(settings)
    mine = np.array([_fingerprint(settings[name]) for name in names], np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # (processes, settings)
    differ = [name for column, name in enumerate(names) if len(set(everyone[:, column].tolist())) > 1]
    if differ:
        odd = sorted({p for p in range(len(everyone)) for c, name in enumerate(names)
                      if name in differ and everyone[p, c] != everyone[0, c]})
        others = (f"process {odd[0]} differs" if len(odd) == 1 else
                  f"processes {', '.join(map(str, odd))} differ")
        raise TrainingError(
            f"the processes of this job were started with different {', '.join('--' + n for n in differ)} "
            f"(process {jax.process_index()} has " + ", ".join(f"--{n}={settings[n]}" for n in differ)
            + f"; {others} from process 0). Start every process with the same settings.")


# ----------------------------------------------------------------------------- who does what

def is_primary() -> bool:
    """Process 0 (the only process of a single-process run): logs and writes the run's files."""
    return jax.process_index() == 0


def _broadcast_bytes(data: bytes) -> bytes:
    from jax.experimental import multihost_utils

    buffer = np.zeros(_MESSAGE_BYTES + 4, np.uint8)
    data = data[:_MESSAGE_BYTES]
    buffer[:4] = np.frombuffer(len(data).to_bytes(4, "little"), np.uint8)
    buffer[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer, is_source=is_primary()), np.uint8)
    return shared[4:4 + int.from_bytes(shared[:4].tobytes(), "little")].tobytes()


def from_primary(value: str | None) -> str | None:
    """Process 0's `value` (a short text, or None) on every process."""
    if jax.process_count() == 1:
        return value
    data = _broadcast_bytes(b"" if value is None else b"\x01" + value.encode())
    return None if not data else data[1:].decode(errors="replace")


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).all())


def on_primary(function, errors: tuple[type[Exception], ...] = ()):
    """Runs `function` on process 0 only and returns its result there (None elsewhere); an
    exception it raises is raised on every process: as itself on process 0, elsewhere as the
    first of `errors` (or TrainingError) that it is an instance of, with the same message. The
    other processes wait for it, so this is also a barrier."""
    if jax.process_count() == 1:
        return function()
    result, failure, kinds = None, None, (*errors, TrainingError)
    if is_primary():
        try:
            result = function()
        except Exception as error:  # noqa: BLE001 (shared with the others, then raised)
            failure = error
    kind = None if failure is None else next((i for i, k in enumerate(kinds) if isinstance(failure, k)), len(kinds))
    shared = from_primary(None if failure is None else f"{kind}:{failure}")
    if failure is not None:
        raise failure
    if shared is not None:
        index, _, message = shared.partition(":")
        kind = kinds[int(index)] if int(index) < len(kinds) else TrainingError
        raise kind(message if int(index) < len(kinds) else f"process 0 failed: {message}")
    return result


def primary_first(function, errors: tuple[type[Exception], ...] = ()):
    """`function` on process 0 (see `on_primary`), then, once it succeeded, on the others: for
    steps that create or check files, which process 0 writes and the others then only read."""
    result = on_primary(function, errors)
    return result if is_primary() else function()


def primary_flag(flag: bool) -> bool:
    """Process 0's `flag` on every process (a decision that reads the disk)."""
    return from_primary("1" if flag else None) is not None


def process_rows(sharding: jax.sharding.Sharding, global_rows: int) -> tuple[int, int]:
    """(start, stop): the rows of a global batch of `global_rows` that this process's devices
    hold under `sharding` (split along its first axis), a contiguous block as the 1-D 'data'
    mesh gives; what this process must read (see data/loader.py)."""
    spans = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop)
                    for s in sharding.addressable_devices_indices_map((global_rows,)).values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start or any(b[0] != a[1] for a, b in zip(spans, spans[1:])):
        raise TrainingError(f"this process's devices hold rows {spans} of the global batch, not one block; "
                            "the 'data' mesh must list each process's devices together.")
    return start, stop


def run_command(args: argparse.Namespace, settings: dict, body) -> int:
    """A command's main: joins the job the flags describe (`initialize`), then runs `body()` ->
    exit status. In a job, a failing process ends at once (`exit_now`), so that neither it nor
    the others wait for a barrier that will not come; a single process returns as usual."""
    try:
        joined = initialize(args, settings)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2 if isinstance(error, UsageError) else 1
        if jax.distributed.is_initialized():
            exit_now(status)
        return status
    try:
        status = body()
    except BaseException:
        if joined:
            import traceback

            traceback.print_exc()
            exit_now(1)
        raise
    if joined and status:
        exit_now(status)
    return status


def exit_now(status: int, grace: float = 10.0) -> None:
    """Ends a process of a multi-process job after an error.

    When every process fails alike (the same check on the same settings), all of them meet at
    JAX's shutdown barrier within `grace` seconds and end cleanly, each with its message. When
    this process failed alone, the others are blocked in a collective waiting for it: after
    `grace` seconds it ends without the barrier (os._exit), and their collective then fails too,
    instead of everyone waiting out JAX's shutdown timeout (5 minutes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    shutdown = threading.Thread(target=jax.distributed.shutdown, name="job-shutdown", daemon=True)
    shutdown.start()
    shutdown.join(grace)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
