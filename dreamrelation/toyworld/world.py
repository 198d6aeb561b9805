"""Shapes World: the vocabulary, the scene record and one trajectory law per relation.

A scene is two flat-coloured shapes on a grey background. Subject 1 is the caption's grammatical subject
and the one whose motion defines the relation ("A red circle orbits a blue square": the red circle moves,
the blue square stays). Positions are subject centres (x, y) in pixels, y pointing down; a subject's
size is the side of its bounding square, as a share of the frame's shorter side, so a scene renders the
same at any resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
# Six hues 60 degrees apart, at least 150 apart in RGB and 140 from the grey background, so a blurring VAE
# or a lossy codec cannot turn one into another. Each also differs from the grey in brightness (luma at
# least 35 away): an edge carried by colour alone is blurred by 4:2:0 chroma subsampling (and likely by a
# small VAE), rounding a small square into a circle.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (235, 215, 30),
    "green": (20, 140, 40),
    "cyan": (40, 220, 235),
    "blue": (40, 70, 230),
    "magenta": (245, 110, 245),
}
# Bounding-square side as a share of the frame's shorter side: 17-25 px at 96 px, 23-33 px at 128 px.
# The largest pair still fits an orbit and a jump inside a 96 px frame.
SIZES = {"small": 0.18, "medium": 0.22, "large": 0.26}
BACKGROUNDS = ("plain", "textured")

# Pixels kept free between a subject and the frame edge.
_EDGE_MARGIN = 1.0


@dataclass(frozen=True)
class Subject:
    """One shape: a SHAPES name, a COLOURS name and a SIZES name."""

    shape: str
    colour: str
    size: str = "medium"

    def __post_init__(self):
        checks = ((self.shape, SHAPES, "shape"), (self.colour, COLOURS, "colour"), (self.size, SIZES, "size"))
        for value, vocabulary, kind in checks:
            if value not in vocabulary:
                raise ValueError(f"unknown {kind} {value!r}; use one of {', '.join(vocabulary)}")

    @property
    def phrase(self) -> str:
        """The subject as a caption names it: 'red circle' (sizes are not named)."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A two-subject video: subject1 acts, subject2 is acted on; `seed` fixes start positions and paths."""

    subject1: Subject
    subject2: Subject
    relation: str
    seed: int
    background: str = "plain"

    def __post_init__(self):
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; use one of {', '.join(RELATIONS)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; use one of {', '.join(BACKGROUNDS)}")
        # The judges find subjects by colour, so two subjects of one colour could not be told apart.
        if self.subject1.colour == self.subject2.colour:
            raise ValueError(f"both subjects are {self.subject1.colour}; give them different colours")


@dataclass(frozen=True)
class Layout:
    """A clip's geometry: frame size in pixels and each subject's half-side (r1, r2) in pixels."""

    width: int
    height: int
    r1: float
    r2: float

    @property
    def side(self) -> float:
        """The frame's shorter side: the unit of every distance a relation draws."""
        return float(min(self.width, self.height))


# A trajectory law: (rng, t float (F,) from 0 to 1, layout) -> float (2, F, 2) centres of subject 1 and 2,
# relative to any origin; `trajectories` centres the pair's path in the frame.
Trajectory = Callable[[np.random.Generator, np.ndarray, Layout], np.ndarray]


@dataclass(frozen=True)
class Relation:
    """A relation: its caption verb phrase, whether the base model must not see it, and its motion law.

    `symmetric` relations look the same with the subjects exchanged, so they have no role to judge.
    """

    verb: str
    held_out: bool
    trajectory: Trajectory
    symmetric: bool = False


def _unit(angle: float) -> np.ndarray:
    """float (2,) unit vector at `angle` radians (x right, y down)."""
    return np.array([np.cos(angle), np.sin(angle)])


# Every law below is canonical given its caption: subject 1 starts left of subject 2 (or at its left side),
# the motion runs along the horizontal axis and lengths are fixed; only this share of jitter varies a scene.
# A small model learns one path per caption far sooner than a path per caption, direction and place
# (docs/toy-model.md); the judges still read any direction.
_JITTER = 0.03
_LEFT = np.array([-1.0, 0.0])
_RIGHT = -_LEFT


def _about(rng: np.random.Generator, value: float) -> float:
    """`value` times a factor drawn uniformly within 1 ± _JITTER."""
    return value * rng.uniform(1 - _JITTER, 1 + _JITTER)


def _pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stack two float (F, 2) paths into float (2, F, 2)."""
    return np.stack([a, b])


def _approaches(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Subject 1 travels right, in a straight line, toward the still subject 2 and stops a small gap from it."""
    near = layout.r1 + layout.r2 + _about(rng, 0.06) * layout.side
    far = near + _about(rng, 0.36) * layout.side
    a = _LEFT * (far + (near - far) * t)[:, None]
    return _pair(a, np.zeros_like(a))


def _moves_away_from(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Approaching played backwards: subject 1 starts left beside the still subject 2 and leaves leftwards."""
    return _approaches(rng, 1 - t, layout)


def _bounces_off(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Subject 1 comes down-right into the still subject 2's left side, touching it at mid-clip, and leaves
    mirrored about that side's normal (up-left to down-left)."""
    tilt = np.radians(_about(rng, 30.0))
    incoming = np.array([np.cos(tilt), np.sin(tilt)])  # right and down
    outgoing = incoming * np.array([-1.0, 1.0])
    contact = _LEFT * (layout.r1 + layout.r2)
    travel = _about(rng, 0.32) * layout.side
    s = (2 * t - 1)[:, None]  # -1 at the start, 0 at the contact, 1 at the end
    a = contact + np.where(s < 0, incoming, outgoing) * travel * s
    return _pair(a, np.zeros_like(a))


def _pushes(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Subject 1 reaches the still subject 2 from the left at mid-clip and, touching it, pushes it right at the
    same speed."""
    travel = _about(rng, 0.21) * layout.side
    s = (2 * t - 1)[:, None]
    b = _RIGHT * travel * np.maximum(s, 0)
    a = b - _RIGHT * (layout.r1 + layout.r2 + travel * np.maximum(-s, 0))
    return _pair(a, b)


def _follows(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Both travel right at the same speed, subject 1 a fixed gap behind (left of) subject 2."""
    gap = layout.r1 + layout.r2 + _about(rng, 0.09) * layout.side
    b = _RIGHT * (_about(rng, 0.33) * layout.side * t)[:, None]
    return _pair(b - _RIGHT * gap, b)


def _swaps_places_with(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Each subject travels to the other's start, subject 1 (starting left) passing above subject 2."""
    up = np.array([0.0, -1.0])
    distance = layout.r1 + layout.r2 + _about(rng, 0.22) * layout.side
    # Half the passing distance each side, so at mid-clip the two are a small gap apart.
    offset = (layout.r1 + layout.r2 + layout.side * 0.04) / 2
    bulge = (offset * np.sin(np.pi * t))[:, None] * up
    a = _RIGHT * (distance * t)[:, None] + bulge
    b = _RIGHT * (distance * (1 - t))[:, None] - bulge
    return _pair(a, b)


def _orbits(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Subject 1 circles the still subject 2 once, at constant speed and radius, from its left, clockwise on screen."""
    # 1.1x the summed half-sides plus a gap: only square corners can graze, and the one on top hides them.
    radius = 1.1 * (layout.r1 + layout.r2) + 0.03 * layout.side
    # y points down, so a growing angle turns clockwise on screen; a start of pi is subject 2's left.
    angle = np.pi + _about(rng, 1.0) * 2 * np.pi * t
    a = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _pair(a, np.zeros_like(a))


def _jumps_over(rng: np.random.Generator, t: np.ndarray, layout: Layout) -> np.ndarray:
    """Subject 1 starts on the ground left of the still subject 2 and leaps over it in a half-ellipse to its right.

    The ellipse's half-width is k times the summed half-sides; its height is the least that keeps subject 1
    clear of subject 2's top wherever their columns overlap (a bounding-square bound, so any shapes clear).
    """
    k = _about(rng, 1.32)
    half_width = k * (layout.r1 + layout.r2)
    height = (2 * layout.r2 + 0.03 * layout.side) / np.sqrt(1 - 1 / k**2)
    ground = layout.r2 - layout.r1  # subject 1's centre y when both stand on the same ground line
    angle = np.pi * t
    a = np.stack([-half_width * np.cos(angle), ground - height * np.sin(angle)], axis=1)
    return _pair(a, np.zeros_like(a))


RELATIONS: dict[str, Relation] = {
    "approaches": Relation("approaches", False, _approaches),
    "moves_away_from": Relation("moves away from", False, _moves_away_from),
    "bounces_off": Relation("bounces off", False, _bounces_off),
    "pushes": Relation("pushes", False, _pushes),
    "follows": Relation("follows", False, _follows),
    "swaps_places_with": Relation("swaps places with", False, _swaps_places_with, symmetric=True),
    "orbits": Relation("orbits", True, _orbits),
    "jumps_over": Relation("jumps over", True, _jumps_over),
}
TRAINED_RELATIONS = tuple(name for name, relation in RELATIONS.items() if not relation.held_out)
# Colour pairs (either order) the toy base model never sees together, so its quality on unseen subject pairs
# can be measured; each colour still appears with every other colour.
HELD_OUT_COLOUR_PAIRS = (frozenset({"red", "cyan"}), frozenset({"yellow", "blue"}), frozenset({"green", "magenta"}))
HELD_OUT_RELATIONS = tuple(name for name, relation in RELATIONS.items() if relation.held_out)


def half_side(subject: Subject, height: int, width: int) -> float:
    """A subject's bounding-square half-side in pixels for a height x width frame."""
    return SIZES[subject.size] * min(height, width) / 2


def trajectories(scene: Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    """Per-frame centres of both subjects.

    Takes a scene, the frame count and the frame size in pixels. Draws the relation's path from the scene's
    seed and centres it in the frame, give or take _JITTER of the frame's side, keeping both subjects wholly
    inside the frame on every frame. Returns float64 (2, num_frames, 2): [subject, frame, (x, y)] in pixels, deterministic in the
    scene. Raises ValueError when the relation cannot fit the frame at these subject sizes.
    """
    if num_frames < 2:
        raise ValueError(f"a relation needs at least 2 frames, got {num_frames}")
    layout = Layout(width, height, half_side(scene.subject1, height, width), half_side(scene.subject2, height, width))
    radii = np.array([layout.r1, layout.r2])[:, None, None]
    frame = np.array([width, height], float)
    rng = np.random.default_rng(scene.seed)
    centres = RELATIONS[scene.relation].trajectory(rng, np.linspace(0, 1, num_frames), layout)
    low = (centres - radii).min(axis=(0, 1)) - _EDGE_MARGIN
    high = (centres + radii).max(axis=(0, 1)) + _EDGE_MARGIN
    slack = frame - (high - low)
    if (slack >= 0).all():
        shift = np.clip(slack / 2 + rng.uniform(-1, 1, 2) * _JITTER * layout.side, 0, slack)
        return centres - low + shift
    raise ValueError(
        f"{scene.relation} with {scene.subject1.size} and {scene.subject2.size} subjects does not fit a "
        f"{width}x{height} frame; use a larger frame or smaller subjects"
    )


def sample_scenes(
    count: int,
    seed: int,
    relations: Sequence[str] = tuple(RELATIONS),
    backgrounds: Sequence[str] = BACKGROUNDS,
) -> list[Scene]:
    """Draw `count` random scenes, deterministic in `seed`.

    Relations take turns (scene i gets relations[i % len]) so each gets an equal share, and each round of
    relations gets the next background, so every relation is seen on every background; colours (two
    different ones), shapes and each scene's own seed are random; every subject is medium-sized, as
    captions do not name sizes (a size the text cannot choose would be noise to learn). Returns a list of Scene.
    """
    rng = np.random.default_rng(seed)
    colours, shapes = list(COLOURS), list(SHAPES)

    def subject(colour: str) -> Subject:
        return Subject(shapes[rng.integers(len(shapes))], colour)

    scenes = []
    for index in range(count):
        first, second = rng.choice(len(colours), size=2, replace=False)
        scenes.append(
            Scene(
                subject(colours[first]),
                subject(colours[second]),
                relations[index % len(relations)],
                int(rng.integers(2**31)),
                backgrounds[index // len(relations) % len(backgrounds)],
            )
        )
    return scenes


def is_held_out_pair(colour1: str, colour2: str) -> bool:
    """Whether two subject colours form one of HELD_OUT_COLOUR_PAIRS (an unseen subject pair)."""
    return frozenset({colour1, colour2}) in HELD_OUT_COLOUR_PAIRS
