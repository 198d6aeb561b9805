"""Text-only pretraining of the toy model's tiny T5, so that each caption token's output carries its role.

A random frozen T5 gives a colour word nearly the same output whatever its role, and the toy model's
transformer puts no position encoding on text tokens, so it reads a caption almost as a bag of words and
cannot tell which colour is subject 1's. A real T5 has read every word in every order; the tiny one gets the same on the
world's whole caption grammar (every ordered colour pair, every shape pair, all relations, held-out ones
included: text only, the transformer still never sees a video of them). Temporary linear heads on each
token's output predict its role in the caption and its own word; the heads are then dropped, so the encoder
stays a stock `T5EncoderModel` and the pipeline stock diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import permutations, product

import torch
import torch.nn.functional as F

from dreamrelation.toyworld.captions import caption, parse_caption
from dreamrelation.toyworld.world import COLOURS, RELATIONS, SHAPES, Scene, Subject, is_held_out_pair

# Each token's role in "A red circle moves away from a blue square.": subject 1's colour and shape, the
# relation's words, subject 2's colour and shape, and everything else (articles, full stop, </s>).
ROLES = ("other", "colour1", "shape1", "relation", "colour2", "shape2")
SUBJECT1_ROLES = (ROLES.index("colour1"), ROLES.index("shape1"))
SUBJECT2_ROLES = (ROLES.index("colour2"), ROLES.index("shape2"))
# Label of padding: cross-entropy skips it.
IGNORE = -100
# The recipe measured with the transformer (issue 11); on the toy T5 the held-out probe already reads 1.00 at
# 300 steps (seeds 0-2), so 1500 (about 13 s on a CPU core) leaves a wide margin.
PRETRAIN_STEPS = 1500


def grammar_captions() -> list[str]:
    """Every Shapes World caption: each ordered pair of different colours, each pair of shapes, each relation."""
    return [
        caption(Scene(Subject(shape1, colour1), Subject(shape2, colour2), relation, seed=0))
        for (colour1, colour2), shape1, shape2, relation in product(permutations(COLOURS, 2), SHAPES, SHAPES, RELATIONS)
    ]


def split_held_out(captions: Sequence[str]) -> tuple[list[str], list[str]]:
    """(probe training captions, held-out captions): held out are those naming a held-out colour pair or relation.

    So the probe is judged on captions of the subject pairs and relations the transformer never sees in video.
    """
    train, held_out = [], []
    for text in captions:
        phrase1, relation, phrase2 = parse_caption(text)
        unseen = is_held_out_pair(phrase1.split()[0], phrase2.split()[0]) or RELATIONS[relation].held_out
        (held_out if unseen else train).append(text)
    return train, held_out


def token_roles(text: str, tokenizer) -> list[int]:
    """The ROLES index of each of the tokenizer's tokens of caption `text` (its </s> included), as a list of int."""
    phrase1, relation, phrase2 = parse_caption(text)
    colour1, shape1 = phrase1.split()
    colour2, shape2 = phrase2.split()
    # The role words in caption order; every other token (an article, the full stop) is "other". No role word
    # is an article, and the two colours differ, so walking the tokens in order labels each role word once.
    expected = [(colour1, "colour1"), (shape1, "shape1")]
    expected += [(word, "relation") for word in RELATIONS[relation].verb.split()]
    expected += [(colour2, "colour2"), (shape2, "shape2")]
    roles = []
    for token in tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids):
        if expected and token == expected[0][0]:
            roles.append(ROLES.index(expected.pop(0)[1]))
        else:
            roles.append(ROLES.index("other"))
    if expected:
        raise ValueError(f"the tokenizer does not spell {text!r} word by word (missing {expected[0][0]!r})")
    return roles


