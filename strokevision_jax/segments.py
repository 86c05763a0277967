"""Action segments of a whole recording: from per-frame class scores to a timeline and a count.

- `to_segments` / `from_segments`: frame labels <-> [start, end) runs of one class.
- `edit_score`, `f1_at`: the action-segmentation metrics of Lea et al. (CVPR 2017) as MS-TCN
  (Farha & Gall, CVPR 2019) reports them: the segmental edit score (100 x (1 - normalised
  Levenshtein distance between the two segment label sequences)) and F1 at an IoU threshold
  (a predicted segment is a true positive when it overlaps a not yet matched true segment of its
  class with IoU >= the threshold).
- `SegmentDecoder`: Viterbi decoding of an explicit-duration hidden semi-Markov model over the
  four classes: a segment of class c lasts between `min_frames[c]` and `max_frames[c]` frames,
  and class c' follows c with probability `transitions[c, c']` (no self-transitions: a segment
  ends where the class changes). Both are measured on training trials (`SegmentDecoder.fit`), so
  the Box and Block Test's order (grasp, transport with the block, transport without it, grasp
  again; non-task movement anywhere) and its shortest phases come from data, not from rules.
- `count_blocks`: one block moved per transport_with_object segment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES

WITH_OBJECT = CLASS_NAMES.index("transport_with_object")

Segment = tuple[int, int, int]  # [start, end) frames, class


def to_segments(labels: Sequence[int]) -> list[Segment]:
    """Runs of equal labels: [(start, end, label), ...], end exclusive."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"frame labels must be one-dimensional; got shape {labels.shape}.")
    if labels.size == 0:
        return []
    changes = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [labels.size]])
    return [(int(s), int(e), int(labels[s])) for s, e in zip(starts, ends)]


def from_segments(segments: Sequence[Segment], length: int | None = None) -> np.ndarray:
    length = segments[-1][1] if length is None else length
    labels = np.full(length, -1, np.int64)
    for start, end, label in segments:
        labels[start:end] = label
    return labels


def _levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def edit_score(predicted: Sequence[int], truth: Sequence[int]) -> float:
    """Segmental edit score in [0, 100] of two frame-label sequences."""
    p = [label for _, _, label in to_segments(predicted)]
    t = [label for _, _, label in to_segments(truth)]
    if not p and not t:
        return 100.0
    return 100.0 * (1.0 - _levenshtein(p, t) / max(len(p), len(t)))


