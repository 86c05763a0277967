"""`strokevision`: StrokeVision-Bench clips (simulated by default) as a TFDS dataset."""

from tfds_builder.strokevision.strokevision_dataset_builder import (
    Builder,
    StrokeVisionConfig,
)

__all__ = ["Builder", "StrokeVisionConfig"]
