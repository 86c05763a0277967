"""Applying a torch key table (`strokevision_jax.models.torch_keys`) to a state_dict.

`map_state_dict` is strict: every torch key must match exactly one entry, every NNX
Param/BatchStat must be filled exactly once, and every converted array must have the NNX
variable's shape; otherwise one error lists all the problems at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from strokevision_jax.models.torch_keys import (  # noqa: F401 (re-exported)
    TRANSFORMS,
    ConversionError,
    Ignore,
    Rule,
    Table,
    TorchKeys,
)


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


def count_fitting(table: Table, state_dict: Mapping[str, np.ndarray],
                  targets: Mapping[tuple, tuple[int, ...]]) -> tuple[int, int]:
    """(keys that convert onto a model variable of the right shape, keys some Rule matches):
    how well a state_dict fits a model, without converting it (for diagnoses)."""
    fitting = matched = 0
    for key, value in state_dict.items():
        hits = [(rule, rule.apply(key)) for rule in table if isinstance(rule, Rule)]
        hits = [(rule, path) for rule, path in hits if path is not None]
        if not hits:
            continue
        matched += 1
        rule, path = hits[0]
        if path not in targets:
            continue
        empty = np.broadcast_to(np.zeros((), np.float32), np.shape(value))
        try:
            shape = tuple(rule.convert(empty, targets[path]).shape)
        except (ConversionError, ValueError):
            continue
        fitting += shape == tuple(targets[path])
    return fitting, matched
