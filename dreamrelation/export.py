"""Export the relation LoRA: the `relation` and `ffn` adapters (never the subject ones) as one diffusers LoRA
file, with the peft metadata that keeps alpha and per-module ranks, and a model card beside it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict

from dreamrelation.config import MethodConfig, RunConfig
from dreamrelation.method.adapters import adapter_specs, exported_adapters
from dreamrelation.models import hub_id
from dreamrelation.outputs import LORA_FILENAME, RunDir


def exported_lora_state(transformer: torch.nn.Module, method: MethodConfig) -> tuple[dict, dict]:
    """Merge the exported adapters of a peft-wrapped transformer into one LoRA.

    Returns (state dict with keys like `transformer_blocks.0.attn1.to_q.lora_A.weight`, LoraConfig kwargs).
    Adapters sit on disjoint modules, so their weights merge without clashes; the first adapter's rank and
    alpha are the defaults and the others' modules get `rank_pattern` / `alpha_pattern` entries.
    """
    keep = exported_adapters(method)
    specs = [spec for spec in adapter_specs(method) if spec.name in keep]
    state, targets, rank_pattern, alpha_pattern = {}, [], {}, {}
    default = specs[0]
    for spec in specs:
        adapter_state = get_peft_model_state_dict(transformer, adapter_name=spec.name)
        state.update({key: value.detach().float().cpu().contiguous() for key, value in adapter_state.items()})
        modules = transformer.peft_config[spec.name].target_modules
        targets += sorted(modules)
        for module in modules:
            if spec.rank != default.rank:
                rank_pattern[module] = spec.rank
            if spec.alpha != default.alpha:
                alpha_pattern[module] = spec.alpha
    metadata = {
        "r": default.rank,
        "lora_alpha": default.alpha,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
    return state, metadata


def export_lora(
    pipeline_class, transformer: torch.nn.Module, run: RunConfig, output_dir: Path, captions: list[str]
) -> Path:
    """Write OUT/relation_lora.safetensors (diffusers key format + adapter metadata) and OUT/README.md.

    `pipeline_class` is the family's diffusers pipeline class, whose `save_lora_weights` writes the file;
    `captions` are the training captions (the card quotes one as the trigger). Returns the LoRA file's path.
    """
    out = RunDir(output_dir)
    state, metadata = exported_lora_state(transformer, run.method)
    pipeline_class.save_lora_weights(
        out.root,
        transformer_lora_layers=state,
        weight_name=LORA_FILENAME,
        transformer_lora_adapter_metadata=metadata,
    )
    out.model_card.write_text(model_card(run, pipeline_class.__name__, captions))
    # diffusers writes the file owner-only (0600); an exported LoRA is an output to share, like the card.
    os.chmod(out.lora, 0o644)
    return out.lora


def model_card(run: RunConfig, pipeline_name: str, captions: list[str]) -> str:
    """A Hub-style model card: base model, relation, trigger caption, settings and how to load it."""
    captions = sorted(set(captions))
    method = run.method
    repo_id = hub_id(run.model.name)
    base = repo_id or f"<the folder of the base model this was trained on ({run.model.name})>"
    base_line = f"base_model: {repo_id}\n" if repo_id else ""
    return f"""---
library_name: diffusers
{base_line}tags: [lora, text-to-video, dreamrelation, relation]
---
# Relation LoRA ({method.mode})

A DreamRelation relation adapter (`relation` + `ffn` LoRAs; subject adapters dropped) for `{run.model.name}`.

- Trained on {len(captions)} distinct caption(s), e.g. **{captions[0]}**
- Prompt it with the same relation and new subjects, e.g. swap the subjects of the caption above.
- Steps {run.train.steps}, lr {run.train.learning_rate}, rank {method.rank} / alpha {method.resolved_alpha}
  (ffn {method.resolved_ffn_rank} / {method.resolved_ffn_alpha}), λ_m {method.lambda_mask if method.mask_loss else "off"},
  λ_1 {method.lambda_contrastive if method.contrastive else "off"}, frames {run.data.num_frames or "model default"}.

```python
from diffusers import {pipeline_name}
pipe = {pipeline_name}.from_pretrained("{base}")
pipe.load_lora_weights("<this folder>", weight_name="{LORA_FILENAME}")
video = pipe("{captions[0]}").frames[0]
```
"""