def segment_matches(predicted: Sequence[int], truth: Sequence[int], overlap: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of predicted segments against true ones
    at IoU >= `overlap` (pooled over recordings, they give MS-TCN's F1 of a whole test set)."""
    predicted_segments, true_segments = to_segments(predicted), to_segments(truth)
    matched = [False] * len(true_segments)
    true_positives = 0
    for start, end, label in predicted_segments:
        best, best_iou = -1, 0.0
        for index, (t_start, t_end, t_label) in enumerate(true_segments):
            if t_label != label:
                continue
            intersection = min(end, t_end) - max(start, t_start)
            if intersection <= 0:
                continue
            iou = intersection / (max(end, t_end) - min(start, t_start))
            if iou > best_iou:
                best, best_iou = index, iou
        if best >= 0 and best_iou >= overlap and not matched[best]:
            matched[best] = True
            true_positives += 1
    return true_positives, len(predicted_segments) - true_positives, len(true_segments) - true_positives


def f1_from_matches(true_positives: int, false_positives: int, false_negatives: int) -> float:
    if true_positives == 0:
        return 0.0
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / (true_positives + false_negatives)
    return 100.0 * 2 * precision * recall / (precision + recall)


def f1_at(predicted: Sequence[int], truth: Sequence[int], overlap: float) -> float:
    """F1 in [0, 100] of predicted segments against true ones at IoU >= `overlap`."""
    return f1_from_matches(*segment_matches(predicted, truth, overlap))


def count_blocks(labels: Sequence[int]) -> int:
    """Blocks moved: transport_with_object segments."""
    return sum(1 for _, _, label in to_segments(labels) if label == WITH_OBJECT)


# ----------------------------------------------------------------------------- decoding

_DURATION_SD_FLOOR = 0.1  # log-frames: a class seen at one length only still allows its neighbours


@dataclasses.dataclass(frozen=True)
class SegmentDecoder:
    """Explicit-duration HSMM over the classes (durations in frames of the decoded sequence).

    A segment of class c lasts d frames, min_frames[c] <= d <= max_frames[c], with probability
    proportional to a log-normal density (`duration_log_mean[c]`, `duration_log_sd[c]`, in log
    frames) when those are given; otherwise any length within the limits scores the same."""

    min_frames: tuple[int, ...]
    max_frames: tuple[int, ...]
    log_transitions: tuple[tuple[float, ...], ...]  # [from, to]; -inf: never; diagonal unused
    log_initial: tuple[float, ...]
    duration_log_mean: tuple[float, ...] | None = None
    duration_log_sd: tuple[float, ...] | None = None

    def __post_init__(self):
        k = len(self.min_frames)
        if not (len(self.max_frames) == len(self.log_initial) == len(self.log_transitions) == k):
            raise ValueError("SegmentDecoder: one min / max duration, initial and transition row per class.")
        if any(lo < 1 or hi < lo for lo, hi in zip(self.min_frames, self.max_frames)):
            raise ValueError(f"SegmentDecoder: durations need 1 <= min <= max; got {self.min_frames}, "
                             f"{self.max_frames}.")
        if (self.duration_log_mean is None) != (self.duration_log_sd is None) or (
                self.duration_log_mean is not None and not len(self.duration_log_mean) == len(self.duration_log_sd) == k):
            raise ValueError("SegmentDecoder: give both duration_log_mean and duration_log_sd, one per class, or neither.")

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES,
            min_quantile: float = 0.02, max_scale: float = 1.5, smoothing: float = 0.5,
            durations: str = "uniform") -> "SegmentDecoder":
        """Durations and transitions measured on true frame-label sequences (training trials).

        min: the `min_quantile` quantile of each class's segment lengths (a few very short
        segments in the truth do not force the decoder to accept flicker); max: `max_scale` x the
        longest seen; within them, any length scores the same (`durations="uniform"`), or a
        log-normal fitted to the lengths weighs them (`"lognormal"`: a proper duration model, but
        with a weak classifier its per-segment cost merges short transfers into long non-task
        segments; the uniform one counted better on the validation trials, docs/trials.md). Transitions: counts + `smoothing` on every pair of distinct
        classes, so a rare but possible order keeps a small probability; a class never seen
        anywhere keeps its row uniform."""
        if durations not in ("lognormal", "uniform"):
            raise ValueError(f"SegmentDecoder.fit: durations={durations!r}; use 'lognormal' or 'uniform'.")
        lengths = [[] for _ in range(num_classes)]
        counts = np.zeros((num_classes, num_classes))
        first = np.zeros(num_classes)
        for sequence in sequences:
            segments = to_segments(sequence)
            if not segments:
                continue
            first[segments[0][2]] += 1
            for (s, e, label), following in zip(segments, segments[1:] + [None]):
                lengths[label].append(e - s)
                if following is not None:
                    counts[label, following[2]] += 1
        if not any(lengths):
            raise ValueError("SegmentDecoder.fit: no labelled frames to measure.")
        longest = max(max(v) for v in lengths if v)
        minimum, maximum, means, sds = [], [], [], []
        for values in lengths:
            if values:
                minimum.append(max(1, int(np.floor(np.quantile(values, min_quantile)))))
                maximum.append(max(minimum[-1], int(np.ceil(max(values) * max_scale))))
                logs = np.log(values)
                means.append(float(logs.mean()))
                sds.append(max(float(logs.std()), _DURATION_SD_FLOOR))
            else:  # a class never seen: allowed, at any length up to the longest segment seen
                minimum.append(1)
                maximum.append(longest)
                means.append(float(np.log(longest) / 2))
                sds.append(float(np.log(longest)))  # nearly flat
        counts = counts + smoothing * (1 - np.eye(num_classes))
        np.fill_diagonal(counts, 0.0)
        with np.errstate(divide="ignore"):  # the diagonal: no self-transitions, log 0 = -inf
            transitions = np.log(counts / counts.sum(axis=1, keepdims=True))
        initial = np.log((first + smoothing) / (first + smoothing).sum())
        duration = (tuple(means), tuple(sds)) if durations == "lognormal" else (None, None)
        return cls(tuple(minimum), tuple(maximum), tuple(map(tuple, transitions)), tuple(initial), *duration)

    def to_json(self) -> dict:
        finite = lambda row: [None if not np.isfinite(v) else round(float(v), 6) for v in row]  # noqa: E731
        return {"min_frames": list(self.min_frames), "max_frames": list(self.max_frames),
                "log_transitions": [finite(row) for row in self.log_transitions],
                "log_initial": finite(self.log_initial),
                "duration_log_mean": None if self.duration_log_mean is None else list(self.duration_log_mean),
                "duration_log_sd": None if self.duration_log_sd is None else list(self.duration_log_sd)}

    def log_duration(self) -> np.ndarray:
        """(K, max + 1): log P(a class-c segment lasts d frames), -inf outside [min, max]; without
        a duration model, 0 inside (the limits constrain, no length is preferred)."""
        k, longest = len(self.min_frames), max(self.max_frames)
        table = np.full((k, longest + 1), -np.inf)
        for c in range(k):
            d = np.arange(self.min_frames[c], self.max_frames[c] + 1)
            if self.duration_log_mean is None:  # constraints only: no length is preferred
                table[c, d] = 0.0
                continue
            z = (np.log(d) - self.duration_log_mean[c]) / self.duration_log_sd[c]
            logp = -0.5 * z * z - np.log(d)
            table[c, d] = logp - np.logaddexp.reduce(logp)
        return table

    def _check(self, log_scores) -> np.ndarray:
        scores = np.asarray(log_scores, np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.min_frames):
            raise ValueError(f"decode: {scores.shape[-1] if scores.ndim else 0} classes of scores, "
                             f"the decoder has {len(self.min_frames)}.")
        return scores

    def _lattice(self, scores: np.ndarray, maximise: bool):
        """Forward pass over segment ends. best[t, c]: score of the best (maximise) or of all
        (log-sum) segmentations of frames [0, t) whose last segment, of class c, ends at t;
        entry[t, c]: of those of [0, t) followed by a class-c segment starting at t."""
        t_len, k = scores.shape
        reduce = np.max if maximise else np.logaddexp.reduce
        cumulative = np.vstack([np.zeros((1, k)), np.cumsum(scores, axis=0)])
        transitions, durations = np.asarray(self.log_transitions), self.log_duration()
        best = np.full((t_len + 1, k), -np.inf)
        back = np.zeros((t_len + 1, k, 2), np.int64)  # Viterbi: (start, previous class)
        entry = np.full((t_len + 1, k), -np.inf)
        entry_from = np.full((t_len + 1, k), -1, np.int64)
        entry[0] = np.asarray(self.log_initial)
        for t in range(1, t_len + 1):
            for c in range(k):
                lo, hi = self.min_frames[c], min(self.max_frames[c], t)
                if lo > hi:
                    continue
                starts = np.arange(t - hi, t - lo + 1)
                values = entry[starts, c] + cumulative[t, c] - cumulative[starts, c] + durations[c, t - starts]
                if maximise:
                    i = int(np.argmax(values))
                    best[t, c] = values[i]
                    back[t, c] = (starts[i], entry_from[starts[i], c])
                else:
                    best[t, c] = reduce(values)
            if t < t_len:  # the segments that end at t can be followed by another class
                candidates = best[t][:, None] + transitions  # [from, to]
                if maximise:
                    entry_from[t] = np.argmax(candidates, axis=0)
                    entry[t] = candidates[entry_from[t], np.arange(k)]
                else:
                    entry[t] = np.logaddexp.reduce(candidates, axis=0)
        return cumulative, best, back, entry

    def decode(self, log_scores: np.ndarray) -> np.ndarray:
        """The most likely frame labels for (T, K) per-frame log scores (log posteriors, or log
        posteriors minus log class priors), under the duration and order constraints."""
        scores = self._check(log_scores)
        t_len = scores.shape[0]
        if t_len == 0:
            return np.zeros(0, np.int64)
        if t_len < min(self.min_frames):  # shorter than any segment: one segment, best class
            return np.full(t_len, int(np.argmax(scores.sum(axis=0))), np.int64)
        _, best, back, _ = self._lattice(scores, maximise=True)
        labels = np.empty(t_len, np.int64)
        t, c = t_len, int(np.argmax(best[t_len]))
        if not np.isfinite(best[t_len, c]):
            raise ValueError("decode: no segmentation satisfies the duration limits for this length.")
        while t > 0:
            start, previous = back[t, c]
            labels[start:t] = c
            t, c = int(start), int(previous)
        return labels

    def sample(self, log_scores: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """(num_samples, T) label sequences drawn from the posterior over segmentations
        (forward filtering, backward sampling): what the decoder is unsure about varies
        between the samples, e.g. the block count."""
        scores = self._check(log_scores)
        t_len, k = scores.shape
        if t_len < min(self.min_frames):
            return np.tile(self.decode(scores), (num_samples, 1))
        cumulative, alpha, _, entry = self._lattice(scores, maximise=False)
        if not np.isfinite(alpha[t_len]).any():
            raise ValueError("sample: no segmentation satisfies the duration limits for this length.")
        transitions, durations = np.asarray(self.log_transitions), self.log_duration()

        def draw(log_weights: np.ndarray) -> int:
            weights = np.exp(log_weights - np.max(log_weights))
            return int(rng.choice(log_weights.size, p=weights / weights.sum()))

        out = np.empty((num_samples, t_len), np.int64)
        for n in range(num_samples):
            t, c = t_len, draw(alpha[t_len])
            while t > 0:
                lo, hi = self.min_frames[c], min(self.max_frames[c], t)
                starts = np.arange(t - hi, t - lo + 1)
                start = int(starts[draw(entry[starts, c] + cumulative[t, c] - cumulative[starts, c]
                                        + durations[c, t - starts])])
                out[n, start:t] = c
                if start > 0:
                    c = draw(alpha[start] + transitions[:, c])
                t = start
        return out
