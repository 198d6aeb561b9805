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


def pytest_collection_modifyitems(items):
    """Files holding slow tests (live servers, several processes) run first, their tests in their own order: with
    two workers (make test) the longest files then start at once, and the short ones fill in behind them."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)
