"""checkpoints_convert.rules: strict, shape-checked mapping of a state_dict onto NNX paths."""

import numpy as np
import pytest

from checkpoints_convert.rules import ConversionError, Ignore, Rule, map_state_dict

TABLE = (
    Rule(r"layer(\d+)\.conv\.weight", "layer{0}.conv.kernel", "conv"),
    Rule(r"fc\.weight", "fc.kernel", "linear"),
    Rule(r"fc\.bias", "fc.bias"),
    Ignore(r".*\.num_batches_tracked", "flax BatchNorm keeps no step count"),
)
TARGETS = {("layer1", "conv", "kernel"): (3, 3, 3, 2, 4), ("fc", "kernel"): (4, 5), ("fc", "bias"): (5,)}


def _state_dict(**changes):
    state = {"layer1.conv.weight": np.arange(4 * 2 * 27, dtype=np.float32).reshape(4, 2, 3, 3, 3),
             "fc.weight": np.ones((5, 4), np.float32), "fc.bias": np.zeros(5, np.float32),
             "layer1.bn.num_batches_tracked": np.array(3)}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def test_maps_and_transposes():
    out = map_state_dict(TABLE, _state_dict(), TARGETS)
    conv = _state_dict()["layer1.conv.weight"]
    np.testing.assert_array_equal(out[("layer1", "conv", "kernel")], conv.transpose(2, 3, 4, 1, 0))
    assert out[("fc", "kernel")].shape == (4, 5)
    assert set(out) == set(TARGETS)


def test_lists_every_problem_at_once():
    state = _state_dict(**{"fc.weight": np.ones((6, 4), np.float32), "fc.bias": None,
                           "extra.weight": np.ones(2)})
    with pytest.raises(ConversionError) as error:
        map_state_dict(TABLE, state, TARGETS)
    message = str(error.value)
    assert "fc.weight: shape (6, 4) converts to (4, 6), but fc.kernel has (4, 5)" in message
    assert "unexpected keys (no rule matches them): extra.weight" in message
    assert "missing: no key fills these model variables: fc.bias, fc.kernel" in message


def test_skipped_keys_are_not_missing():
    out = map_state_dict(TABLE, _state_dict(**{"fc.weight": np.ones((7, 4), np.float32)}), TARGETS,
                         skip=lambda key: key.startswith("fc."))
    assert set(out) == {("layer1", "conv", "kernel")}


def test_ambiguous_rules_are_an_error():
    table = (*TABLE, Rule(r"fc\..*", "fc.other"))
    with pytest.raises(ConversionError, match="fc.bias: matched by 2 rules"):
        map_state_dict(table, _state_dict(), TARGETS)
