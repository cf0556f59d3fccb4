"""The learned gold: a reward model on SmolLM2-135M trained once on the large task's whole labelled set.

The setup of Gao et al. 2022 and Coste et al. 2023: a gold larger than and different from the
proxies (here the embedded 135M decoder over 22M MiniLM proxies), trained on all the data, labels
the subsets the proxies are trained on, so a proxy's errors against it are epistemic -- data the
proxy lacked -- rather than quirks of a lexicon no model can know.

Model: the embedded ``smollm2-135m`` decoder, frozen; the text (prompt + response, as VADER
judges it) is read once and its final (normed) hidden states are averaged over its tokens; a
two-layer MLP head (standardised features -> ``hidden`` GELU units -> 1) gives the score. Only the
head is trained and shipped (``gold/learned_gold/``: ``head.safetensors`` + ``config.json``, well
under 1 MB); the base is the embedded model.

Why a frozen base: on the project's 2 shared CPU cores a LoRA fine-tune of the decoder over 8,000
texts did not fit the time we had; the pooled features come free with the sampling of the large
task (``data build-task --task large --features-dir``), so training the head takes seconds. A
fine-tuned gold (LoRA) is the natural next step on a GPU.

Training (``robust-rlhf data train-gold``): the Bradley-Terry loss over every pair of each
prompt's completions, labels sampled once from VADER by Bradley-Terry (P(a > b) =
sigmoid((v_a - v_b) / bt_temperature); VADER ties skipped), full-batch AdamW. Its scores of every
completion are written into the task's rows as ``gold.learned``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).parent / "learned_gold"
"""The shipped learned gold (``gold: learned``)."""
HEAD = "head.safetensors"
CONFIG = "config.json"


@dataclass
class LearnedGoldConfig:
    """``robust-rlhf data train-gold``: the learned gold's model and training."""

    base: str = "smollm2-135m"
    """frozen base decoder (embedded name or HF folder); must be the policy that sampled the task"""
    hidden: int = 128
    """hidden units of the MLP head"""
    max_length: int = 64
    """tokens of prompt + response read when scoring new text"""
    steps: int = 300
    """full-batch AdamW steps"""
    lr: float = 3e-3
    """learning rate"""
    weight_decay: float = 1e-2
    """AdamW weight decay"""
    bt_temperature: float = 0.1
    """temperature of the Bradley-Terry label sampling from VADER (VADER scores lie in [-1, 1])"""
    holdout_split: str | None = None
    """leave this split's prompts out of training and report accuracy on them (a diagnostic; the
    shipped gold is trained on everything)"""
    seed: int = 0
    """seed of the label sampling and the initialisation"""

    def __post_init__(self) -> None:
        if not 1 <= self.hidden <= 65536:
            raise ValueError(f"hidden must be in [1, 65536], got {self.hidden}")
        if not 4 <= self.max_length <= 4096:
            raise ValueError(f"max_length must be in [4, 4096], got {self.max_length}")
        if not 1 <= self.steps <= 1_000_000:
            raise ValueError(f"steps must be in [1, 1000000], got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.bt_temperature) and self.bt_temperature > 0):
            raise ValueError(f"bt_temperature must be > 0, got {self.bt_temperature}")
        if self.holdout_split not in (None, "train", "validation", "test"):
            raise ValueError(f"holdout_split must be null, train, validation or test, got {self.holdout_split!r}")


def make_head(dim: int, hidden: int):
    """(N, dim) standardised features -> (N, 1) scores."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))


def pooled_features(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32):
    """(N, H) mean over each text's tokens of the decoder's final (normed) hidden state."""
    import torch

    tokenizer.padding_side = "right"
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i : i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            h = model.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state  # (B, T, H)
            m = enc.attention_mask.unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1)).float())
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def _read_config(folder: Path) -> tuple[LearnedGoldConfig, dict]:
    from robust_rlhf.config import build_dataclass

    path = folder / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a learned gold folder (no {CONFIG})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise UserError(f"{path}: needs a 'model' object (the LearnedGoldConfig it was trained with)")
    try:  # the key named from the file's top: 'model.steps'
        return build_dataclass(LearnedGoldConfig, raw["model"], "model"), raw
    except UserError as e:
        raise UserError(f"{path}: {str(e).removeprefix('config: ')}") from None


class LearnedGold:
    """Gold reward from a learned-gold folder (default: the shipped one): (prompts, responses) ->
    the head's score of prompt + response."""

    def __init__(self, folder: str | Path | None = None, batch_size: int = 32) -> None:
        from safetensors.torch import load_file

        from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

        folder = Path(folder) if folder is not None else DEFAULT_DIR
        self.cfg, _ = _read_config(folder)
        if not (folder / HEAD).exists():
            raise UserError(f"{folder}: not a learned gold folder (no {HEAD})")
        self.name = "learned" if folder == DEFAULT_DIR else f"learned:{folder}"
        sd = load_file(str(folder / HEAD))
        self.mean, self.std = sd.pop("feature_mean"), sd.pop("feature_std")
        self.head = make_head(self.mean.shape[0], self.cfg.hidden)
        try:
            self.head.load_state_dict(sd)
        except RuntimeError as e:
            raise UserError(f"{folder / HEAD}: does not match its config ({str(e).splitlines()[0]})") from None
        self.head.eval()
        self.model = load_causal_lm(self.cfg.base).eval()
        self.tokenizer = load_tokenizer(self.cfg.base)
        self.batch_size = batch_size

    def score_features(self, feats) -> list[float]:
        """(N, H) pooled features -> N scores."""
        import torch

        with torch.no_grad():
            return self.head((feats - self.mean) / self.std).squeeze(-1).tolist()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        feats = pooled_features(self.model, self.tokenizer, [p + r for p, r in zip(prompts, responses)],
                                self.cfg.max_length, self.batch_size)
        return self.score_features(feats)


# ---------------------------------------------------------------------------- training
def bt_labels(vader: Sequence[float], rng: random.Random, temperature: float) -> list[tuple[int, int]]:
    """(winner, loser) completion indices of one prompt: every pair with distinct VADER scores,
    the winner sampled by Bradley-Terry from VADER."""
    out = []
    for a in range(len(vader)):
        for b in range(a + 1, len(vader)):
            if vader[a] == vader[b]:
                continue
            z = (vader[a] - vader[b]) / temperature
            p_a = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # stable sigmoid
            out.append((a, b) if rng.random() < p_a else (b, a))
    return out
