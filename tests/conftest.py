import os

import pytest

# Tests never reach the Hugging Face Hub: models are built in code or read from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One model/latent cache for the whole session (the tiny model is built once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def model_config(cache_dir):
    from dreamrelation.config import ModelConfig

    return ModelConfig(name="tiny-random", device="cpu", cache_dir=cache_dir)


@pytest.fixture()
def tiny(model_config):
    """A freshly loaded tiny-random pipeline (tests may add adapters to it)."""
    from dreamrelation.models import load_model

    return load_model(model_config)


@pytest.fixture(params=["tiny-random", "tiny-random-wan"])
def tiny_family(request, cache_dir):
    """A freshly loaded tiny pipeline of each model family (Mochi, Wan)."""
    from dreamrelation.config import ModelConfig
    from dreamrelation.models import load_model

    return load_model(ModelConfig(name=request.param, device="cpu", cache_dir=cache_dir))


@pytest.fixture()
def wan_config(cache_dir):
    from dreamrelation.config import ModelConfig

    return ModelConfig(name="tiny-random-wan", device="cpu", cache_dir=cache_dir)


@pytest.fixture()
def wan(wan_config):
    """A freshly loaded tiny-random-wan pipeline (tests may add adapters to it)."""
    from dreamrelation.models import load_model

    return load_model(wan_config)
