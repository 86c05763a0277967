"""From a whole recording to an action timeline and a Box and Block Test count.

    frames -> sliding clip windows -> the run's probabilities per window -> per-frame
    probabilities -> (a) one argmax per frame, (b) the HSMM decoder's segmentation
    -> segments, the block count (with an interval from posterior samples), the tested side.

Frames arrive in chunks (`{'video': (n, H, W, 3) uint8, 'keypoints': (n, 17, 2),
'keypoint_scores': (n, 17)}` at the stored size and frame rate of the run's dataset, 'video' only
where the model reads it), so a long recording is never held whole: at most one window plus one
chunk of frames and one batch of windows are in memory.

The count follows the clinic's rule: blocks released (the end of a transport_with_object segment)
within `TRIAL_SECONDS` of the hand reaching the blocks, taken as the start of the first grasp.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from strokevision_jax import segments
from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.data.synthetic.config import TRIAL_SECONDS

GRASPING = CLASS_NAMES.index("grasping")
DEFAULT_SAMPLES = 200
# Chosen on the validation patients' trials of the cpu-preset R(2+1)D run (docs/trials.md).
DEFAULT_EVIDENCE_FRAMES = 5.0
DEFAULT_ADAPTATION = 1.0
COUNT_INTERVAL = 0.90


# ----------------------------------------------------------------------------- windows

def sliding_windows(chunks: Iterable[dict], clip_frames: int, stride: int) -> Iterator[tuple[int, dict]]:
    """(start, record) for every window of `inference.window_starts` over the stream (the last
    window ends on the last frame), without knowing the stream's length in advance."""
    if stride < 1:
        raise ValueError(f"stride={stride}: must be at least one frame.")
    buffer: dict | None = None
    offset = total = next_start = 0  # buffer holds frames [offset, total)
    last = None
    for chunk in chunks:
        n = len(chunk["keypoints"])
        buffer = dict(chunk) if buffer is None else {k: np.concatenate([buffer[k], chunk[k]]) for k in buffer}
        total += n
        while next_start + clip_frames <= total:
            i = next_start - offset
            yield next_start, {k: v[i:i + clip_frames] for k, v in buffer.items()}
            last = next_start
            next_start += stride
        # Keep what the next window needs, and the last clip_frames frames for the final one.
        keep_from = max(offset, min(next_start, total - clip_frames))
        buffer = {k: v[keep_from - offset:] for k, v in buffer.items()}
        offset = keep_from
    if buffer is not None and total >= clip_frames and last != total - clip_frames:
        i = total - clip_frames - offset
        yield total - clip_frames, {k: v[i:i + clip_frames] for k, v in buffer.items()}


def window_probabilities(model, chunks: Iterable[dict], stride: int,
                         on_frames: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts, (windows, classes) probabilities, frames seen): the run's model over every
    window, `model.batch_size` windows per call of its jitted step. `on_frames(n)` is told of
    every n frames consumed (a progress bar)."""
    counted = {"frames": 0}

    def counting(stream):
        for chunk in stream:
            n = len(chunk["keypoints"])
            counted["frames"] += n
            if on_frames is not None:
                on_frames(n)
            yield chunk

    starts, probabilities, batch = [], [], []
    for start, record in sliding_windows(counting(chunks), model.clip_frames, stride):
        starts.append(start)
        batch.append(record)
        if len(batch) == model.batch_size:
            probabilities.append(model.probabilities(batch))
            batch = []
    if batch:
        probabilities.append(model.probabilities(batch))
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, NUM_CLASSES), np.float32)
    return np.asarray(starts, np.int64), probabilities, counted["frames"]


def frame_probabilities(starts: np.ndarray, window_probabilities: np.ndarray, num_frames: int,
                        clip_frames: int) -> np.ndarray:
    """(num_frames, classes): the window probabilities placed at their windows' centres and
    linearly interpolated between them (held before the first and after the last centre).

    A window's label is the plurality of its frames' actions, so its probability describes the
    middle of the window best; spreading it over every covered frame instead (the mean of the
    covering windows) would smooth the timeline twice."""
    starts = np.asarray(starts)
    if starts.size == 0:
        raise ValueError("frame_probabilities: no window (the recording is shorter than one clip).")
    centres = starts + (clip_frames - 1) / 2
    frames = np.arange(num_frames)
    p = np.asarray(window_probabilities, np.float64)
    out = np.stack([np.interp(frames, centres, p[:, c]) for c in range(p.shape[1])], axis=1)
    return out / out.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- decoding

def trial_count(labels: np.ndarray, fps: float, trial_seconds: float = TRIAL_SECONDS) -> tuple[int, int | None]:
    """(blocks, start frame): transport_with_object segments ending within `trial_seconds` of the
    first grasp's start (the hand reaching the blocks); (0, None) without any grasp."""
    found = segments.to_segments(labels)
    start = next((s for s, _, c in found if c == GRASPING), None)
    if start is None:
        return 0, None
    end = start + trial_seconds * fps
    return sum(1 for _, e, c in found if c == segments.WITH_OBJECT and start <= e < end), start


