"""Conversion tables: how a PyTorch state_dict maps onto an NNX model's state.

One table per model family (`checkpoints_convert/families/*.py`). A table is a sequence of
`Rule`s (regex on the torch key -> NNX path template + layout transform) and `Ignore`s (torch
keys with no NNX counterpart, each with the reason). `map_state_dict` applies a table strictly:
every torch key must match exactly one entry, every NNX Param/BatchStat must be filled exactly
once, and every converted array must have the NNX variable's shape; otherwise one error lists
all the problems at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

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


def _path_str(path: tuple) -> str:
    return ".".join(map(str, path))


def map_state_dict(
    table: Table,
    state_dict: Mapping[str, np.ndarray],
    targets: Mapping[tuple, tuple[int, ...]],
    *,
    skip: Callable[[str], bool] = lambda key: False,
) -> dict[tuple, np.ndarray]:
    """Converts `state_dict` to {NNX path: array} for the NNX leaves in `targets` ({path: shape}).

    `skip(key)` marks torch keys to leave out on purpose (a re-initialised classifier head);
    their NNX paths are not reported missing. Raises ConversionError listing every unmatched,
    ambiguous, unexpected, missing and mis-shaped key.
    """
    problems: list[str] = []
    out: dict[tuple, np.ndarray] = {}
    sources: dict[tuple, str] = {}
    skipped_paths: set[tuple] = set()
    unexpected: list[str] = []
    for key in sorted(state_dict):
        rules = [(rule, rule.apply(key)) for rule in table if isinstance(rule, Rule)]
        rules = [(rule, path) for rule, path in rules if path is not None]
        ignored = any(isinstance(rule, Ignore) and rule.matches(key) for rule in table)
        if len(rules) > 1:
            problems.append(f"{key}: matched by {len(rules)} rules ({', '.join(r.pattern for r, _ in rules)})")
            continue
        if not rules:
            if not ignored:
                unexpected.append(key)
            continue
        rule, path = rules[0]
        if skip(key):
            skipped_paths.add(path)
            continue
        if path not in targets:
            problems.append(f"{key}: maps to {_path_str(path)}, which the model does not have")
            continue
        if path in sources:
            problems.append(f"{key}: maps to {_path_str(path)}, already filled from {sources[path]}")
            continue
        try:
            value = rule.convert(np.asarray(state_dict[key]), targets[path])
        except ConversionError as error:
            problems.append(f"{key}: {error}")
            continue
        if tuple(value.shape) != tuple(targets[path]):
            problems.append(f"{key}: shape {tuple(np.shape(state_dict[key]))} converts to "
                            f"{tuple(value.shape)}, but {_path_str(path)} has {tuple(targets[path])}")
            continue
        out[path] = value
        sources[path] = key
    missing = sorted(_path_str(p) for p in targets if p not in out and p not in skipped_paths)
    if unexpected:
        problems.append("unexpected keys (no rule matches them): " + ", ".join(unexpected))
    if missing:
        problems.append("missing: no key fills these model variables: " + ", ".join(missing))
    if problems:
        raise ConversionError("The checkpoint does not fit the model:\n  " + "\n  ".join(problems))
    return out
