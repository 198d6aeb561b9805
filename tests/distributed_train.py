"""Run by test_cli.py under `accelerate launch --num_processes 2`: trains, then each rank saves its adapters.

    distributed_train.py DATA OUT CACHE MODEL"""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from dreamrelation.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dreamrelation.models import load_model
from dreamrelation.train.trainer import train

data_dir, out, cache = map(Path, sys.argv[1:4])
run = RunConfig(
    model=ModelConfig(name=sys.argv[4], device="cpu", cache_dir=cache),
    data=DataConfig(data_dir=data_dir, num_frames=13, height=32, width=32),
    train=TrainConfig(output_dir=out, steps=4, checkpoint_every=2),
)
state = PartialState(cpu=True)
with state.main_process_first():  # the main process builds the tiny model once
    loaded = load_model(run.model)
train(run, loaded=loaded, show_progress=False)
adapters = {k: v.detach().contiguous() for k, v in loaded.pipe.transformer.named_parameters() if "lora_" in k}
save_file(adapters, out / f"adapters-rank{state.process_index}.safetensors")
