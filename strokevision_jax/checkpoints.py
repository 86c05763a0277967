"""A run's orbax checkpoints: `latest` (resuming) and `best` (the final evaluation).

Writes are atomic (orbax writes a temporary directory and renames it when complete). Each saved
step's files are listed with their sizes and SHA-256 in `checkpoints/verify/<latest|best>-<epoch>
.json`, and checked before a restore. `latest` keeps the last two epochs: when the newest is
damaged (a full disk, a killed copy, a truncated file), restoring falls back to the newest intact
one with a log line naming what was skipped; when none is intact, `CheckpointDamaged` names the
directory and what to do. A step without a file list (written by an older version) is restored
directly; orbax's own errors then mark it damaged.

Multi-process jobs (strokevision_jax.distributed): every process calls save and restore (orbax
writes one copy through the primary host, process 0, and synchronises the processes); process 0
alone writes and checks the file lists and moves damaged steps aside, and every process follows
its verdict, so that all restore the same step. A step that fails to restore on any process
is skipped by all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib

import jax

from strokevision_jax import distributed
from strokevision_jax.errors import TrainingError
from strokevision_jax.steps import TrainState

KEEP_LATEST = 2  # epochs kept in checkpoints/latest (one to fall back on)


class CheckpointDamaged(TrainingError):
    """No intact checkpoint in a directory that has some."""


@contextlib.contextmanager
def _quiet_orbax():
    """orbax and its async I/O log a traceback for each file they cannot read; a damaged step is
    reported once, by `Checkpoints.restore`."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "concurrent.futures", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class Checkpoints:
    """Orbax checkpoints of the train state: `latest` (for resuming) and `best` (by validation)."""

    def __init__(self, workdir: pathlib.Path, log=print):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.log = log or (lambda *a, **k: None)

        def options(name: str, keep: int):  # process 0 writes; barriers named per manager
            return ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=0, barrier_sync_key_prefix=f"strokevision_{name}"))

        self.latest = ocp.CheckpointManager(workdir / "checkpoints" / "latest", options=options("latest", KEEP_LATEST))
        self.best = ocp.CheckpointManager(workdir / "checkpoints" / "best", options=options("best", 1))

    def save(self, manager, epoch: int, state: TrainState, meta: dict) -> None:
        ocp = self._ocp
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()  # on every process: the step is complete on disk
        if distributed.is_primary():
            self._write_file_list(manager, epoch)

    # ------------------------------------------------------------------ verification

    @staticmethod
    def _list_path(manager, step: int) -> pathlib.Path:
        directory = pathlib.Path(manager.directory)
        return directory.parent / "verify" / f"{directory.name}-{step}.json"

    @staticmethod
    def _files(step_dir: pathlib.Path) -> dict[str, dict]:
        out = {}
        for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
            out[str(path.relative_to(step_dir))] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
        return out

    def _write_file_list(self, manager, step: int) -> None:
        """The step's files, sizes and hashes, written atomically; lists of steps orbax has
        removed (max_to_keep) are removed too."""
        directory = pathlib.Path(manager.directory)
        target = self._list_path(manager, step)
        target.parent.mkdir(exist_ok=True)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._files(directory / str(step)), indent=1) + "\n")
        temporary.replace(target)
        kept = {str(s) for s in manager.all_steps()}
        for old in target.parent.glob(f"{directory.name}-*.json"):
            if old.stem.rpartition("-")[2] not in kept:
                old.unlink()

    def _verify(self, manager, step: int) -> str | None:
        """Why the step's files are not those that were saved, or None (also: no list to check)."""
        listing = self._list_path(manager, step)
        if not listing.is_file():
            return None
        try:
            expected = json.loads(listing.read_text())
        except (OSError, json.JSONDecodeError) as error:
            return f"its file list {listing} is unreadable ({error})"
        step_dir = pathlib.Path(manager.directory) / str(step)
        found = self._files(step_dir)
        problems = [f"{name} is missing" for name in expected if name not in found]
        for name, entry in expected.items():
            now = found.get(name)
            if now is None:
                continue
            if now["size"] != entry["size"]:
                problems.append(f"{name} has {now['size']:,} bytes, {entry['size']:,} were written")
            elif now["sha256"] != entry["sha256"]:
                problems.append(f"{name} differs from what was written")
        return "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "") or None

    def restore(self, manager, like: TrainState) -> tuple[TrainState, dict] | None:
        """The newest intact step of `manager` as (state, meta); None when it holds none.

        A step that fails to restore (a truncated or missing file, unreadable metadata, another
        structure) is skipped with a log line; CheckpointDamaged when every step fails."""
        ocp = self._ocp
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        # The target carries shapes, dtypes and shardings (replicated over the mesh).
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        directory = pathlib.Path(manager.directory)
        problems = []
        for step in steps:
            # Process 0 checks the files; every process follows its verdict.
            damage = distributed.from_primary(self._verify(manager, step) if distributed.is_primary() else None)
            if damage is not None:
                problems.append(f"{directory / str(step)}: {damage}")
                self.log(f"checkpoint {directory / str(step)} is damaged and skipped ({damage})")
                continue
            reason = None
            try:
                with _quiet_orbax():
                    restored = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
                meta = restored["meta"]
                if not isinstance(meta, dict) or meta.get("epoch") != step:
                    raise ValueError(f"its metadata does not name epoch {step}: {meta!r:.200}")
            except Exception as error:  # noqa: BLE001 (any failure makes the step unusable)
                reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            if not distributed.all_true(reason is None):  # skipped by all if it failed anywhere
                reason = reason or "it could not be restored on another process of the job"
                problems.append(f"{directory / str(step)}: {reason}")
                self.log(f"checkpoint {directory / str(step)} is damaged and skipped ({reason})")
                continue
            if problems:
                self._set_aside(manager, [s for s in steps if s > step])
                self.log(f"restored the intact checkpoint of epoch {step} from {directory}")
            return restored["state"], meta
        remove = directory if directory.name == "latest" else directory.parent
        raise CheckpointDamaged(
            f"every checkpoint in {directory} is damaged:\n  " + "\n  ".join(problems) + "\n"
            f"Delete {remove} and run train again with the same --workdir: the run starts over "
            "from epoch 1 (run_config.json is kept, so it is the same run).")

    def _set_aside(self, manager, steps) -> None:
        """Moves damaged steps out of the manager's directory (to checkpoints/damaged/), so that
        training can write those epochs again; nothing is deleted. (Process 0 moves them; every
        process then rereads the directory.)"""
        distributed.on_primary(lambda: self._move_aside(manager, steps))
        manager.reload()

    def _move_aside(self, manager, steps) -> None:
        directory = pathlib.Path(manager.directory)
        aside = directory.parent / "damaged"
        aside.mkdir(exist_ok=True)
        for step in steps:
            source = directory / str(step)
            target = aside / f"{directory.name}-{step}"
            suffix = 1
            while target.exists():
                target, suffix = aside / f"{directory.name}-{step}.{suffix}", suffix + 1
            source.rename(target)
            self._list_path(manager, step).unlink(missing_ok=True)
            self.log(f"moved the damaged {source} to {target}")

    def close(self):
        self.latest.close()
        self.best.close()
