"""Export the relation LoRA: the `relation` and `ffn` adapters (never the subject ones) as one diffusers LoRA
file, with the peft metadata that keeps alpha and per-module ranks, and a model card beside it; and, for a family
that has one, that file's twin in the format of the original checkpoints, which ComfyUI loads."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import save_file

from dreamrelation.config import MethodConfig, RunConfig
from dreamrelation.method.adapters import adapter_specs, exported_adapters
from dreamrelation.models import hub_id
from dreamrelation.models.base import ModelSpecification
from dreamrelation.outputs import LORA_FILENAME, RunDir, comfyui_lora_path

# save_lora_weights files the transformer's weights and adapter metadata under this prefix.
TRANSFORMER_PREFIX = "transformer."


def exported_lora_state(transformer: torch.nn.Module, method: MethodConfig) -> tuple[dict, dict]:
    """Merge the exported adapters of a peft-wrapped transformer into one LoRA.

    Returns (state dict with keys like `transformer_blocks.0.attn1.to_q.lora_A.weight`, peft LoraConfig as a
    dict: the adapter metadata diffusers writes into the file and builds its LoraConfig from on loading).
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
    config = LoraConfig(r=default.rank, lora_alpha=default.alpha, lora_dropout=0.0, target_modules=targets,
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    metadata = config.to_dict()
    # peft keeps the targets as a set, which would be written in an order that changes with the hash seed.
    metadata["target_modules"] = targets
    return state, metadata


def export_lora(
    pipeline_class,
    transformers: dict[str, torch.nn.Module],
    run: RunConfig,
    output_dir: Path,
    captions: list[str],
    load_kwargs: Callable[[str], dict] = lambda component: {},
) -> Path:
    """Write one diffusers-format LoRA file (keys + adapter metadata) per trained transformer of `transformers`
    ({pipeline component: peft-wrapped transformer}; RunDir.lora_file names each) and OUT/README.md.

    `pipeline_class` is the family's diffusers pipeline class, whose `save_lora_weights` writes the files;
    `captions` are the training captions (the card quotes one as the trigger); `load_kwargs(component)` the
    `load_lora_weights` arguments that put a file into its transformer (ModelSpecification.lora_load_kwargs),
    which the card's loading code shows. Returns the first file's path.
    """
    out = RunDir(output_dir)
    for component, transformer in transformers.items():
        state, metadata = exported_lora_state(transformer, run.method)
        path = out.lora_file(component)
        pipeline_class.save_lora_weights(
            out.root,
            transformer_lora_layers=state,
            weight_name=path.name,
            transformer_lora_adapter_metadata=metadata,
        )
        # safetensors writes the file owner-only (0600); an exported LoRA is an output to share, like the card.
        os.chmod(path, 0o644)
    loads = [(out.lora_file(component).name, load_kwargs(component)) for component in transformers]
    out.model_card.write_text(model_card(run, pipeline_class.__name__, captions, loads))
    return out.lora_file(next(iter(transformers)))


def export_comfyui(lora_file: Path, spec: ModelSpecification, output: Path | None = None) -> Path:
    """Write the ComfyUI twin of one diffusers-format LoRA file that export_lora wrote, for a model of family
    `spec`: the same weights in the keys of the family's original checkpoints, with `.alpha` scalars where a
    module's alpha (from the file's adapter metadata) differs from its rank.

    Returns the file written: `output`, or `<stem>_comfyui.safetensors` beside `lora_file`. Raises ValueError
    when the family has no such format.
    """
    with safe_open(str(lora_file), framework="pt") as handle:
        state = {key.removeprefix(TRANSFORMER_PREFIX): handle.get_tensor(key) for key in handle.keys()}
        metadata = json.loads((handle.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY) or "{}")
    config = {key.removeprefix(TRANSFORMER_PREFIX): value for key, value in metadata.items()
              if key.startswith(TRANSFORMER_PREFIX)}
    ranks = {key.removesuffix(".lora_A.weight"): tensor.shape[0] for key, tensor in state.items()
             if key.endswith(".lora_A.weight")}
    # Without metadata diffusers loads every module at alpha = rank, and so does ComfyUI without `.alpha` keys.
    alphas = _module_alphas(LoraConfig(**config), ranks) if config else ranks
    output = Path(output) if output is not None else comfyui_lora_path(lora_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(spec.original_lora_state(state, alphas), output)
    os.chmod(output, 0o644)  # safetensors writes owner-only (0600), as for the diffusers file
    return output


def _module_alphas(config: LoraConfig, modules: Iterable[str]) -> dict[str, float]:
    """Each module's alpha as peft reads `config` when diffusers loads the file (its `alpha_pattern` keys match
    a module path's ending, else `lora_alpha`)."""
    pattern = config.alpha_pattern
    return {module: pattern.get(get_pattern_key(pattern.keys(), module), config.lora_alpha) for module in modules}


# A Jinja template (huggingface_hub renders it; `card_data` is the YAML front matter). The Python snippet takes
# its strings as JSON literals, which are valid Python for any caption or folder name.
CARD_TEMPLATE = """---
{{ card_data }}
---
# Relation LoRA ({{ method.mode }})

A DreamRelation relation adapter (`relation` + `ffn` LoRAs; subject adapters dropped) for `{{ run.model.name }}`.

- Trigger caption (a training caption): **{{ trigger }}**
- Prompt it with the same relation and new subjects, e.g. swap the subjects of the caption above.
- Steps {{ run.train.steps }}, lr {{ run.train.learning_rate }},
  rank {{ method.rank }} / alpha {{ method.resolved_alpha }},
  ffn rank {{ method.resolved_ffn_rank }} / alpha {{ method.resolved_ffn_alpha }},
  λ_m {{ method.lambda_mask if method.mask_loss else "off" }},
  λ_1 {{ method.lambda_contrastive if method.contrastive else "off" }},
  frames {{ run.data.num_frames or "model default" }}.

```python
from diffusers import {{ pipeline }}
pipe = {{ pipeline }}.from_pretrained({{ base_literal }})
{% for load in loads %}pipe.load_lora_weights({{ lora_literal }}, {{ load }})
{% endfor %}video = pipe({{ prompt_literal }}).frames[0]
```
"""
LOCAL_LORA = "<this folder>"  # where the card's loading code takes the LoRA from when it is no Hub repo's


def model_card(run: RunConfig, pipeline_name: str, captions: list[str],
               loads: list[tuple[str, dict]] = ((LORA_FILENAME, {}),), repo_id: str | None = None,
               sample: str | None = None) -> str:
    """A Hub model card (markdown with YAML metadata) for `run`'s LoRA: base model, relation, a trigger caption
    (the first, in sorted order, of `captions`, the training captions; the metadata's `instance_prompt`),
    settings and how to load it in `pipeline_name`: one `load_lora_weights` call per (file name, its keyword
    arguments) of `loads`, from the Hub repo `repo_id` (None: the folder beside the card). `sample`, a video's
    path beside the card, becomes the card's widget (the trigger caption and that video)."""
    trigger = sorted(set(captions))[0]
    base_id = hub_id(run.model.name)
    base = base_id or f"<the folder of the base model this was trained on ({run.model.name})>"
    # The widget entry as diffusers' training scripts write it (load_or_create_model_card's `widget`).
    widget = [{"text": trigger, "output": {"url": sample}}] if sample else None
    # Not diffusers' load_or_create_model_card: it first looks the card up on the Hub, a network request per
    # export (and an error for a local folder's path); what it does after that is this from_template call.
    card = ModelCard.from_template(
        ModelCardData(base_model=base_id, instance_prompt=trigger, widget=widget), template_str=CARD_TEMPLATE,
        run=run, method=run.method, trigger=trigger, pipeline=pipeline_name, base_literal=_python_literal(base),
        prompt_literal=_python_literal(trigger), lora_literal=_python_literal(repo_id or LOCAL_LORA),
        loads=[", ".join([f"weight_name={_python_literal(name)}", *(f"{k}={v!r}" for k, v in kwargs.items())])
               for name, kwargs in loads],
    )
    return str(populate_model_card(card, tags=["lora", "text-to-video", "dreamrelation", "relation"]))


def _python_literal(text: str) -> str:
    """`text` as a double-quoted string literal: JSON escapes are Python escapes, and ensure_ascii=False keeps
    other scripts readable."""
    return json.dumps(text, ensure_ascii=False)
