"""PyTorch checkpoint converters for strokevision_jax models (planned: torchvision video models,
MotionBERT, PoseConv3D, MS-G3D). Nothing is implemented here yet."""
