"""One module per model family: `MODELS` (torchvision builder name -> NNX factory), `TABLE`
(torch state_dict key -> NNX path rules, see `checkpoints_convert.rules`), `HEAD_KEYS` (the
classifier's torch keys, weight first) and `CONFIG_KWARGS` (torchvision builder kwargs whose
config field has another name)."""