def tokenize_with_roles(captions: Sequence[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and roles of `captions`, each long (N, L) padded to the longest (roles IGNORE there).

    Padding length does not change a T5's outputs at real tokens (padding is masked out of attention, and its
    position bias is relative), so these match the pipeline's `max_sequence_length` encodings.
    """
    tokens = tokenizer(list(captions), padding="longest", return_tensors="pt")
    roles = torch.full_like(tokens.input_ids, IGNORE)
    for row, text in enumerate(captions):
        labels = token_roles(text, tokenizer)
        roles[row, : len(labels)] = torch.tensor(labels)
    return tokens.input_ids, tokens.attention_mask, roles


def pretrain_text_encoder(
    text_encoder,
    tokenizer,
    steps: int = PRETRAIN_STEPS,
    seed: int = 0,
    batch: int = 64,
    lr: float = 1e-3,
    log: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train a `T5EncoderModel` in place on `grammar_captions()`, then freeze it (eval mode, no gradients).

    Each step draws `batch` captions (long (B, L) ids) and classifies every real token's output (float
    (B, L, d_model)) twice with temporary linear heads: its ROLES index (6 classes) and its own token id
    (the vocabulary), summing both cross-entropies. The role objective puts the role into the output; the
    word objective keeps the word in it (roles alone could map every subject-1 colour to one vector). `log`,
    if given, gets (step, loss) after each step. Deterministic in `seed` and the encoder's weights; the
    global RNG is left alone. Returns the last step's loss and the role and word accuracies over the
    whole grammar: {"loss", "role_accuracy", "word_accuracy"}.
    """
    ids, mask, roles = (t.to(text_encoder.device) for t in tokenize_with_roles(grammar_captions(), tokenizer))
    words = torch.where(mask.bool(), ids, IGNORE)
    width = text_encoder.config.d_model
    # The heads' initial weights come from `seed`, not from the caller's RNG (the script's later phases draw on it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = torch.nn.ModuleDict({name: torch.nn.Linear(width, classes)
                                     for name, classes in (("role", len(ROLES)), ("word", len(tokenizer)))})
    heads.to(text_encoder.device)
    # Eval mode (no dropout) trains the encoder as the pipeline runs it, and draws nothing from the global RNG.
    text_encoder.eval().requires_grad_(True)
    optimizer = torch.optim.AdamW([*text_encoder.parameters(), *heads.parameters()], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)

    def losses(picks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = text_encoder(input_ids=ids[picks], attention_mask=mask[picks]).last_hidden_state
        role_logits, word_logits = heads["role"](hidden), heads["word"](hidden)
        loss = F.cross_entropy(role_logits.flatten(0, 1), roles[picks].flatten(), ignore_index=IGNORE)
        loss = loss + F.cross_entropy(word_logits.flatten(0, 1), words[picks].flatten(), ignore_index=IGNORE)
        return loss, role_logits.argmax(-1), word_logits.argmax(-1)

    loss = torch.zeros(())
    for step in range(steps):
        loss = losses(torch.randint(len(ids), (batch,), generator=generator).to(ids.device))[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if log is not None:
            log(step + 1, loss.item())
    text_encoder.requires_grad_(False)
    with torch.no_grad():
        _, role_guess, word_guess = losses(slice(None))
    real = mask.bool()
    return {
        "loss": loss.item(),
        "role_accuracy": (role_guess == roles)[real].float().mean().item(),
        "word_accuracy": (word_guess == ids)[real].float().mean().item(),
    }


@torch.no_grad()
def subject_token_features(text_encoder, tokenizer, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the colour and shape tokens of `captions`: float (M, d_model), and bool (M,) True for subject 1."""
    ids, mask, roles = (t.to(text_encoder.device) for t in tokenize_with_roles(captions, tokenizer))
    hidden = text_encoder.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    subject1 = torch.isin(roles, torch.tensor(SUBJECT1_ROLES, device=roles.device))
    chosen = subject1 | torch.isin(roles, torch.tensor(SUBJECT2_ROLES, device=roles.device))
    return hidden[chosen].double().cpu(), subject1[chosen].cpu()


def role_probe_accuracy(
    text_encoder, tokenizer, train_captions: Sequence[str], held_out_captions: Sequence[str]
) -> float:
    """How often a linear probe on a colour or shape token's own output tells subject 1's from subject 2's.

    The probe is closed-form least squares (float64, with a bias) of ±1 targets on the outputs (float
    (M, d_model)) of `train_captions`' colour and shape tokens, deterministic with no training loop; it is
    scored on `held_out_captions`' tokens. Returns the accuracy in [0, 1] (chance 0.5).
    """
    features, subject1 = subject_token_features(text_encoder, tokenizer, train_captions)
    design = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    weights = torch.linalg.lstsq(design, subject1.double() * 2 - 1).solution
    features, subject1 = subject_token_features(text_encoder, tokenizer, held_out_captions)
    guess = features @ weights[:-1] + weights[-1] > 0
    return (guess == subject1).double().mean().item()
