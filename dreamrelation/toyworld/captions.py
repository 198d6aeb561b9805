"""Captions for Shapes World scenes, and reading them (or any prompt naming two subjects) back.

A caption is role-explicit: its grammatical subject is the scene's subject 1, the actor.
"A red circle orbits a blue square." = the red circle moves around the still blue square.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from dreamrelation.toyworld.world import COLOURS, RELATIONS, SHAPES, Scene


class PromptSubject(NamedTuple):
    """A subject as a prompt names it: a COLOURS name and a SHAPES name (prompts give no size)."""

    colour: str
    shape: str


def _alternatives(words) -> str:
    """A regex group matching any of `words`, longest first so 'moves away from' is not cut short."""
    return "(" + "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True)) + ")"


_SUBJECT = rf"{_alternatives(COLOURS)} {_alternatives(SHAPES)}"
_VERBS = {relation.verb: name for name, relation in RELATIONS.items()}
_CAPTION = re.compile(rf"an? {_SUBJECT} {_alternatives(_VERBS)} an? {_SUBJECT}\.?", re.IGNORECASE)
_SUBJECT_ANYWHERE = re.compile(rf"\b{_SUBJECT}\b", re.IGNORECASE)


def _article(phrase: str) -> str:
    """'an' before a vowel sound, else 'a'."""
    return "an" if phrase[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    """The scene's caption: 'A red circle orbits a blue square.' (subject 1, verb phrase, subject 2)."""
    first, second = scene.subject1.phrase, scene.subject2.phrase
    verb = RELATIONS[scene.relation].verb
    return f"{_article(first).capitalize()} {first} {verb} {_article(second)} {second}."


def parse_caption(text: str) -> tuple[str, str, str]:
    """Invert `caption`: text -> (subject 1 phrase, relation name, subject 2 phrase).

    Case and runs of whitespace are ignored; the final full stop is optional. Returns e.g.
    ('red circle', 'orbits', 'blue square'). Raises ValueError for text that is not a Shapes World caption.
    """
    match = _CAPTION.fullmatch(" ".join(text.split()))
    if not match:
        raise ValueError(f"{text!r} is not a Shapes World caption such as 'A red circle orbits a blue square.'")
    colour1, shape1, verb, colour2, shape2 = (group.lower() for group in match.groups())
    return f"{colour1} {shape1}", _VERBS[verb], f"{colour2} {shape2}"


def prompt_subjects(text: str) -> tuple[PromptSubject, PromptSubject]:
    """The first two 'colour shape' phrases of any prompt, in order.

    Works on captions and on prompts whose relation is a placeholder word ('A red circle <R> a blue square').
    Returns (subject 1, subject 2) as PromptSubject. Raises ValueError when fewer than two are named.
    """
    found = [PromptSubject(colour.lower(), shape.lower()) for colour, shape in _SUBJECT_ANYWHERE.findall(text)]
    if len(found) < 2:
        raise ValueError(
            f"{text!r} names {len(found)} subject(s); name two as colour + shape, e.g. 'red circle', 'blue square'"
        )
    return found[0], found[1]
