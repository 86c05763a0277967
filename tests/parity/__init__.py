"""Parity specs, one module per model family, consumed by tests/test_parity.py.

Each module defines `SPECS`, a list of dicts:
  name           torchvision builder name (torchvision.models.video.<name>)
  torch_kwargs   kwargs for that builder (sizes, dropout 0 for training-mode specs)
  torch_builder  optional fn(**torch_kwargs) -> torch model, instead of the builder
  config         the matching **config for checkpoints_convert.load_torch_checkpoint
  shapes         input shapes (N, T, H, W) to compare logits and features on
  features       {our features() key: torch module path whose forward output it equals}
  torch_feature  optional fn(key, hook output) -> numpy array in our layout
                 (default: a 5-D (N, C, T, H, W) tensor is moved to (N, T, H, W, C))
  train_mode     optional: also compare in training mode (batch statistics; dropout must be 0)
"""
