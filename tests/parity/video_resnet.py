"""torchvision's video ResNets; R(2+1)D-18 also in training mode (BatchNorm batch statistics)."""

FEATURES = {"stem": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
            "layer4": "layer4"}
# The default clip (16 x 112 x 112) with batch 2, and a shorter, smaller, non-square clip.
SHAPES = [(2, 16, 112, 112), (1, 8, 64, 80)]

SPECS = [
    dict(name=name, torch_kwargs={}, config={}, shapes=SHAPES, features=FEATURES)
    for name in ("r2plus1d_18", "r3d_18", "mc3_18")
] + [
    dict(name="r2plus1d_18", torch_kwargs={}, config={}, shapes=[(2, 8, 64, 64)], features=FEATURES,
         train_mode=True),
]
