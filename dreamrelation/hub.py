"""The Hugging Face Hub: publish a run's relation LoRA as a model repo, and fetch a published one by its repo id.

A published relation holds what a run folder holds for loading it (outputs.py): the LoRA file of each trained
expert, config.yaml, a model card (README.md, export.py's template with the repo as the LoRA's location) and
the newest sample video, which the card shows. A fetched one is a snapshot folder of the hub client's cache,
which `generate` reads like a run folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from dreamrelation.config import RunConfig, read_yaml_sections
from dreamrelation.export import model_card
from dreamrelation.models import resolve_model
from dreamrelation.outputs import EXPERT_LORA_FILENAMES, LORA_FILENAME, MODEL_CARD_FILENAME, RunDir

# What a relation needs to load; the ComfyUI twins and anything else in a repo stay on the Hub.
RELATION_FILES = [*EXPERT_LORA_FILENAMES.values(), "config.yaml"]


class HubError(ValueError):
    """A publish or fetch that cannot be done; the message (one line) says what to change."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` (stripped) when it is a model repo id of the form user/name, as the hub client validates it;
    HubError otherwise. The id is not quoted back: a token pasted into the wrong field must not reach a log."""
    text = repo_id.strip() if isinstance(repo_id, str) else ""
    try:
        validate_repo_id(text)
        valid = text.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise HubError("not a Hub repo id: write user/name (letters, digits, '-', '_' and '.'; no '--' or '..'; "
                       "at most 96 characters)")
    return text


def _is_hub_id(value: str | Path) -> bool:
    """Whether a LoRA argument names a Hub repo (user/name) rather than a local path: a valid id that is no
    existing file or folder."""
    text = str(value)
    if Path(text).expanduser().exists():
        return False
    try:
        check_repo_id(text)
    except HubError:
        return False
    return True


def relation_folder(lora: str | Path) -> Path:
    """A LoRA argument as a local path: a Hub id (user/name, and no existing file or folder) is fetched
    (fetch_relation, with the hub client's own login), anything else is taken as the path it names."""
    return fetch_relation(str(lora)) if _is_hub_id(lora) else Path(lora)


def fetch_relation(repo_id: str, token: str | bool | None = None) -> Path:
    """The snapshot folder (in the hub client's cache) of a relation published on the Hub: its current revision,
    of which only the files the cache lacks are downloaded (its LoRA files and config.yaml, nothing else);
    offline (HF_HUB_OFFLINE=1) or with the Hub unreachable, the cached snapshot.

    `token`: None for the hub client's own login (HF_TOKEN or the stored one), False for none (a server's
    visitors must not reach the repos its login opens). HubError for a bad id, a repo that cannot be had, or
    one without a relation LoRA."""
    repo_id = check_repo_id(repo_id)
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=RELATION_FILES, token=token))
    except Exception as error:  # any failure of the hub client (offline, not found, auth, network) is one line
        raise HubError(f"relation {repo_id} could not be fetched from the Hub or its cache "
                       f"({type(error).__name__}): check the repo name; offline, run `hf download {repo_id}` on a "
                       "connected machine first") from None
    if not RunDir(folder).lora_files():
        raise HubError(f"{repo_id} holds no relation LoRA ({LORA_FILENAME}): it is not a published relation")
    return folder


def push_relation(run_folder: Path, repo_id: str, token: str | None = None, private: bool = False,
                  api: HfApi | None = None) -> str:
    """Publish a run folder's relation to the Hub model repo `repo_id` (created when missing) and return its URL.

    Uploads exactly the LoRA file of each trained expert, config.yaml, a model card for the repo and the newest
    sample video (the card's widget), never checkpoints or progress logs. `token`: None for the hub client's own
    login (HF_TOKEN or the stored one); `api`: the HfApi to use (tests pass a stand-in; it then holds the
    token). HubError for a bad id, a folder that is no finished run, or any failure on the way to the Hub, whose
    message never carries the token."""
    repo_id = check_repo_id(repo_id)
    run = RunDir(Path(run_folder))
    loras = run.lora_files()
    if not loras:
        raise HubError(f"no relation LoRA in {run.root}: publish a training output folder (it holds {LORA_FILENAME})")
    sample = run.latest_sample()
    sample_name = sample.relative_to(run.root).as_posix() if sample else None
    card = hub_model_card(run, repo_id, sample_name)
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="dreamrelation-push-") as staging:
        staged = Path(staging)
        for path in [*loras.values(), run.config, *([sample] if sample else [])]:
            target = staged / path.relative_to(run.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        (staged / MODEL_CARD_FILENAME).write_text(card, encoding="utf-8")
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=staged, repo_type="model",
                              commit_message="Publish a DreamRelation relation LoRA")
        except Exception as error:  # whatever the hub client raises; its message could quote the request
            raise HubError(f"could not publish to the Hub ({type(error).__name__}): check the token and the repo "
                           "name") from None
    return str(url)


def hub_model_card(run: RunDir, repo_id: str, sample: str | None = None) -> str:
    """The model card of a run published as `repo_id`: export.model_card with the run's settings (config.yaml),
    the trigger caption of the card training wrote, the family's loading code for each LoRA file from the
    repo, and `sample` (a video's path in the repo) as its widget. HubError when the run lacks those files."""
    if not run.config.is_file() or not run.model_card.is_file():
        raise HubError(f"{run.root} has no config.yaml or README.md: publish a finished training output folder")
    trigger = ModelCard.load(run.model_card).data.get("instance_prompt")
    if not trigger:
        raise HubError(f"{run.model_card} names no trigger caption (instance_prompt): it was written before "
                       "publishing existed; train the relation again to publish it")
    config = RunConfig.model_validate(read_yaml_sections(run.config))
    spec = resolve_model(config.model).spec
    loads = [(path.name, spec.lora_load_kwargs(component)) for component, path in run.lora_files().items()]
    return model_card(config, spec.pipeline_class_name, [trigger], loads, repo_id=repo_id, sample=sample)
