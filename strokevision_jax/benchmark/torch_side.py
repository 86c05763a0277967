"""The PyTorch side of `python -m strokevision_jax.benchmark --compare=torch`: running the
reference network (`strokevision_jax.models.registry.torch_reference`) as the benchmark times it.

`torch_setup(...)`: where and how torch runs (CUDA when it sees a GPU, else the CPU; bfloat16
through autocast where it works there).

`torch_step(...)`: one training step (autocast forward, class-weighted cross-entropy, backward,
the recipe's optimiser, the weight average where the recipe keeps one) or one inference forward
(`torch.no_grad`), eager or through `torch.compile`, as a closure that returns once the device
has finished.

`randomise_batch_norm(model)`: random BatchNorm running statistics, so that the converted JAX
model's logits are compared under statistics that matter.

torch is imported inside the functions: it is an optional dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from strokevision_jax import presets


def randomise_batch_norm(model, seed: int = 0) -> None:
    """Random BatchNorm running statistics (torch's init leaves mean 0 and variance 1, under
    which a mis-converted statistic would go unnoticed in the logit comparison)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))


@dataclasses.dataclass
class TorchSetup:
    """Where and how torch runs: device, autocast dtype (None: float32), and why."""

    device: Any
    autocast: Any  # torch.bfloat16 or None
    note: str = ""


def torch_setup(compute_dtype: str, probe_model, probe_input: np.ndarray) -> TorchSetup:
    """CUDA when torch sees a GPU, else the CPU. bfloat16 runs under autocast; on the CPU only
    if a forward of `probe_model` on `probe_input` works under it (else float32, with a note)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the fastest convolution algorithms, as users set it
        # float32 in JAX on Ampere and later runs dots and convolutions on TF32 tensor cores
        # (XLA's default precision); the same for torch.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if compute_dtype != "bfloat16":
        return TorchSetup(device, None)
    if device.type == "cpu":
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                probe_model.eval()(_to_torch(probe_input[:1], device))
        except Exception as error:  # noqa: BLE001 (reported, and the run goes on)
            return TorchSetup(device, None, f"CPU bf16 autocast failed ({type(error).__name__}: "
                                            f"{error}); torch ran float32")
    return TorchSetup(device, torch.bfloat16)


def _to_torch(clips: np.ndarray, device):
    """(N, T, H, W, C) numpy -> (N, C, T, H, W) tensor in channels_last_3d memory format."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(clips, np.float32)).permute(0, 4, 1, 2, 3)
    return tensor.to(device).contiguous(memory_format=torch.channels_last_3d)


def torch_step(model, recipe: presets.Recipe, train: bool, clips: np.ndarray, labels: np.ndarray,
               setup: TorchSetup, compile_model: bool) -> Callable[[], Any]:
    """One step of `model` on the batch, as a closure returning the logits (inference) or the loss
    (training), after a device synchronisation. The model is moved to the device and to the
    channels_last_3d format; `compile_model` wraps it in `torch.compile` (compiled on first call)."""
    import torch
    import torch.nn.functional as F

    device = setup.device
    model = model.to(device).to(memory_format=torch.channels_last_3d).train(train)
    network = torch.compile(model) if compile_model else model
    x = _to_torch(clips, device)
    y = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def autocast():
        return torch.autocast(device.type, dtype=setup.autocast or torch.bfloat16,
                              enabled=setup.autocast is not None)

    if not train:
        def infer():
            with torch.no_grad(), autocast():
                logits = network(x)
            sync()
            return logits

        return infer

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(recipe, params)
    class_weights = torch.ones(4, device=device)
    averaged = [p.detach().clone() for p in params] if recipe.ema_decay else None

    def train_step():
        with autocast():
            logits = network(x)
        loss = F.cross_entropy(logits.float(), y, weight=class_weights,
                               label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        if averaged is not None:  # the JAX step keeps the same moving average
            with torch.no_grad():
                torch._foreach_lerp_(averaged, params, 1.0 - recipe.ema_decay)
        sync()
        return loss

    return train_step


def _optimizer(recipe: presets.Recipe, params):
    import torch

    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.learning_rate, momentum=0.9, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
