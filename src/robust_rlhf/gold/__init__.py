"""Gold rewards: `(prompts, responses) -> list[float]`, the stand-in for human judgement.

A gold reward labels preference data and judges policies; it never feeds a training signal.
`load_gold(spec)` accepts:
* ``vader`` -- VADER sentiment compound score in [-1, 1] of the response (default; the
  positive-review task);
* ``module:function`` -- any Python callable with the signature above;
* ``hf:<model id or folder>`` -- an HF sequence-classification model; the score is the logit
  (or, with 2+ labels, the log-odds of the last label, conventionally "positive");
* ``learned`` -- the shipped learned gold (`robust_rlhf.gold.learned`: SmolLM2-135M with LoRA
  adapters + a linear head, trained once on the large task's whole labelled set);
  ``learned:<folder>`` -- one trained with ``robust-rlhf data train-gold``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from robust_rlhf.errors import UserError

__all__ = ["GoldReward", "HFClassifierGold", "VaderGold", "load_gold"]

GoldReward = Callable[[Sequence[str], Sequence[str]], list[float]]


class VaderGold:
    """VADER compound sentiment of the response (the prompt is an opening the policy continues,
    so we judge prompt + response as one review)."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [float(self._analyzer.polarity_scores(p + r)["compound"]) for p, r in zip(prompts, responses)]


class HFClassifierGold:
    """Score with a Hugging Face sequence-classification model."""

    def __init__(self, name_or_path: str, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

        path = resolve_model_path(name_or_path)
        self.name = f"hf:{name_or_path}"
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
        self.batch_size = batch_size
        self._torch = torch

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        texts = [p + r for p, r in zip(prompts, responses)]
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
                logits = self.model(**enc).logits
                if logits.shape[-1] == 1:
                    scores = logits[:, 0]
                else:
                    scores = logits[:, -1] - torch.logsumexp(logits[:, :-1], dim=-1)
                out.extend(scores.float().tolist())
        return out


def load_gold(spec: str = "vader") -> GoldReward:
    if spec == "vader":
        return VaderGold()
    if spec.startswith("hf:"):
        return HFClassifierGold(spec[3:])
    if spec == "learned" or spec.startswith("learned:"):
        from robust_rlhf.gold.learned import DEFAULT_DIR, LearnedGold

        folder = spec.partition(":")[2] or None
        if folder is None and not (DEFAULT_DIR / "config.json").exists():
            raise UserError("gold reward 'learned': the shipped learned gold is missing "
                            f"({DEFAULT_DIR}); train one with robust-rlhf data train-gold")
        if folder is not None and not Path(folder).is_dir():
            raise UserError(f"gold reward {spec!r}: {folder!r} is not a folder")
        return LearnedGold(folder)
    if ":" in spec:
        module_name, func_name = spec.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UserError(f"gold reward {spec!r}: cannot import module {module_name!r} ({e})") from None
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise UserError(f"gold reward {spec!r}: {module_name} has no callable {func_name!r}")
        return fn
    raise UserError(f"gold reward {spec!r}: expected 'vader', 'learned', 'learned:<folder>', 'hf:<model>' "
                    "or 'module:function'")
