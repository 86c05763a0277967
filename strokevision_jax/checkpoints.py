"""A run's orbax checkpoints: `latest` (resuming) and `best` (the final evaluation).

Writes are atomic (orbax writes a temporary directory and renames it when complete). `latest`
keeps the last two epochs: when the newest is damaged (a full disk, a killed copy, a truncated
file), restoring falls back to the newest intact one with a log line naming what was skipped;
when none is intact, `CheckpointDamaged` names the directory and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib

import jax

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
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints" / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=KEEP_LATEST, create=True))
        self.best = ocp.CheckpointManager(
            workdir / "checkpoints" / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

    def save(self, manager, epoch: int, state: TrainState, meta: dict) -> None:
        ocp = self._ocp
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()

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
            try:
                with _quiet_orbax():
                    restored = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
                meta = restored["meta"]
                if not isinstance(meta, dict) or meta.get("epoch") != step:
                    raise ValueError(f"its metadata does not name epoch {step}: {meta!r:.200}")
            except Exception as error:  # noqa: BLE001 (any failure makes the step unusable)
                reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
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
        training can write those epochs again; nothing is deleted."""
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
            self.log(f"moved the damaged {source} to {target}")
        manager.reload()

    def close(self):
        self.latest.close()
        self.best.close()
