"""The relation LoRA triplet as named peft adapters, and the hybrid-mask training modes (docs/method.md §1-2).

| adapter   | placement (default)                    | trained in modes            | exported |
|-----------|----------------------------------------|-----------------------------|----------|
| relation  | video and text query/key               | relation                    | yes      |
| subject1  | video and text value                   | relation, subject1          | no       |
| subject2  | video and text value                   | relation, subject2          | no       |
| ffn       | attention output projections           | every mode (or relation: subject_modes_train_ffn off) | yes |

Adapter outputs add up (`y = W x + sum_active (alpha/r) B A x`); masks never gate them, they weight the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from dreamrelation.config import MethodConfig
from dreamrelation.models.base import ModelSpecification


@dataclass(frozen=True)
class AdapterSpec:
    """One named adapter: where it goes (a placement key of the model family) and its rank/alpha."""

    name: str
    placement: str
    rank: int
    alpha: float


@dataclass(frozen=True)
class TrainingMode:
    """One hybrid-mask mode: the adapters active in it and the loss mask it uses ('relation', 'subject1',
    'subject2', 'background' or None for plain MSE)."""

    name: str
    adapters: tuple[str, ...]
    loss_mask: str | None


# Where the relation adapter goes for each placement, and then the subject adapters (the ablation
# "relation on V" swaps the two).
_SUBJECT_PLACEMENT = {"qk": "v", "q": "v", "v": "qk"}


def adapter_specs(method: MethodConfig) -> list[AdapterSpec]:
    """The adapters of a method configuration, in the order they are added."""
    if method.mode == "direct-lora":
        return [AdapterSpec("direct", "qkvo", method.rank, method.resolved_alpha)]
    specs = [AdapterSpec("relation", method.relation_placement, method.rank, method.resolved_alpha)]
    if method.subject_adapters:
        subject_placement = _SUBJECT_PLACEMENT[method.relation_placement]
        specs += [AdapterSpec(name, subject_placement, method.rank, method.resolved_alpha)
                  for name in ("subject1", "subject2")]
    specs.append(AdapterSpec("ffn", "out", method.resolved_ffn_rank, method.resolved_ffn_alpha))
    return specs


def exported_adapters(method: MethodConfig) -> list[str]:
    """Adapters kept for inference: relation + ffn (subject adapters are dropped), or the direct one."""
    return ["direct"] if method.mode == "direct-lora" else ["relation", "ffn"]


PRIOR = "prior"  # the mode name of a prior-preservation step


def prior_mode(method: MethodConfig) -> TrainingMode:
    """The mode of a prior-preservation step: the adapters generation keeps, the plain loss (docs/method.md §8)."""
    return TrainingMode(PRIOR, tuple(exported_adapters(method)), None)


def training_modes(method: MethodConfig) -> list[TrainingMode]:
    """The modes one step picks from uniformly (docs/method.md §2)."""
    relation_mask = "relation" if method.mask_loss else None
    if method.mode == "direct-lora":
        return [TrainingMode("direct", ("direct",), None)]
    if not method.subject_adapters:
        return [TrainingMode("relation", ("relation", "ffn"), relation_mask)]
    with_ffn = ("ffn",) if method.subject_modes_train_ffn else ()
    return [
        TrainingMode("relation", ("relation", "subject1", "subject2", "ffn"), relation_mask),
        TrainingMode("subject1", ("subject1", *with_ffn), "subject1" if method.mask_loss else None),
        TrainingMode("subject2", ("subject2", *with_ffn), "subject2" if method.mask_loss else None),
    ]


def draw_mode(modes: Sequence[TrainingMode], method: MethodConfig, generator: torch.Generator) -> TrainingMode:
    """This step's mode: uniform over `modes` (the paper's draw), or relation mode with probability
    `method.relation_share` and otherwise one subject mode, uniformly (docs/method.md §2). A relation-mode step
    leaves the subject adapters out with probability `method.subject_dropout`, and then takes the 'background'
    loss when `method.dropout_subject_weight` is set (and mask_loss on)."""
    if method.relation_share is None or len(modes) == 1:
        mode = modes[int(torch.randint(len(modes), (1,), generator=generator))]
    elif float(torch.rand((), generator=generator)) < method.relation_share:
        mode = modes[0]
    else:
        return modes[1 + int(torch.randint(len(modes) - 1, (1,), generator=generator))]
    if (mode is modes[0] and len(modes) > 1 and method.subject_dropout
            and float(torch.rand((), generator=generator)) < method.subject_dropout):
        # Without mask_loss the run may have no masks: its steps keep the plain loss.
        loss_mask = mode.loss_mask if method.dropout_subject_weight is None or not mode.loss_mask else "background"
        return TrainingMode(mode.name, tuple(exported_adapters(method)), loss_mask)
    return mode


def add_adapters(transformer: torch.nn.Module, spec: ModelSpecification, method: MethodConfig) -> list[str]:
    """Add the method's LoRA adapters (A Kaiming-uniform, B zero, dropout 0, fp32) to `transformer`.

    Every target list is computed before the first adapter is added, since wrapped layers stop being
    `nn.Linear`. Returns the adapter names; all of them are active and trainable afterwards.
    """
    plans = [(adapter, spec.target_modules(transformer, adapter.placement)) for adapter in adapter_specs(method)]
    for adapter, targets in plans:
        config = LoraConfig(
            r=adapter.rank,
            lora_alpha=adapter.alpha,
            lora_dropout=0.0,
            init_lora_weights=True,
            target_modules=targets,
        )
        transformer.add_adapter(config, adapter_name=adapter.name)
    names = [adapter.name for adapter, _ in plans]
    activate_adapters(transformer, names)
    # The base may run in bf16; adapter weights stay fp32 (peft casts inputs to the adapter's dtype). The
    # trainable parameters are exactly the adapters: peft froze the base when it added them.
    cast_training_params(transformer, torch.float32)
    return names


def activate_adapters(transformer: torch.nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Make exactly `names` active: they take part in the forward pass and require grad; the others neither."""
    transformer.set_adapter(list(names))


def adapter_parameters(transformer: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """{parameter path: parameter} of one adapter's LoRA weights."""
    marker = f".{name}."
    return {path: p for path, p in transformer.named_parameters() if "lora_" in path and marker in path}


def adapter_parameter_count(transformer: torch.nn.Module, spec: ModelSpecification, method: MethodConfig) -> int:
    """Parameters the method's adapters would add to `transformer` (rank x (in + out) per target layer),
    counted without adding them: it works on a meta-device transformer (the memory estimate's)."""
    modules = dict(transformer.named_modules())
    return sum(
        adapter.rank * (modules[path].in_features + modules[path].out_features)
        for adapter in adapter_specs(method)
        for path in spec.target_modules(transformer, adapter.placement)
    )
