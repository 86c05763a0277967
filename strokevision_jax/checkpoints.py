"""A run's orbax checkpoints."""

from __future__ import annotations

import pathlib

import jax

from strokevision_jax.steps import TrainState


class Checkpoints:
    """Orbax checkpoints of the train state: `latest` (for resuming) and `best` (by validation)."""

    def __init__(self, workdir: pathlib.Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self.latest = ocp.CheckpointManager(workdir / "checkpoints" / "latest", options=options)
        self.best = ocp.CheckpointManager(workdir / "checkpoints" / "best", options=options)

    def save(self, manager, epoch: int, state: TrainState, meta: dict) -> None:
        ocp = self._ocp
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()

    def restore(self, manager, like: TrainState) -> tuple[TrainState, dict] | None:
        ocp = self._ocp
        epoch = manager.latest_step()
        if epoch is None:
            return None
        # The target carries shapes, dtypes and shardings (replicated over the mesh).
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self):
        self.latest.close()
        self.best.close()
