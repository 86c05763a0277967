"""Torch key tables: how a PyTorch state_dict maps onto an NNX model's state.

Each model family declares one `TorchKeys` next to its network (e.g. `video_resnet.TORCH_KEYS`):
a sequence of `Rule`s (regex on the torch key -> NNX path template + layout transform) and
`Ignore`s (torch keys with no NNX counterpart, each with the reason), the classifier's keys, and
optional hooks. They are data: `checkpoints_convert` applies them (`checkpoints_convert.rules.
map_state_dict`), strictly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names every offending key."""


def _linear(value: np.ndarray) -> np.ndarray:
    # nn.Linear weight (out, in) -> nnx.Linear kernel (in, out)
    _expect_rank(value, 2, "linear")
    return value.T


def _conv(value: np.ndarray) -> np.ndarray:
    # ConvNd weight (out, in, *spatial) -> nnx.Conv kernel (*spatial, in, out)
    if value.ndim < 3:
        raise ConversionError(f"conv transform needs a rank >= 3 weight, got shape {value.shape}")
    return np.transpose(value, (*range(2, value.ndim), 1, 0))


def _expect_rank(value: np.ndarray, rank: int, name: str) -> None:
    if value.ndim != rank:
        raise ConversionError(f"{name} transform needs a rank-{rank} weight, got shape {value.shape}")


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda value: value,
    "linear": _linear,
    "conv": _conv,
}

Transform = str | Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """`pattern` (full match on the torch key) -> `target`, a dotted NNX path template.

    `target` may use the pattern's groups: `"blocks.{0}.attn.qkv.kernel"`. Path elements made
    of digits become integers (list indices). `transform` names an entry of TRANSFORMS or is a
    function `fn(value, shape)` of the numpy array and the NNX variable's shape (so that it can
    resize, e.g. interpolate a position embedding to another input size).
    """

    pattern: str
    target: str
    transform: Transform = "identity"

    def apply(self, key: str) -> tuple | None:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        dotted = self.target.format(*match.groups())
        return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))

    def convert(self, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if isinstance(self.transform, str):
            return np.asarray(TRANSFORMS[self.transform](value))
        return np.asarray(self.transform(value, tuple(shape)))


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Torch keys (full match) that carry nothing the NNX model stores, and why."""

    pattern: str
    reason: str

    def matches(self, key: str) -> bool:
        return re.fullmatch(self.pattern, key) is not None



Table = Sequence[Rule | Ignore]
StateDict = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TorchKeys:
    """A family's torch key table and what the converter needs besides it.

    rules: the table (`Rule`s and `Ignore`s).
    head: the classifier's torch keys, weight first (read for the checkpoint's number of classes;
      left out when the classifier is re-initialised), then those of any further classifier.
    prepare(state_dict) -> state_dict: runs first, on the keys as read (e.g. strips
      DataParallel's `module.` prefix).
    check_fixed(state_dict, model) -> state_dict: compares what the model computes itself (a
      graph's adjacency) or reads off shapes (an architecture's sizes) with the checkpoint's,
      raises ConversionError naming the difference, and returns the state_dict without the
      fixed buffers.
    """

    rules: Table
    head: tuple[str, ...]
    prepare: Callable[[StateDict], StateDict] | None = None
    check_fixed: Callable[[StateDict, Any], StateDict] | None = None