@dataclasses.dataclass
class Timeline:
    """The outcome of one recording; frames at `fps`."""

    fps: float
    probabilities: np.ndarray  # (T, classes) per frame, as the classifier gave them
    argmax: np.ndarray  # (T,) one label per frame
    decoded: np.ndarray  # (T,) the HSMM's segmentation
    count: int  # decoded
    count_argmax: int
    start_frame: int | None  # the first decoded grasp: the trial's start
    sample_counts: np.ndarray  # counts of posterior samples

    @property
    def count_interval(self) -> tuple[int, int]:
        tail = (1 - COUNT_INTERVAL) / 2
        low, high = np.quantile(self.sample_counts, [tail, 1 - tail], method="inverted_cdf")
        return int(low), int(high)

    def segments(self, labels: np.ndarray | None = None) -> list[dict]:
        """[{'start', 'end' (seconds; end exclusive), 'start_frame', 'end_frame', 'label',
        'confidence' (the mean probability of the segment's class over its frames)}]."""
        labels = self.decoded if labels is None else labels
        return [{"start": round(s / self.fps, 3), "end": round(e / self.fps, 3), "start_frame": s, "end_frame": e,
                 "label": CLASS_NAMES[c], "confidence": round(float(self.probabilities[s:e, c].mean()), 4)}
                for s, e, c in segments.to_segments(labels)]

    def summary(self) -> dict:
        low, high = self.count_interval
        return {"count": self.count, "count_interval": [low, high], "count_interval_level": COUNT_INTERVAL,
                "count_samples_mean": round(float(self.sample_counts.mean()), 3),
                "count_samples_sd": round(float(self.sample_counts.std()), 3),
                "count_argmax": self.count_argmax,
                "start": None if self.start_frame is None else round(self.start_frame / self.fps, 3),
                "frames": int(self.probabilities.shape[0]), "fps": self.fps}


def adapt_to_shares(probabilities: np.ndarray, class_shares: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Probabilities re-weighted so that their mean over the recording moves to the classes'
    shares of a trial (strength 1: all the way; 0: unchanged).

    A classifier that sees one patient oddly (another build, lighting, compensation) shifts the
    balance of its classes over the whole recording, e.g. calls most of the transfers non-task
    movement. A Box and Block Test trial has about the same share of each phase for every
    patient, so the recording's mean prediction is compared with the shares measured on the
    training trials and each class scaled by (share / mean) ** strength: the one-step form of
    prior-shift adaptation (Saerens et al., Neural Computation 2002), with the task's shares as
    the target instead of an estimate."""
    probabilities = np.asarray(probabilities, np.float64)
    weights = (np.asarray(class_shares, np.float64) / np.maximum(probabilities.mean(axis=0), 1e-6)) ** strength
    adapted = probabilities * weights
    return adapted / adapted.sum(axis=1, keepdims=True)


def decode(probabilities: np.ndarray, decoder: segments.SegmentDecoder, fps: float, *, evidence_frames: float,
           class_shares: np.ndarray | None = None, adaptation: float = DEFAULT_ADAPTATION,
           num_samples: int = DEFAULT_SAMPLES, seed: int = 0, trial_seconds: float = TRIAL_SECONDS) -> Timeline:
    """Per-frame probabilities -> Timeline. With `class_shares`, the decoder reads the
    probabilities adapted to them (`adapt_to_shares`, `adaptation` its strength); the argmax
    reads them as the classifier gave them. The decoder's frame scores are the log
    probabilities / `evidence_frames`: neighbouring frames share their windows, so about that
    many frames carry one observation's worth of evidence (a smaller value trusts the
    classifier more, a larger one the task's structure)."""
    probabilities = np.asarray(probabilities, np.float64)
    argmax = probabilities.argmax(axis=1)
    evidence = probabilities
    if class_shares is not None and adaptation:
        evidence = adapt_to_shares(probabilities, class_shares, adaptation)
    scores = np.log(np.clip(evidence, 1e-6, 1.0)) / evidence_frames
    decoded = decoder.decode(scores)
    count, start = trial_count(decoded, fps, trial_seconds)
    samples = decoder.sample(scores, num_samples, np.random.default_rng(seed))
    sample_counts = np.array([trial_count(s, fps, trial_seconds)[0] for s in samples])
    return Timeline(fps, probabilities, argmax, decoded, count, trial_count(argmax, fps, trial_seconds)[0],
                    start, sample_counts)


def tested_side(keypoints: np.ndarray, scores: np.ndarray) -> str | None:
    """'left' or 'right' as the pose estimator names the joints (COCO 9: left wrist, 10: right):
    the wrist that travels further (the tested hand moves the blocks, the other rests); None
    when neither wrist is seen."""
    travelled = []
    for joint in (9, 10):
        seen = scores[:, joint] > 0.3
        points = keypoints[seen, joint]
        travelled.append(float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0)
    if max(travelled) == 0.0:
        return None
    return ("left", "right")[int(np.argmax(travelled))]


# ----------------------------------------------------------------------------- the decoder of a run

@dataclasses.dataclass(frozen=True)
class TrialModel:
    """What decoding knows of the task, measured on training trials."""

    decoder: segments.SegmentDecoder
    class_shares: np.ndarray  # (classes,) each phase's share of the frames of a trial
    note: str  # where it was measured


@functools.lru_cache(maxsize=4)
def trial_model(dataset: str) -> TrialModel:
    """The HSMM and the phase shares measured on the training patients' whole trials of the
    run's dataset (the simulated ones for `manual` runs, which have clip labels only)."""
    from strokevision_jax.data.synthetic import trials
    from tfds_builder.strokevision import strokevision_dataset_builder as builder

    source = dataset.replace("_trials", "")  # synthetic_trials_small: the patients of synthetic_small
    config = builder.config_named(source)
    if config is None or config.source != "synthetic":
        config, source = builder.SYNTHETIC, "synthetic"
    specs = builder.trial_specs_by_split(config.simulator)["train"]
    phases = [trials.trial_info(config.simulator, spec)["phase"] for spec in specs]
    frames = np.concatenate(phases)
    shares = np.bincount(frames, minlength=NUM_CLASSES) / frames.size
    return TrialModel(segments.SegmentDecoder.fit(phases), shares,
                      f"durations, order and phase shares measured on the {len(specs)} training-split trials of {source}")
