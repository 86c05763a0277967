"""One module per model family; every module here is discovered by `checkpoints_convert.api`.

A family module defines:
  MODELS        builder name -> NNX factory(num_classes=..., rngs=..., **config)
  TABLE         torch state_dict key -> NNX path rules (see `checkpoints_convert.rules`)
  HEAD_KEYS     the classifier's torch keys, weight first
  CONFIG_KWARGS upstream builder kwargs whose config field has another name
and optionally:
  prepare(state_dict) -> state_dict
                runs first, on the keys as read (e.g. strips DataParallel's `module.` prefix)
  check_fixed(state_dict, model) -> state_dict
                compares buffers the model computes itself (a graph's adjacency) with the
                checkpoint's, raises ConversionError when they differ, and returns the
                state_dict without them
"""
