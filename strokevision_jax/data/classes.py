"""Action classes of StrokeVision-Bench, in the dataset's label order."""

CLASS_NAMES: tuple[str, ...] = (
    "grasping",
    "non_task_movement",
    "transport_with_object",
    "transport_without_object",
)
NUM_CLASSES = len(CLASS_NAMES)
# The pair the paper finds hardest to tell apart: the same movement, with or without a block.
TRANSPORT_PAIR: tuple[str, str] = ("transport_with_object", "transport_without_object")
