"""Shapes World: a synthetic two-subject relation video world with ground truth, and judges for it.

world (vocabulary, scenes, relation motion laws), render (frames and exact masks), captions (role-explicit
captions and their parsing), dataset (a ready relation dataset folder), examples (the exemplar datasets of
assets/examples/), tracking and judges (relation, role and appearance judgements of decoded, possibly
generated, video), text_pretraining (text-only pretraining of the toy model's T5 on the caption grammar, so
its token outputs carry each word's role).
"""
