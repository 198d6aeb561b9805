"""The Mochi model family: latent grid of masks, the training timestep/target against the stock scheduler,
and model loading (tiny-random like a Hub model; offline failures that say what to do)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule, retrieve_timesteps

from dreamrelation.config import ModelConfig
from dreamrelation.models import ModelLoadError, load_model
from dreamrelation.models.mochi import MochiSpecification
from dreamrelation.models.tiny_random import axial_rope_frequencies


def test_masks_map_to_the_latent_grid_like_mochis_causal_vae(tiny):
    # 13 frames, 16x16 pixels -> 3 latent frames of 2x2 cells. One subject pixel at (row 9, col 2) in frames
    # 0, 1, 2 and 7 (frame 7 belongs to latent frame 2: frames 7..12).
    masks = torch.zeros(1, 13, 16, 16)
    for frame in (0, 1, 2, 7):
        masks[0, frame, 9, 2] = 1.0
    grid = tiny.spec.masks_to_latent_grid(masks)
    expected = torch.zeros(1, 3, 2, 2)
    expected[0, 0, 1, 0] = 1.0  # latent frame 0 <- frame 0
    expected[0, 1, 1, 0] = 2 / 6  # latent frame 1 <- mean of frames 1..6 (present in 1 and 2)
    expected[0, 2, 1, 0] = 1 / 6  # latent frame 2 <- mean of frames 7..12
    assert torch.allclose(grid, expected)


def test_masks_need_6k_plus_1_frames(tiny):
    with pytest.raises(ValueError, match="6k\\+1"):
        tiny.spec.masks_to_latent_grid(torch.zeros(1, 12, 16, 16))


class RecordingTransformer(torch.nn.Module):
    """Stands in for the transformer: records what it is fed and answers the true velocity z0 - noise."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity, self.calls = velocity, []

    def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, return_dict):
        self.calls.append((hidden_states.clone(), timestep.clone()))
        return (self.velocity,)


def test_training_timestep_and_target_match_the_stock_mochi_sampler():
    """Walk diffusers' Mochi sampling loop with the true velocity: at every step, the latents it holds are exactly
    the noisy latents our training builds for sigma = 1 - t/1000, and the walk lands on z0."""
    spec = MochiSpecification()
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 12, 3, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(1, 12, 3, 4, 4, generator=generator, dtype=torch.float64)
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    timesteps, _ = retrieve_timesteps(scheduler, 8, "cpu", None, np.array(linear_quadratic_schedule(8, 0.025)))
    latents = noise.clone()  # the pipeline starts from pure noise
    text, mask = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    for t in timesteps:
        sigma = (1.0 - t / 1000.0).view(1).double()
        recorder = RecordingTransformer(z0 - noise)
        pred, target = spec.training_forward(recorder, z0, noise, sigma, text, mask, torch.float64)
        fed_latents, fed_timestep = recorder.calls[0]
        torch.testing.assert_close(fed_latents, latents, atol=1e-5, rtol=0)
        torch.testing.assert_close(fed_timestep.float(), t.view(1).float())
        torch.testing.assert_close(target.double(), z0 - noise)
        latents = scheduler.step(pred.double(), t, latents, return_dict=False)[0]
    torch.testing.assert_close(latents, z0, atol=1e-5, rtol=0)


def test_tiny_random_is_a_saved_pipeline_loaded_like_a_hub_model(tiny, model_config):
    assert (tiny.folder / "model_index.json").exists()
    assert isinstance(tiny.pipe, MochiPipeline)
    again = load_model(model_config)
    for (name, a), (_, b) in zip(tiny.pipe.transformer.state_dict().items(), again.pipe.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(  # axial RoPE frequencies (Mochi's own are zero-initialised: no positions)
        tiny.pipe.transformer.pos_frequencies, axial_rope_frequencies(*tiny.pipe.transformer.pos_frequencies.shape[1:])
    )
    # The word-level tokenizer tells subjects apart (a vocabulary-less T5 tokenizer maps them all to <unk>).
    ids = tiny.pipe.tokenizer(["a dog", "a cat"]).input_ids
    assert ids[0] != ids[1] and tiny.pipe.tokenizer.unk_token_id not in ids[0] + ids[1]


def test_axial_rope_frequencies_turn_each_pair_along_one_axis():
    frequencies = axial_rope_frequencies(heads=2, pairs=6)
    # Pairs 0 and 3 turn with time, 1 and 4 with height, 2 and 5 with width: each from its range's top to bottom.
    expected = torch.zeros(3, 6)
    expected[0, [0, 3]] = torch.tensor([1.5, 0.05])
    expected[1, [1, 4]] = torch.tensor([0.1, 0.005])
    expected[2, [2, 5]] = torch.tensor([0.1, 0.005])
    for head in range(2):
        torch.testing.assert_close(frequencies[:, head], expected)


def test_offline_hub_model_fails_at_once_with_a_fix(monkeypatch, cache_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="genmo/mochi-1-preview.*hf download"):
        load_model(ModelConfig(name="mochi-1", device="cpu", cache_dir=cache_dir))


def test_unknown_model_names_list_the_choices(cache_dir):
    with pytest.raises(ModelLoadError, match="tiny-random"):
        load_model(ModelConfig(name="no such model", device="cpu", cache_dir=cache_dir))


def test_a_local_pipeline_folder_loads(tiny, cache_dir):
    loaded = load_model(ModelConfig(name=str(tiny.folder), device="cpu", cache_dir=cache_dir))
    assert loaded.folder == tiny.folder


def test_mask_files_with_unpadded_names_reach_the_latent_grid_as_computed_by_hand(tmp_path, tiny):
    """13 mask frames named frame0.png .. frame12.png (so frame10 sorts after frame9 only numerically).

    Subject 1 (red, left) sits in the top-left 8x8 cell in every frame. Subject 2 (green, right) appears in the
    bottom-right cell only in frames 9, 10, 11 and 12 (latent frame 2 = frames 7..12 -> 4/6)."""
    from PIL import Image

    from dreamrelation.data.dataset import load_subject_masks

    for n in range(13):
        frame = np.zeros((16, 16, 3), np.uint8)
        frame[0:3, 0:3] = (255, 0, 0)
        if n >= 9:
            frame[12:15, 12:15] = (0, 255, 0)
        elif n == 0:
            frame[12:13, 15:16] = (0, 255, 0)  # one pixel in frame 0: latent frame 0 cell is 1 (any pixel)
        Image.fromarray(frame).save(tmp_path / f"frame{n}.png")
    pixels = torch.from_numpy(load_subject_masks(tmp_path, list(range(13)), 16, 16))
    grid = tiny.spec.masks_to_latent_grid(pixels)
    expected = torch.zeros(2, 3, 2, 2)
    expected[0, :, 0, 0] = 1.0
    expected[1, 0, 1, 1] = 1.0
    expected[1, 1, 1, 1] = 0.0
    expected[1, 2, 1, 1] = 4 / 6
    assert torch.allclose(grid, expected)
