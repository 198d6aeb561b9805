"""The small records the mask engines exchange: detections and per-subject prompts."""

from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the frame


@dataclass(frozen=True)
class Detection:
    """One detector box for a phrase."""

    box: Box
    score: float
    phrase: str


@dataclass
class SubjectPrompt:
    """Prompts for one subject on one frame: a box and/or clicked points (label 1 = on the subject, 0 = not)."""

    subject: int  # 0 for subject 1, 1 for subject 2
    frame: int
    box: Box | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.subject not in (0, 1):
            raise ValueError(f"subject must be 0 or 1, got {self.subject}")
        if len(self.points) != len(self.labels):
            raise ValueError("each point needs a label (1 = on the subject, 0 = background)")
        if self.box is None and not self.points:
            raise ValueError("a prompt needs a box or at least one point")
