"""Caption -> the two subject phrases that the detector looks for.

A heuristic for the one-sentence captions of a relation dataset ("A dog is chasing a cat."), not a parser:

- subject 1 is the noun phrase that opens the caption, after a leading article ("a", "an", "the", ...);
- subject 2 is the noun phrase after the last later determiner ("with a person", "a cat", "the ball"),
  skipping trailing scene phrases ("in the garden", "on the beach") when an earlier candidate exists;
- a noun phrase runs until an auxiliary ("is", "are"), a preposition, a conjunction or another determiner;
  a word just before a determiner ("orbits" in "A red circle orbits a blue square") or a verb-looking word
  just before a preposition ("sits" in "A cat sits on a dog") is the verb and is dropped, as are -ing
  words after the noun ("A dog chasing ...") and trailing -ly adverbs.

It fails on unusual grammar ("A man gives a woman a flower" -> "flower"); the user can then name the
subjects directly (parse_subjects_override, the CLI's --subjects dog,cat).
"""

from __future__ import annotations

import re


class SubjectError(ValueError):
    """A caption (or --subjects value) that does not name two subjects; the message says how to fix it.

    `problem` is the message without the fix, for a caller that gives its own (training has no --subjects).
    """

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem


_NAME_BOTH = "name both, e.g. 'A dog is chasing a cat.' or pass --subjects dog,cat"

_DETERMINERS = frozenset(
    "a an the another this one his her their its my your our two three four five six seven eight nine ten".split()
)
_AUXILIARIES = frozenset(
    "is are was were be been being has have had do does did can could will would should may might must gets get"
    .split()
)
_PREPOSITIONS = frozenset(
    "with to at in on onto into from by for of over under above below behind beside besides near towards toward "
    "around through across along after before past against between off up down out about inside outside upon "
    "beneath among like via next than".split()
)
# Prepositions that usually open a scene ("in the park"), not the second subject.
_SCENE_PREPOSITIONS = frozenset("in on at inside near under across along through around beside by".split())
_CONJUNCTIONS = frozenset("and or but while as then who that which whose where when each other together".split())
_BOUNDARIES = _DETERMINERS | _AUXILIARIES | _PREPOSITIONS | _CONJUNCTIONS

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def _looks_like_verb(word: str) -> bool:
    """True for words shaped like a verb: 'orbits', 'chased', 'waving', 'high-fives' (not 'bus', 'glass')."""
    if word.endswith("ing") or word.endswith("ed") or "-" in word:
        return True
    return word.endswith("s") and not word.endswith(("ss", "us", "is", "'s"))


def _noun_phrase(words: list[str], start: int) -> tuple[list[str], int]:
    """Read the noun phrase that starts at words[start].

    Returns (the phrase's words, possibly empty; the index of the word that ended it, len(words) at the end).
    """
    end = start
    while end < len(words) and words[end] not in _BOUNDARIES:
        # "-ing" after the noun starts a clause ("A dog chasing a cat"); before it, it is an adjective.
        if end > start and words[end].endswith("ing"):
            break
        end += 1
    phrase = words[start:end]
    stop = words[end] if end < len(words) else None
    # A word right before an object ("orbits a ...", "sits on a ...") is the verb, not part of the noun.
    if len(phrase) > 1 and stop is not None:
        if stop in _DETERMINERS or (stop in _PREPOSITIONS and _looks_like_verb(phrase[-1])):
            phrase = phrase[:-1]
    while len(phrase) > 1 and phrase[-1].endswith("ly"):
        phrase = phrase[:-1]
    return phrase, end


def subject_phrases(caption: str) -> tuple[str, str]:
    """Return the two subjects a caption names, lower case: 'A dog is chasing a cat.' -> ('dog', 'cat').

    Raises SubjectError when the caption names fewer than two (e.g. 'Two people high-five.').
    """
    words = _WORD.findall(caption.lower())
    start = 1 if words and words[0] in _DETERMINERS else 0
    first, position = _noun_phrase(words, start)
    if not first:
        raise SubjectError("caption names no subject", _NAME_BOTH)
    # Candidates for subject 2: each noun phrase opened by a later determiner, with the word before it.
    candidates = []
    for index in range(position, len(words)):
        if words[index] in _DETERMINERS:
            phrase, _ = _noun_phrase(words, index + 1)
            if phrase:
                candidates.append((words[index - 1], phrase))
    while len(candidates) > 1 and candidates[-1][0] in _SCENE_PREPOSITIONS:
        candidates.pop()
    if not candidates:
        raise SubjectError("caption names one subject", _NAME_BOTH)
    return " ".join(first), " ".join(candidates[-1][1])


def parse_subjects_override(text: str) -> tuple[str, str]:
    """Parse a user's 'dog,cat' into ('dog', 'cat'); SubjectError unless it holds exactly two non-empty names."""
    names = tuple(name.strip() for name in text.split(","))
    if len(names) != 2 or not all(names):
        raise SubjectError(f"subjects must be two comma-separated names such as 'dog,cat', got {text!r}")
    return names
