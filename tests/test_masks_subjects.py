"""Caption -> subject phrases, and the user's --subjects override."""

from __future__ import annotations

import pytest

from dreamrelation.masks.subjects import SubjectError, parse_subjects_override, subject_phrases


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A person is shaking hands with a person.", ("person", "person")),
        ("A dog is chasing a cat.", ("dog", "cat")),
        ("A red circle orbits a blue square.", ("red circle", "blue square")),
        ("A bear is shaking hands with a raccoon.", ("bear", "raccoon")),
        ("An elephant pushes a zebra.", ("elephant", "zebra")),
        ("The person kicks another person.", ("person", "person")),
        ("A man and a woman are dancing.", ("man", "woman")),
        ("A dog is chasing a cat in the garden.", ("dog", "cat")),
        ("A man in a red shirt is hugging a woman.", ("man", "woman")),
        ("A cat sits on a dog.", ("cat", "dog")),
        ("A dog chasing a cat.", ("dog", "cat")),
        ("A person high-fives a person.", ("person", "person")),
        ("A person is giving a bottle to a person.", ("person", "person")),
        ("A mother hugs her child.", ("mother", "child")),
        ("A kangaroo is boxing with a man on the beach.", ("kangaroo", "man")),
        ("A big brown dog runs after a small cat quickly.", ("big brown dog", "small cat")),
        ("A cat jumps over a dog on the beach.", ("cat", "dog")),
        ("a person waving at a person", ("person", "person")),
        ("  A Yellow Triangle bumps into a green square!  ", ("yellow triangle", "green square")),
    ],
)
def test_subject_phrases(caption, expected):
    assert subject_phrases(caption) == expected


@pytest.mark.parametrize("caption", ["Two people high-five.", "A person is waving.", "Dogs play.", ""])
def test_caption_naming_fewer_than_two_subjects_says_how_to_fix(caption):
    with pytest.raises(SubjectError, match=r"caption names (one|no) subject; name both, .*--subjects dog,cat"):
        subject_phrases(caption)


def test_subject_error_is_a_value_error():
    assert issubclass(SubjectError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"), [("dog,cat", ("dog", "cat")), (" red circle , blue square ", ("red circle", "blue square"))]
)
def test_parse_subjects_override(text, expected):
    assert parse_subjects_override(text) == expected


@pytest.mark.parametrize("text", ["dog", "dog,", ",cat", "dog,cat,bird", "", " , "])
def test_parse_subjects_override_rejects_anything_but_two_names(text):
    with pytest.raises(SubjectError, match="two comma-separated names"):
        parse_subjects_override(text)
