"""The PyTorch side of `python -m strokevision_jax.benchmark --compare=torch`.

`torch_reference(config)`: torchvision's network of the same configuration as one of the zoo's
models (its NNX `model.config`), so that both frameworks run the same layers on the same clip:
  - video ResNets: torchvision's `VideoResNet` blocks (BasicBlock with Conv3DSimple, Conv2Plus1D
    or Conv3DNoTemporal) at the config's widths and depths; at torchvision's own size (base width
    64, two blocks per stage) the builder itself. The cpu preset's slimmer network (base width 16,
    one block per stage, an 11-channel R(2+1)D stem) is the same class with other widths.
  - MViT: `torchvision.models.video.MViT` built for the config's clip size (torchvision's builders
    fix 16 x 224 x 224), with its block settings, dropout and stochastic depth.
  - Swin3D: `SwinTransformer3d` with the config's patch, window, depths, heads and rates.
The skeleton models have no PyTorch reference in this project (their parity tests compare with
stored upstream outputs): `torch_reference` returns None for them.

`torch_step(...)`: one training step (autocast forward, class-weighted cross-entropy, backward,
the recipe's optimiser, the weight average where the recipe keeps one) or one inference forward
(`torch.no_grad`), eager or through `torch.compile`, as a closure that returns once the device
has finished. torch is imported inside the functions: it is an optional dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from strokevision_jax import presets
from strokevision_jax.models.mvit import MViTConfig
from strokevision_jax.models.swin3d import Swin3dConfig
from strokevision_jax.models.video_resnet import VideoResNetConfig


def torch_reference(config: Any):
    """torchvision's model for an NNX model config (see the module docstring), or None."""
    if isinstance(config, VideoResNetConfig):
        return _video_resnet(config)
    if isinstance(config, MViTConfig):
        return _mvit(config)
    if isinstance(config, Swin3dConfig):
        return _swin3d(config)
    return None


def _video_resnet(config: VideoResNetConfig):
    import torch
    from torchvision.models.video import resnet as tv

    if len(config.stage_blocks) != 4:
        raise ValueError(f"torchvision's VideoResNet has 4 stages; the config has "
                         f"{len(config.stage_blocks)} ({config.stage_blocks}).")
    convs = {"3d": tv.Conv3DSimple, "2plus1d": tv.Conv2Plus1D, "no_temporal": tv.Conv3DNoTemporal}
    builders = {("r2plus1d", ("2plus1d",) * 4): tv.r2plus1d_18, ("basic", ("3d",) * 4): tv.r3d_18,
                ("basic", ("3d",) + ("no_temporal",) * 3): tv.mc3_18}
    builder = builders.get((config.stem, tuple(config.stage_convs)))
    if (builder is not None and config.base_width == 64 and tuple(config.stage_blocks) == (2, 2, 2, 2)
            and tuple(config.stage_strides) == (1, 2, 2, 2)):
        return builder(num_classes=config.num_classes)

    class SlimVideoResNet(tv.VideoResNet):
        """torchvision's VideoResNet (its `_make_layer` and forward) at the config's widths."""

        def __init__(self):  # pylint: disable=super-init-not-called
            torch.nn.Module.__init__(self)
            widths = config.stage_widths
            self.inplanes = widths[0]
            self.stem = _video_resnet_stem(config)
            stages = zip(config.stage_convs, widths, config.stage_blocks, config.stage_strides)
            for index, (kind, planes, blocks, stride) in enumerate(stages):
                setattr(self, f"layer{index + 1}",
                        self._make_layer(tv.BasicBlock, convs[kind], planes, blocks, stride=stride))
            self.avgpool = torch.nn.AdaptiveAvgPool3d((1, 1, 1))
            self.fc = torch.nn.Linear(widths[-1], config.num_classes)
            for module in self.modules():
                if isinstance(module, torch.nn.Conv3d):
                    torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    return SlimVideoResNet()


def _video_resnet_stem(config: VideoResNetConfig):
    from torch import nn

    width = config.stage_widths[0]
    if config.stem == "basic":  # torchvision's BasicStem at another width
        return nn.Sequential(
            nn.Conv3d(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    mid = config.stem_mid_width  # torchvision's R2Plus1dStem: 45 at width 64
    return nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False), nn.BatchNorm3d(width),
        nn.ReLU(inplace=True))


def _mvit(config: MViTConfig):
    from torchvision.models.video import mvit as tv

    blocks = [tv.MSBlockConfig(b.num_heads, b.input_channels, b.output_channels, list(b.kernel_q),
                               list(b.kernel_kv), list(b.stride_q), list(b.stride_kv))
              for b in config.block_setting]
    return tv.MViT(
        spatial_size=tuple(config.spatial_size), temporal_size=config.temporal_size,
        block_setting=blocks, residual_pool=config.residual_pool,
        residual_with_cls_embed=config.residual_with_cls_embed, rel_pos_embed=config.rel_pos_embed,
        proj_after_attn=config.proj_after_attn, dropout=config.dropout,
        attention_dropout=config.attention_dropout, stochastic_depth_prob=config.stochastic_depth_prob,
        num_classes=config.num_classes, patch_embed_kernel=config.patch_embed_kernel,
        patch_embed_stride=config.patch_embed_stride, patch_embed_padding=config.patch_embed_padding)


def _swin3d(config: Swin3dConfig):
    from torchvision.models.video import swin_transformer as tv

    return tv.SwinTransformer3d(
        patch_size=list(config.patch_size), embed_dim=config.embed_dim, depths=list(config.depths),
        num_heads=list(config.num_heads), window_size=list(config.window_size),
        mlp_ratio=config.mlp_ratio, dropout=config.dropout, attention_dropout=config.attention_dropout,
        stochastic_depth_prob=config.stochastic_depth_prob, num_classes=config.num_classes)


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


# ----------------------------------------------------------------------------- steps

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
