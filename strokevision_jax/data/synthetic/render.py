"""Rendering: a clip's frames drawn with PIL.

The wall, the chair, the patient behind the table, the box with its partition and cube piles (the
source compartment stays full), the arms, hands and the cube in the hand (drawn 4.5 cm wide
instead of 2.5 cm so that it stays visible at 64 x 64).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from strokevision_jax.data.keypoints import COCO17
from strokevision_jax.data.synthetic.config import (
    BOX_FRONT_TOP,
    BOX_HALF_WIDTH,
    CUBE_CM,
    HAND_RADII_CM,
    HELD_CUBE_CM,
    PARTITION_HALF_WIDTH,
    TARGET_FILL,
    SimulatorConfig,
)
from strokevision_jax.data.synthetic.patients import _Patient
from strokevision_jax.data.synthetic.pose import _Camera
from strokevision_jax.data.synthetic.sessions import _Session


def _rectangles(x0, y0, x1, y1) -> np.ndarray:
    """Corners (..., 4, 2) of axis-aligned world rectangles; arguments broadcast."""
    x0, y0, x1, y1 = np.broadcast_arrays(*(np.asarray(v, float) for v in (x0, y0, x1, y1)))
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1),
                     np.stack([x1, y1], -1), np.stack([x0, y1], -1)], -2)


class _Painter:
    """Draws into PIL frames: world shapes go through the clip's camera, colours through its light."""

    def __init__(self, config: SimulatorConfig, patient: _Patient, camera: _Camera, light: np.ndarray):
        self.config, self.p, self.camera, self.light = config, patient, camera, light
        colours = patient.colours
        self.skin = self.colour(colours["skin"])
        self.hand = self.colour(np.asarray(colours["skin"]) * 0.95)
        self.hand_edge = self.colour(np.asarray(colours["skin"]) * 0.5)
        self.eye = self.colour(np.asarray(colours["skin"]) * 0.3)
        self.hair = self.colour(colours["hair"])
        self.shirt = self.colour(colours["shirt"])
        self.sleeve = self.colour(np.asarray(colours["shirt"]) * 0.8)  # a shade apart from the torso
        self.forearm = self.sleeve if patient.long_sleeves else self.skin
        self.cubes = [self.colour(c) for c in patient.cube_palette]

    def colour(self, rgb) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(np.asarray(rgb, float) * self.light, 0, 255))

    def polygons(self, draw, corners: np.ndarray, fills) -> None:
        """corners: (N, k, 2) world cm; fills: one colour or N colours."""
        flat = self.camera(corners).reshape(len(corners), -1).tolist()
        fills = [fills] * len(flat) if isinstance(fills, (tuple, int)) else fills
        for points, fill in zip(flat, fills):
            draw.polygon(points, fill=fill)

    def background(self) -> Image.Image:
        """Wall (vertical light gradient), decorations and the chair back; static for a clip."""
        p, (height, width) = self.p, (self.config.height, self.config.width)
        shade = np.linspace(1.08, 0.85, height)[:, None, None]
        wall = np.clip(np.asarray(p.colours["wall"]) * self.light * shade, 0, 255)
        image = Image.fromarray(np.broadcast_to(wall, (height, width, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for x0, y0, x1, y1, rgb in p.decor:
            draw.rectangle((x0 * width, y0 * height, x1 * width, y1 * height), fill=self.colour(rgb))
        chair = _rectangles(p.chair_x - 21, p.table_far_y - 2, p.chair_x + 21, p.shoulder_y + 4)
        self.polygons(draw, chair[None], self.colour(p.colours["chair"]))
        return image

    def foreground(self, target_count: int) -> tuple[Image.Image, Image.Image]:
        """Table, box, partition and the cube piles (colour image, mask); static for a clip."""
        p, (height, width) = self.p, (self.config.height, self.config.width)
        image = Image.new("RGB", (width, height))
        mask = Image.new("L", (width, height))
        draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        wood, table = np.asarray(p.colours["wood"]), np.asarray(p.colours["table"])
        floor_top = BOX_FRONT_TOP + p.box_depth
        half_box, top = BOX_HALF_WIDTH, p.partition_top
        shapes = [
            ((-200, -80, 200, p.table_far_y), table),
            ((-200, p.table_far_y - 0.8, 200, p.table_far_y), table * 0.8),  # far edge
            ((-half_box, 0, half_box, BOX_FRONT_TOP), wood * 0.8),  # front wall
            ((-half_box, floor_top, half_box, floor_top + 2.0), wood * 1.05),  # back rim
            ((-half_box + 1, BOX_FRONT_TOP, half_box - 1, floor_top), wood * 0.62),  # floor
            ((-half_box, BOX_FRONT_TOP, -half_box + 1, floor_top + 2), wood * 0.9),  # side walls
            ((half_box - 1, BOX_FRONT_TOP, half_box, floor_top + 2), wood * 0.9),
        ]
        boxes = _rectangles(*np.array([box for box, _ in shapes]).T)
        self.polygons(draw, boxes, [self.colour(rgb) for _, rgb in shapes])
        # Source compartment: a full heap. Target: the cubes moved so far in this trial, one layer.
        shown = np.zeros(len(p.slots), bool)
        shown[p.target_order[:min(target_count, int(TARGET_FILL * len(p.target_order)))]] = True
        x = np.concatenate([p.side * p.slots[:, 0], -p.side * p.slots[shown, 0]])
        y = np.concatenate([p.slots[:, 1], p.slots[shown, 1]])
        colours = np.concatenate([p.slot_colours, p.slot_colours[shown]])
        half, inner = CUBE_CM / 2, CUBE_CM / 2 - 0.4
        edges = _rectangles(x - half, y - half, x + half, y + half)
        faces = _rectangles(x - inner, y - inner, x + inner, y + inner)
        edge = self.colour(wood * 0.35)
        corners = np.stack([edges, faces], 1).reshape(-1, 4, 2)  # edge, face, edge, face, ...
        fills = [c for colour in colours for c in (edge, self.cubes[colour])]
        self.polygons(draw, corners, fills)
        partition = _rectangles([-PARTITION_HALF_WIDTH] * 2, [BOX_FRONT_TOP, top - 0.7],
                                [PARTITION_HALF_WIDTH] * 2, [top, top])
        self.polygons(draw, partition, [self.colour(wood * 1.1), self.colour(wood * 1.25)])
        self.polygons(mask_draw, _rectangles([-200, -PARTITION_HALF_WIDTH], [-80, BOX_FRONT_TOP],
                                             [200, PARTITION_HALF_WIDTH], [p.table_far_y, top]), 255)
        return image, mask


@dataclasses.dataclass(frozen=True)
class _Figure:
    """Pixel positions of everything drawn on the person, for all frames at once."""

    torso: list  # per frame, flat polygon coordinates
    neck: list
    hair: np.ndarray  # (T, 4) ellipse boxes
    face: np.ndarray
    eyes: np.ndarray  # (T, 2, 4)
    tested_arm: np.ndarray  # (T, 4, 2) shoulder, elbow, wrist, hand
    other_arm: np.ndarray
    held_cube: list  # per frame, flat polygon coordinates
    limb_widths: tuple  # (upper arm, forearm) pixels
    hand_radii: tuple  # pixels


def _ellipse_boxes(centres_px: np.ndarray, rx: float, ry: float) -> np.ndarray:
    return np.concatenate([centres_px - [rx, ry], centres_px + [rx, ry]], -1)


def _figure(patient: _Patient, pose: dict, camera: _Camera) -> _Figure:
    p, scale = patient, camera.scale
    joints = pose["joints"]
    left, right = joints[:, COCO17["left_shoulder"]], joints[:, COCO17["right_shoulder"]]
    hips, mid, head = pose["hips_mid"], pose["mid"], pose["head"]
    hip_half = np.array([0.42 * p.shoulder_width, 0.0])
    torso = np.stack([right + [-2.5, -2.0], right + [-0.5, 2.0], left + [0.5, 2.0], left + [2.5, -2.0],
                      hips + hip_half - [0, 12.0], hips - hip_half - [0, 12.0]], 1)
    neck = np.stack([mid - [3.0, 0.0], mid + [3.0, 0.0], head + [3.0, 0.0], head - [3.0, 0.0]], 1)
    r = p.head_radius
    eyes = camera(joints[:, [COCO17["left_eye"], COCO17["right_eye"]]])
    tested_arm, other_arm = (camera(np.stack([*pose[arm], pose[hand]], 1))
                             for arm, hand in (("tested_joints", "hand"), ("other_joints", "other_hand")))
    # The cube sits below the hand centre; the hand drawn over it hides its top.
    centre = pose["hand"] - [0.0, 0.75 * HELD_CUBE_CM]
    half = HELD_CUBE_CM / 2
    cube = _rectangles(centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half)
    return _Figure(
        torso=camera(torso).reshape(len(torso), -1).tolist(),
        neck=camera(neck).reshape(len(neck), -1).tolist(),
        hair=_ellipse_boxes(camera(head + [0.0, 0.25 * r]), 1.05 * r * scale, 0.95 * r * scale),
        face=_ellipse_boxes(camera(head), 0.9 * r * scale, r * scale),
        eyes=_ellipse_boxes(eyes, 0.12 * r * scale, 0.08 * r * scale),
        tested_arm=tested_arm, other_arm=other_arm,
        held_cube=camera(cube).reshape(len(cube), -1).tolist(),
        limb_widths=(max(1, round(7.0 * scale)), max(1, round(5.5 * scale))),
        hand_radii=(HAND_RADII_CM[0] * scale, HAND_RADII_CM[1] * scale),
    )


def _draw_arm(draw, painter: _Painter, figure: _Figure, arm: np.ndarray, cube=None) -> None:
    """arm: (4, 2) pixels of shoulder, elbow, wrist, hand centre; cube: (polygon, colour) held."""
    (s, e, w, h), (upper, lower) = arm.tolist(), figure.limb_widths
    draw.line(s + e, fill=painter.sleeve, width=upper)
    draw.ellipse((e[0] - upper / 2, e[1] - upper / 2, e[0] + upper / 2, e[1] + upper / 2), fill=painter.sleeve)
    draw.line(e + w, fill=painter.forearm, width=lower)
    if cube is not None:
        draw.polygon(cube[0], fill=cube[1])
    rx, ry = figure.hand_radii
    draw.ellipse((h[0] - rx, h[1] - ry, h[0] + rx, h[1] + ry), fill=painter.hand, outline=painter.hand_edge)


def _render(config: SimulatorConfig, patient: _Patient, session: _Session, pose: dict,
            times: np.ndarray, light: np.ndarray) -> np.ndarray:
    camera = _Camera.of(config, patient)
    painter = _Painter(config, patient, camera, light)
    start = times[0]
    trial_start = session.trial_starts[np.searchsorted(session.trial_starts, start, side="right") - 1]
    dropped_before = int(np.sum((session.drop_times >= trial_start) & (session.drop_times < start)))
    background = painter.background()
    foreground, mask = painter.foreground(dropped_before)
    figure = _figure(patient, pose, camera)
    # Cubes released during the clip appear where they land.
    in_clip = np.flatnonzero((session.drop_times >= start) & (session.drop_times <= times[-1]))
    half = CUBE_CM / 2
    points = session.drop_points[in_clip]
    landed = camera(_rectangles(*(points - half).T, *(points + half).T))
    landed = landed.reshape(len(in_clip), 8).tolist()
    frames = np.empty((len(times), config.height, config.width, 3), np.uint8)
    for frame, t in enumerate(times):
        image = background.copy()
        draw = ImageDraw.Draw(image)
        draw.polygon(figure.torso[frame], fill=painter.shirt)
        draw.polygon(figure.neck[frame], fill=painter.skin)
        draw.ellipse(figure.hair[frame].tolist(), fill=painter.hair)
        draw.ellipse(figure.face[frame].tolist(), fill=painter.skin)
        for eye in figure.eyes[frame].tolist():
            draw.ellipse(eye, fill=painter.eye)
        hidden = bool(pose["other_hidden"][frame])
        if hidden:  # the other hand in the lap, under the table
            _draw_arm(draw, painter, figure, figure.other_arm[frame])
        image.paste(foreground, (0, 0), mask)
        for drop, corners in zip(in_clip, landed):
            if session.drop_times[drop] <= t:
                draw.polygon(corners, fill=painter.cubes[session.hold_colour[drop]])
        if not hidden:
            _draw_arm(draw, painter, figure, figure.other_arm[frame])
        held = int(pose["held_colour"][frame])
        cube = (figure.held_cube[frame], painter.cubes[held]) if held >= 0 else None
        _draw_arm(draw, painter, figure, figure.tested_arm[frame], cube)
        frames[frame] = np.asarray(image)
    return frames
