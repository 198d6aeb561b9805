"""Automatic subject masks: caption -> subject phrases -> detector boxes -> SAM2 propagation (or the basic
segmenter offline) -> reference-compatible colour PNGs, overlay previews and quality flags."""
