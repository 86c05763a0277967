"""The `manual` config's import: labels.csv -> validated plan -> decoded clips -> summary.

Two passes, so that a build either succeeds or names every bad input:
  1. `plan_import` reads labels.csv, checks every row (label, ids, window, split, that the video
     opens and the keypoint file parses with 17 finite joints) and assigns splits by patient;
     all problems are raised together before anything is written.
  2. `import_split` decodes the videos (each file once) and checks what needs the decoded
     frames (keypoint frames == video frames, windows inside the video, truncation); its problems
     are collected, and `finish` raises them together after the last split, inside TFDS's
     temporary build directory, so that a failed build leaves nothing that loads.
With skip_invalid, bad rows are skipped instead and listed in the summary printed at the end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from strokevision_jax.data import recordings as rec
from strokevision_jax.data import videos as video_io

LABELS_FILE = "labels.csv"
IMPORT_RECORD = "manual_import.json"  # written beside the data: what was imported, from which labels.csv
REQUIRED_COLUMNS = ("clip_id", "patient_id", "label", "video", "keypoints")
HANDS = ("more_affected", "less_affected")  # the optional `hand` column: which hand the recording tests
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
STRETCH_TOLERANCE = 0.10  # clips whose length differs from num_frames / fps by more are counted


@dataclasses.dataclass(frozen=True)
class ClipRow:
    """One valid row of labels.csv."""

    line: int
    clip_id: str
    patient_id: str
    label: int
    video: str  # as written in labels.csv (relative to manual_dir)
    keypoints: str
    window: tuple[float, float] | None  # (start, end) seconds; None = the whole video
    split: str | None  # the `split` cell; None when absent or empty
    blocks: int | None = None  # the clinician's Box and Block Test count of the recording, if given
    hand: str | None = None  # the recording's tested hand (HANDS), if given


def derived_split(patient_id: str) -> str:
    """train / validation / test (about 70 / 15 / 15 % of patients) from a hash of the patient id.

    A patient's split depends on its id only, so adding patients never moves existing ones.
    """
    value = int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") / 2**64
    train, validation, _ = SPLIT_FRACTIONS
    return "train" if value < train else "validation" if value < train + validation else "test"


def labels_fingerprint(manual_dir: pathlib.Path) -> str:
    return hashlib.sha256((pathlib.Path(manual_dir) / LABELS_FILE).read_bytes()).hexdigest()


FINGERPRINT_BYTES = 1 << 20  # hashed at each end of a file


def file_fingerprint(path: pathlib.Path) -> dict:
    """{size, sha256 of the first and last MiB}: a replaced recording changes it (a copy or a
    `touch` does not). Constant cost per file: a whole-file hash runs at about 1 GB/s from memory
    on a 2-core machine, too slow to repeat over tens of GB of recordings at every reuse."""
    if path.is_dir():  # a keypoint folder (one file per frame): its files' fingerprints, combined
        parts = [(str(p.relative_to(path)), file_fingerprint(p)) for p in sorted(path.rglob("*")) if p.is_file()]
        return {"size": sum(f["size"] for _, f in parts),
                "ends_sha256": hashlib.sha256(repr(parts).encode()).hexdigest()}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
    return {"size": size, "ends_sha256": digest.hexdigest()}


def recording_fingerprints(plan: "ImportPlan") -> dict[str, dict]:
    """{labels.csv cell: fingerprint} of every video and keypoints file of the imported rows."""
    cells = sorted({cell for rows in plan.clips.values() for row in rows for cell in (row.video, row.keypoints)})
    return {cell: file_fingerprint(plan.resolve(cell)) for cell in cells if plan.resolve(cell).exists()}


def changed_recordings(manual_dir: pathlib.Path, recorded: dict[str, dict]) -> list[str]:
    """The recorded files that are gone or whose fingerprint differs now, each with what changed."""
    changed = []
    for cell, before in sorted(recorded.items()):
        path = pathlib.Path(manual_dir) / cell
        if not path.exists():
            changed.append(f"{cell} (gone)")
            continue
        now = file_fingerprint(path)
        if now["size"] != before.get("size"):
            changed.append(f"{cell} (size {before.get('size'):,} -> {now['size']:,} bytes)")
        elif now["ends_sha256"] != before.get("ends_sha256"):
            changed.append(f"{cell} (same size, other content)")
    return changed


# ----------------------------------------------------------------------------------------------
# Pass 1: the plan


@dataclasses.dataclass
class ImportPlan:
    manual_dir: pathlib.Path
    config: rec.ImportConfig
    skip_invalid: bool
    clips: dict[str, list[ClipRow]]
    keypoints: dict[str, rec.Keypoints]  # by the `keypoints` cell
    skipped: list[rec.Problem]  # pass 1 problems (only when skip_invalid)
    failed: list[rec.Problem] = dataclasses.field(default_factory=list)  # pass 2 problems
    imported: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    stored_frames: int = 0
    frames_without_person: int = 0
    stretched: list[str] = dataclasses.field(default_factory=list)
    skipped_rows: int = 0  # rows of labels.csv left out by pass 1
    done: set = dataclasses.field(default_factory=set)  # splits decoded
    labels_sha256: str = ""

    def resolve(self, cell: str) -> pathlib.Path:
        return self.manual_dir / cell


def _check_row(manual_dir: pathlib.Path, line: int, cells: dict, seen_ids: dict[str, int],
               videos: dict, keypoints: dict) -> tuple[ClipRow | None, list[rec.Problem]]:
    problems = []

    def report(problem: str, fix: str):
        problems.append(rec.Problem(LABELS_FILE, line, problem, fix))

    clip_id, patient_id = cells.get("clip_id", ""), cells.get("patient_id", "")
    if not clip_id:
        report("empty clip_id", "give every clip a unique id")
    elif clip_id in seen_ids:
        report(f"duplicate clip_id {clip_id!r} (first on line {seen_ids[clip_id]})", "clip ids must be unique")
    else:
        seen_ids[clip_id] = line
    if not patient_id:
        report("empty patient_id", "give the patient's id (splits are made by patient)")
    label = window = None
    try:
        label = rec.parse_label(cells.get("label", ""))
    except rec.InputError as error:
        report(error.problem, error.fix)
    try:
        window = rec.parse_window(cells.get("start", ""), cells.get("end", ""))
    except rec.InputError as error:
        report(error.problem, error.fix)
    blocks = hand = None
    if cells.get("blocks"):
        try:
            blocks = int(cells["blocks"])
        except ValueError:
            blocks = -1
        if blocks < 0:
            report(f"blocks {cells['blocks']!r} is not a count", "give the clinician's count of blocks moved in the "
                   "recording (a whole number >= 0), or leave it empty")
    if cells.get("hand"):
        hand = cells["hand"]
        if hand not in HANDS:
            report(f"unknown hand {hand!r}", f"use {' or '.join(HANDS)}, or leave it empty")
    split = cells.get("split") or None
    if split is not None and split not in SPLITS:
        report(f"unknown split {split!r}", f"use {', '.join(SPLITS)}, or leave it empty to derive it from patient_id")
    readers = (("video", videos, video_io.probe_video_or_error), ("keypoints", keypoints, rec.read_keypoints_or_error))
    for column, cache, read in readers:
        cell = cells.get(column, "")
        if not cell:
            report(f"empty {column}", f"give the {column} path relative to the manual_dir")
            continue
        if cell not in cache:
            cache[cell] = read(manual_dir / cell)
        if isinstance(cache[cell], rec.InputError):
            report(cache[cell].problem, cache[cell].fix)
    if problems:
        return None, problems
    return ClipRow(line, clip_id, patient_id, label, cells["video"], cells["keypoints"], window, split, blocks, hand), []


def _recording_conflicts(rows: list[ClipRow]) -> tuple[list[rec.Problem], set[str]]:
    """(problems, videos whose rows disagree): `blocks` and `hand` are one value per recording."""
    problems, disagreeing = [], set()
    by_video = collections.defaultdict(list)
    for row in rows:
        by_video[row.video].append(row)
    for video, video_rows in by_video.items():
        for column in ("blocks", "hand"):
            given = collections.defaultdict(list)
            for row in video_rows:
                if getattr(row, column) is not None:
                    given[getattr(row, column)].append(row.line)
            if len(given) > 1:
                disagreeing.add(video)
                where = "; ".join(f"{value} on line(s) {', '.join(map(str, lines))}" for value, lines in given.items())
                problems.append(rec.Problem(LABELS_FILE, min(min(v) for v in given.values()),
                                            f"the rows of {video} disagree on {column} ({where})",
                                            f"{column} is one value per recording: give all of its rows the same "
                                            "one, or leave the others empty"))
    return problems, disagreeing




def _split_conflicts(rows: list[ClipRow]) -> tuple[dict[str, str], list[rec.Problem], set[str]]:
    """(split of each patient, problems, patients in two splits): explicit cells win, else the hash."""
    explicit = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        if row.split:
            explicit[row.patient_id][row.split].append(row.line)
    split_of, problems, conflicted = {}, [], set()
    for row in rows:
        given = explicit.get(row.patient_id)
        if given and len(given) > 1:
            if row.patient_id not in conflicted:
                where = "; ".join(f"{s} on line(s) {', '.join(map(str, lines))}" for s, lines in given.items())
                problems.append(rec.Problem(LABELS_FILE, min(min(v) for v in given.values()),
                                            f"patient {row.patient_id!r} is in two splits ({where})",
                                            "splits must be disjoint by patient: give all of a patient's rows one split"))
                conflicted.add(row.patient_id)
            continue
        split_of[row.patient_id] = next(iter(given)) if given else derived_split(row.patient_id)
    return split_of, problems, conflicted


def plan_import(manual_dir: pathlib.Path, config: rec.ImportConfig, skip_invalid: bool = False) -> ImportPlan:
    """Pass 1; raises RecordingsError listing every problem (or, with skip_invalid, keeps them to report)."""
    manual_dir = pathlib.Path(manual_dir)
    lines, problems = rec.read_csv_rows(manual_dir / LABELS_FILE, REQUIRED_COLUMNS)
    if problems:  # no rows to check or skip
        raise rec.RecordingsError(f"strokevision/manual: cannot read {manual_dir / LABELS_FILE}:", problems)
    rows, seen_ids, videos, keypoints = [], {}, {}, {}
    for line, cells in lines:
        row, row_problems = _check_row(manual_dir, line, cells, seen_ids, videos, keypoints)
        problems += row_problems
        if row is not None:
            rows.append(row)
    split_of, split_problems, conflicted = _split_conflicts(rows)
    problems += split_problems
    recording_problems, disagreeing = _recording_conflicts(rows)
    problems += recording_problems
    rows = [row for row in rows if row.video not in disagreeing]
    rows = [row for row in rows if row.patient_id not in conflicted]
    if problems and not skip_invalid:
        raise rec.RecordingsError(
            f"strokevision/manual: {len(problems)} problem(s) in {manual_dir}; nothing was built. Fix them, "
            "or build with skip_invalid=True (train: --skip_invalid) to skip these rows:", problems)
    clips = {split: [row for row in rows if split_of[row.patient_id] == split] for split in SPLITS}
    empty = [split for split in SPLITS if not clips[split]]
    if empty:
        raise rec.RecordingsError(
            f"strokevision/manual: no clips in the {', '.join(empty)} split(s) of {manual_dir}; nothing was built:",
            [rec.Problem(LABELS_FILE, None, f"{len(rows)} usable clips from {len(split_of)} patients leave "
                         f"{', '.join(empty)} empty", "add a split column (train / validation / test), or more "
                         "patients (derived splits put about 70 / 15 / 15 % of patients in each)")] + problems)
    used = {row.keypoints for row in rows}
    return ImportPlan(manual_dir, config, skip_invalid, clips,
                      {cell: kp for cell, kp in keypoints.items() if cell in used}, problems,
                      skipped_rows=len(lines) - len(rows), labels_sha256=labels_fingerprint(manual_dir))


# ----------------------------------------------------------------------------------------------
# Pass 2: decoding


def _import_video(plan: ImportPlan, video: str, rows: list[ClipRow]) -> list[tuple[ClipRow, dict | rec.Problem]]:
    """All clips of one video file: (row, example) or (row, problem)."""
    try:
        decoded = video_io.decode_windows(plan.resolve(video), [row.window for row in rows], plan.config)
    except rec.InputError as error:
        return [(row, rec.problem_from(error, LABELS_FILE, row.line)) for row in rows]
    results = []
    for row, window in zip(rows, decoded.windows):
        if isinstance(window, rec.InputError):
            results.append((row, rec.problem_from(window, LABELS_FILE, row.line)))
            continue
        keypoints = plan.keypoints[row.keypoints]
        if keypoints.num_frames != decoded.num_frames:
            results.append((row, rec.Problem(
                LABELS_FILE, row.line,
                f"{row.keypoints} has {keypoints.num_frames} frames of keypoints but {video} decodes to "
                f"{decoded.num_frames} frames",
                "keypoints need one pose per frame of the whole video file (also when start/end pick a "
                "window); run the pose estimator on this exact file")))
            continue
        results.append((row, _example(plan, row, window, keypoints, decoded.source_hw)))
    return results


def _example(plan: ImportPlan, row: ClipRow, window: video_io.WindowFrames, keypoints: rec.Keypoints,
             source_hw: tuple[int, int]) -> dict:
    config = plan.config
    joints = rec.scale_keypoints(keypoints.joints[window.source_indices], source_hw, (config.height, config.width))
    return {
        "video": window.frames,
        "keypoints": np.ascontiguousarray(joints[..., :2]),
        "keypoint_scores": np.clip(joints[..., 2], 0.0, 1.0),
        "label": row.label,
        "patient_id": row.patient_id,
        "clip_id": row.clip_id,
        "source_video": row.video,
        "start": np.float32(window.start),
        "end": np.float32(window.end),
        "source_frame_index": window.source_indices,
        "blocks": np.int32(-1 if recording_value(plan, row, "blocks") is None else recording_value(plan, row, "blocks")),
        "hand": recording_value(plan, row, "hand") or "",
    }


def recording_value(plan: ImportPlan, row: ClipRow, column: str):
    """A recording's `blocks` / `hand`: the row's own cell, else that of another row of the video."""
    value = getattr(row, column)
    if value is None:
        value = next((getattr(r, column) for rows in plan.clips.values() for r in rows
                      if r.video == row.video and getattr(r, column) is not None), None)
    return value


def decode_workers(tasks: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, tasks))


def _by_video(plan: ImportPlan, split: str) -> list[tuple[str, list[ClipRow]]]:
    by_video = collections.defaultdict(list)
    for row in plan.clips[split]:
        by_video[row.video].append(row)
    return list(by_video.items())


def _decoded(plan: ImportPlan, split: str) -> Iterator[tuple[ClipRow, dict | rec.Problem]]:
    tasks = _by_video(plan, split)
    for results in _bounded_map(lambda task: _import_video(plan, *task), tasks, decode_workers(len(tasks))):
        yield from results


def import_split(plan: ImportPlan, split: str) -> Iterator[tuple[str, dict]]:
    """Pass 2 for one split: yields (clip_id, example); problems go to plan.failed."""
    yielded = 0
    for row, result in _decoded(plan, split):
        if isinstance(result, rec.Problem):
            plan.failed.append(result)
            continue
        _count(plan, split, result)
        yielded += 1
        yield row.clip_id, result
    plan.done.add(split)
    if not yielded:
        # TFDS cannot write an empty split: stop here, after checking the splits not yet decoded
        # so that the error still names every bad clip.
        for other in SPLITS:
            if other not in plan.done:
                plan.failed += [r for _, r in _decoded(plan, other) if isinstance(r, rec.Problem)]
                plan.done.add(other)
        raise rec.RecordingsError(
            f"strokevision/manual: no clip of the {split} split of {plan.manual_dir} could be imported; "
            "nothing was kept:", sorted(plan.failed, key=lambda p: p.line or 0))


def _bounded_map(function, items: list, workers: int) -> Iterator:
    """function over items on `workers` threads, in order, with at most 2 * workers results waiting.

    FFmpeg decodes and scales without holding the GIL, so threads decode files in parallel; the
    bound keeps decoded clips from piling up when the writer is slower.
    """
    if workers == 1:
        yield from map(function, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _count(plan: ImportPlan, split: str, example: dict) -> None:
    plan.imported[split] += 1
    plan.stored_frames += len(example["keypoint_scores"])
    plan.frames_without_person += int((example["keypoint_scores"] <= 0).all(axis=1).sum())
    length = float(example["end"] - example["start"])
    if abs(length - plan.config.clip_seconds) > STRETCH_TOLERANCE * plan.config.clip_seconds:
        plan.stretched.append(f"{example['clip_id']} ({length:.2f} s)")


def finish(plan: ImportPlan) -> str:
    """After the last split: raises RecordingsError for pass 2 problems (unless skip_invalid); the summary."""
    failed = sorted(plan.failed, key=lambda p: p.line or 0)
    if failed and not plan.skip_invalid:
        raise rec.RecordingsError(
            f"strokevision/manual: {len(failed)} clip(s) of {plan.manual_dir} failed to import; nothing was "
            "kept. Fix them, or build with skip_invalid=True (train: --skip_invalid) to skip them:", failed)
    return summary(plan)


def summary(plan: ImportPlan) -> str:
    config = plan.config
    total = sum(plan.imported.values())
    videos = {row.video for rows in plan.clips.values() for row in rows}
    patients = {row.patient_id for rows in plan.clips.values() for row in rows}
    lines = [
        f"strokevision/manual: imported {total} clips of {len(patients)} patients from {len(videos)} video "
        f"file(s) in {plan.manual_dir}",
        "  splits: " + ", ".join(f"{split} {plan.imported[split]}" for split in SPLITS),
        f"  stored: {config.num_frames} frames per clip, {config.height} x {config.width}; a "
        f"{config.clip_seconds:g} s window is resampled to {config.fps:g} fps",
        f"  stored frames with no person (keypoints 0, score 0): {plan.frames_without_person} of {plan.stored_frames}",
    ]
    for cell, kp in sorted(plan.keypoints.items()):
        if kp.frames_with_several or kp.frames_without_person:
            lines.append(f"    {cell} ({kp.layout}): {kp.frames_with_several} frames with several people "
                         f"(kept the patient), {kp.frames_without_person} with none")
    if plan.stretched:
        lines.append(f"  clips stretched to {config.num_frames} frames (length not {config.clip_seconds:g} s "
                     f"+-{STRETCH_TOLERANCE:.0%}): {len(plan.stretched)}: {', '.join(plan.stretched[:10])}"
                     + (" ..." if len(plan.stretched) > 10 else ""))
    skipped = plan.skipped + sorted(plan.failed, key=lambda p: p.line or 0)
    if skipped:
        lines.append(f"  skipped {plan.skipped_rows + len(plan.failed)} invalid row(s) (skip_invalid):")
        lines += [f"    {p.format()}" for p in skipped]
    return "\n".join(lines)
