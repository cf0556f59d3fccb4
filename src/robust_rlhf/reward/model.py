"""`RewardModel`: any Hugging Face backbone + K reward heads; one backbone pass scores all heads.

Saved layout (`save_pretrained(dir)`):
    dir/reward_config.json      -- head type, K, pooling, max_length, where the backbone is,
                                   per-head normalisation statistics
    dir/heads.safetensors       -- the K heads (kilobytes: H x K floats)
    dir/backbone/               -- the fine-tuned backbone as an ordinary HF folder (+ tokenizer),
                                   only when the backbone was trained; a frozen, untouched backbone
                                   is stored by reference (its name/path), so K = 10 heads on a
                                   frozen backbone add kilobytes, not a model copy.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn as nn
from safetensors.torch import save as save_safetensors

from robust_rlhf.errors import UserError
from robust_rlhf.models.hub import load_backbone, load_tokenizer
from robust_rlhf.reward.heads import CONFIG_NAME, HeadType, Pooling, RewardHeads, pool_hidden
from robust_rlhf.reward.layer_ensemble import LayerEnsembleHeads, split_trunk
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.utils import PRECISIONS, atomic_save_dir, atomic_write_bytes, atomic_write_json, autocast_dtype, is_inside

Truncation = Literal["left_prompt", "error"]
Precision = Literal["auto", "fp32", "bf16"]
HEADS_NAME = "heads.safetensors"


@dataclass
class RewardModelConfig:
    backbone: str = "minilm-l6"
    """Backbone: embedded name (minilm-l6, smollm2-135m), HF folder or hub id."""
    head_type: HeadType = "ensemble"
    """scalar (K = 1), ensemble (K linear heads) or gaussian (BRME: K heads of mean and std)."""
    num_heads: int = 10
    """K, the number of heads."""
    pooling: Pooling | None = None
    """last (decoders), cls or mean (encoders); None picks last for decoders, mean for encoders."""
    max_length: int = 128
    """Tokens per (prompt, response) text; longer texts are truncated (see `truncation`) and counted."""
    truncation: Truncation = "left_prompt"
    """Over max_length: left_prompt cuts the prompt from the LEFT and keeps the whole response (if the
    response alone is too long the prompt is dropped and the response's end is cut); error does the
    same for the prompt but refuses (UserError) when the response alone does not fit."""
    min_std: float = 1e-3
    """Floor of Gaussian heads' std."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the backbone folder/hub (off by default)."""
    allow_pickle: bool = False
    """Allow pickle (.bin) backbone weights; off: safetensors only, since pickle can run code on load."""
    allow_partial_weights: bool = False
    """Load a backbone whose config.json does not match its weight files (weights missing -> randomly
    initialised, extra ones dropped); off: such a folder is refused, naming the weights."""
    head_stats: dict = field(default_factory=dict)
    """Per-head reward mean/std on the validation set (for normalised aggregation)."""
    top_layers: int = 1
    """layer_ensemble: how many top transformer layers each of the K members has its own copy of."""
    trunk_layers: int | None = None
    """layer_ensemble: layers in the shared frozen trunk (set when the top layers are split off; null before)."""
    precision: Precision = "auto"
    """Backbone pass. auto = training passes (stage 1, the stage-2 feature pass) under bf16 autocast on GPUs with
    bf16 and on CPUs with native bf16 (AVX512-BF16/AMX/Arm BF16), fp32 elsewhere -- and scoring (rm score/eval,
    the server, adapters, policy rewards) in fp32, so a text's score does not depend on the batch it came in;
    fp32 = everything fp32; bf16 = everything bf16 (scores then move ~1e-4 with batch composition).
    Heads always run in fp32."""

    def __post_init__(self) -> None:
        if self.head_type not in ("scalar", "ensemble", "gaussian", "layer_ensemble", "deep_ensemble"):
            raise ValueError(f"head_type must be scalar, ensemble, gaussian, layer_ensemble or deep_ensemble, "
                             f"got {self.head_type!r}")
        if not isinstance(self.top_layers, int) or self.top_layers < 1:
            raise ValueError(f"top_layers must be an integer >= 1, got {self.top_layers!r}")
        if self.pooling not in (None, "last", "cls", "mean"):
            raise ValueError(f"pooling must be last, cls, mean or null, got {self.pooling!r}")
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"num_heads must be an integer >= 1, got {self.num_heads!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0, got {self.min_std!r}")
        if self.truncation not in ("left_prompt", "error"):
            raise ValueError(f"truncation must be left_prompt or error, got {self.truncation!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def default_pooling(backbone_config) -> Pooling:
    decoder = getattr(backbone_config, "is_decoder", False) or any(
        a.endswith("ForCausalLM") for a in (getattr(backbone_config, "architectures", None) or []))
    return "last" if decoder else "mean"


class RewardModel(nn.Module):
    """Backbone + `RewardHeads`. `score()` for inference; `forward_texts()` for training."""

    config_class = RewardModelConfig

    def __init__(self, config: RewardModelConfig, backbone: nn.Module | None = None, tokenizer=None,
                 backbone_source: str | None = None):
        super().__init__()
        if config.head_type == "deep_ensemble":
            raise UserError("head_type=deep_ensemble is K whole reward models: train it with `rm train` "
                            "(reward/deep_ensemble.py) and load it with RewardModel.from_pretrained")
        if config.head_type == "scalar":
            config.num_heads = 1
        self.config = config
        self.backbone = backbone if backbone is not None else load_backbone(
            config.backbone, config.trust_remote_code, config.allow_pickle, config.allow_partial_weights)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.backbone, config.trust_remote_code)
        if self.config.pooling is None:
            self.config.pooling = default_pooling(self.backbone.config)
        if self.config.pooling == "last":
            self.tokenizer.padding_side = "left"  # pooled position is then always T-1; mask-based anyway
        if config.head_type == "layer_ensemble":  # K top-layer copies + heads (reward/layer_ensemble.py)
            self.heads = LayerEnsembleHeads(self.backbone.config, config.num_heads, config.top_layers, config.pooling)
            if config.trunk_layers is not None:  # a trained one: the backbone is (or is cut to) the trunk
                split_trunk(self)
        else:
            self.heads = RewardHeads(self.backbone.config.hidden_size, config.num_heads, config.head_type, config.min_std)
        self.backbone_source = backbone_source or config.backbone
        self.truncated_count = 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Autocast dtype of the backbone pass on the current device (None = fp32): `config.precision`,
        where ``auto`` means the hardware's choice inside `training_pass` and fp32 outside it."""
        if self.config.precision == "auto" and not getattr(self, "_training_pass", False):
            return None
        return autocast_dtype(self.device, self.config.precision)

    @contextlib.contextmanager
    def training_pass(self):
        """Backbone passes inside run at the training precision (``auto``: bf16 where native)."""
        before = getattr(self, "_training_pass", False)
        self._training_pass = True
        try:
            yield self
        finally:
            self._training_pass = before

    @property
    def precision_name(self) -> str:
        """"bf16" or "fp32": what the backbone pass runs in on the current device (for logs)."""
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    # ---- text -> features -------------------------------------------------------------
    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[str, str]]:
        """The (prompt, response) pairs to score; the model reads ``prompt + response`` joined by
        the one rendering rule (`robust_rlhf.data.text.join_pair`: a space where a response would be
        glued to its prompt), so every door -- policy rewards, the lab, `rm score`, the server, verl,
        TRL -- gives one reward for one conversation."""
        from robust_rlhf.data.text import join_pair

        if len(prompts) != len(responses):
            raise UserError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [(p, join_pair(p, r)) for p, r in zip(prompts, responses)]

    def tokenize(self, texts: Sequence[str | tuple[str, str]]) -> dict:
        """Tokenize ``prompt + response`` texts to at most max_length tokens, never losing the response.

        Each item is a (prompt, response) pair, or a plain string (read as a response with an
        empty prompt). One tokenizer pass over the joined texts; a text longer than max_length
        keeps its special tokens, its whole response and the LAST prompt tokens that fit (the
        prompt is cut on the left). If the response alone does not fit, ``truncation='error'``
        raises `UserError`; ``'left_prompt'`` drops the prompt and keeps the response's first
        tokens. Every truncated text is counted in ``truncated_count``.

        Returns input_ids / attention_mask (B, T), T <= max_length, on the model's device."""
        L = self.config.max_length
        pairs = [("", t) if isinstance(t, str) else (t[0], t[1]) for t in texts]
        joined = [p + r for p, r in pairs]
        tok = self.tokenizer
        fast = getattr(tok, "is_fast", False)
        enc = tok(joined, truncation=False, return_special_tokens_mask=True, return_offsets_mapping=fast,
                  return_attention_mask=False, return_token_type_ids=False)
        rows = enc["input_ids"]
        for i, ids in enumerate(rows):
            if len(ids) > L:
                rows[i] = self._keep_response(i, pairs[i], ids, enc["special_tokens_mask"][i],
                                              enc["offset_mapping"][i] if fast else None)
                self.truncated_count += 1
        out = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt", return_attention_mask=True)
        return {"input_ids": out["input_ids"].to(self.device), "attention_mask": out["attention_mask"].to(self.device)}

    def _keep_response(self, i: int, pair: tuple[str, str], ids: list[int], special: list[int],
                       offsets: list[tuple[int, int]] | None) -> list[int]:
        """Token ids of one over-long text cut to max_length: specials + prompt tail + response."""
        L = self.config.max_length
        prompt, response = pair
        if offsets is not None:
            # Tokens the tokenizer adds around the text (CLS/SEP, BOS) are marked special; a text
            # token belongs to the prompt when it ends inside it (a token straddling the boundary
            # counts as response, so no response character is lost).
            body = [k for k, s in enumerate(special) if not s]
            lead = ids[: body[0]] if body else ids
            trail = ids[body[-1] + 1:] if body else []
            p_ids = [ids[k] for k in body if offsets[k][1] <= len(prompt)]
            r_ids = [ids[k] for k in body if offsets[k][1] > len(prompt)]
        else:  # slow tokenizer: prompt and response tokenized on their own
            tok = self.tokenizer
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            r_ids = tok(response, add_special_tokens=False)["input_ids"]
            wrapped = tok.build_inputs_with_special_tokens([-1])
            lead, trail = wrapped[: wrapped.index(-1)], wrapped[wrapped.index(-1) + 1:]
        budget = L - len(lead) - len(trail) - len(r_ids)
        if budget < 0:
            if self.config.truncation == "error":
                raise UserError(f"text {i}: the response alone is {len(r_ids)} tokens, more than max_length="
                                f"{L} leaves for it ({L - len(lead) - len(trail)}); shorten it, raise max_length, "
                                f"or use truncation=left_prompt")
            return lead + r_ids[: L - len(lead) - len(trail)] + trail
        return lead + (p_ids[max(0, len(p_ids) - budget):] if budget else []) + r_ids + trail

    def features(self, enc: dict) -> torch.Tensor:
        """(B, H) pooled last hidden state."""
        return pool_hidden(self.trunk_states(enc), enc["attention_mask"], self.config.pooling)  # (B, H)

    def trunk_states(self, enc: dict) -> torch.Tensor:
        """(B, T, H) fp32 last hidden states of the backbone (for a layer ensemble: of its trunk),
        computed under autocast in `config.precision` (pooling and heads then run in fp32)."""
        amp = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            out = self.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                **({"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.float()

    def forward_texts(self, texts: Sequence[str | tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(mean (B, K), std (B, K) | None, features (B, H)) with grad; ``texts`` as in `tokenize`."""
        if self.config.head_type == "layer_ensemble":
            split_trunk(self)  # no-op once split (training splits after stage 1)
            enc = self.tokenize(texts)
            member = self.heads.member_features(self.trunk_states(enc), enc["attention_mask"])  # (K, B, H)
            return self.heads.head_rewards(member), None, member.mean(0)  # features: the members' mean pooled output
        feats = self.features(self.tokenize(texts))
        mean, std = self.heads(feats)
        return mean, std, feats

    # ---- inference --------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64,
              return_features: bool = False):
        """Per-head rewards for (prompt, response) pairs, batched, no grad.

        Returns a `RewardOutput` (B, K) -- and the (B, H) pooled features if asked."""
        texts = self.texts(prompts, responses)
        was_training = self.training
        self.eval()
        outs, feats = [], []
        # Sort by length so batches pad little; restore order after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i][0]) + len(texts[i][1]))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            mean, std, f = self.forward_texts([texts[j] for j in idx])
            outs.append(RewardOutput(mean.float().cpu(), None if std is None else std.float().cpu()))
            feats.append(f.float().cpu())
        self.train(was_training)
        if not outs:
            empty = torch.zeros(0, self.config.num_heads)
            out = RewardOutput(empty, empty.clone() if self.config.head_type == "gaussian" else None)
            return (out, torch.zeros(0, self.backbone.config.hidden_size)) if return_features else out
        merged = RewardOutput.cat(outs)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        out = RewardOutput(merged.per_head[inverse],
                           None if merged.per_head_std is None else merged.per_head_std[inverse])
        if return_features:
            return out, torch.cat(feats)[inverse]
        return out

    # ---- persistence ------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, save_backbone: bool = True) -> Path:
        """Write the model into folder `path` (which may hold other files, e.g. a training run).

        `save_backbone=False` stores the backbone by reference (`backbone_source`), for a frozen
        backbone unchanged from its source. Crash-safe: `reward_config.json` is removed first and
        written last, each file is written atomically, so a folder either loads completely or
        is reported as not a reward model -- never a mix of old and new weights."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).unlink(missing_ok=True)
        cfg = asdict(self.config)
        if save_backbone:
            def write_backbone(tmp: Path) -> None:
                self.backbone.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)

            atomic_save_dir(path / "backbone", write_backbone)
            cfg["backbone_location"] = "backbone"
        else:
            own = path / "backbone"
            if own.exists() and is_inside(Path(self.backbone_source).expanduser(), own):
                # The frozen backbone was loaded from this very folder: keep it (never delete an input).
                cfg["backbone_location"] = "backbone"
            else:
                if own.exists():
                    shutil.rmtree(own)
                cfg["backbone_location"] = self.backbone_source
        atomic_write_bytes(path / HEADS_NAME, save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}))
        atomic_write_json(path / CONFIG_NAME, cfg)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> "RewardModel":
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.exists():
            raise UserError(f"{path}: not a robust-rlhf reward model (no {CONFIG_NAME})")
        try:
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg_file}: invalid JSON ({e})") from None
        except RecursionError:
            raise UserError(f"{cfg_file}: invalid JSON (nested too deeply)") from None
        except OSError as e:
            raise UserError(f"{cfg_file}: cannot read ({e.strerror})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{cfg_file}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("head_type") == "deep_ensemble":  # K member folders (reward/deep_ensemble.py)
            from robust_rlhf.reward.deep_ensemble import load_deep_ensemble

            return load_deep_ensemble(path, raw, cls, device)
        location = raw.pop("backbone_location", None)
        if location is not None and (not isinstance(location, str) or not location.strip()):
            raise UserError(f"{cfg_file}: field 'backbone_location': expected the backbone's folder or name, "
                            f"got {location!r}")
        named = "backbone" in raw
        from robust_rlhf.config import build_dataclass

        try:  # typed like a config file: a wrong type or unknown key names the field
            config = build_dataclass(RewardModelConfig, raw)
        except UserError as e:
            raise UserError(f"{cfg_file}: {str(e).removeprefix('config ')}") from None
        # The folder must say which backbone its heads were trained on: without it the default
        # (pretrained, untrained) backbone would score silently.
        for key, present in (("backbone", named), ("backbone_location", location is not None)):
            if not present:
                raise UserError(f"{cfg_file}: field {key!r} is missing, so it does not name the backbone its heads "
                                "belong to; it is not a complete reward model (re-save it with `rm train`)")
        if location == "backbone" and not (path / "backbone").is_dir():
            raise UserError(f"{cfg_file}: the backbone is stored in the model folder, but {path / 'backbone'} "
                            "is missing (copied without it?)")
        _check_head_stats(config.head_stats, config, cfg_file)
        source = str(path / location) if location == "backbone" else location
        backbone = load_backbone(source, config.trust_remote_code, config.allow_pickle, config.allow_partial_weights)
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        model = cls(config, backbone, tokenizer, backbone_source=location if location != "backbone" else config.backbone)
        from robust_rlhf.checkpoint import TornCheckpoint, read_weights

        heads_file = path / HEADS_NAME
        expected = {k: v.shape for k, v in model.heads.state_dict().items()}
        try:  # names and shapes checked first: every mismatch is named, none cut
            state = read_weights(heads_file, expected)
        except TornCheckpoint as e:
            why = str(e).removeprefix(f"{heads_file}: ")
            raise UserError(f"{heads_file}: cannot load heads: {why} (head_type={config.head_type}, "
                            f"num_heads={config.num_heads} in {CONFIG_NAME})") from None
        model.heads.load_state_dict(state)
        model.eval()
        if device is not None:
            model.to(device)
        return model


def _check_head_stats(stats: dict, config: RewardModelConfig, cfg_file: Path) -> None:
    """``head_stats`` of a saved model: ``mean``/``std`` lists of K finite numbers (std > 0), the
    other entries numbers, text or null. `UserError` naming the file, the key and the reason."""
    k = 1 if config.head_type == "scalar" else config.num_heads
    where = f"{cfg_file} (reward model folder {cfg_file.parent})"
    for key, value in stats.items():
        if key in ("mean", "std"):
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and math.isfinite(v) for v in value):
                raise UserError(f"{where}: field 'head_stats.{key}': expected a list of {k} finite numbers, got "
                                f"{type(value).__name__} {json.dumps(value)[:60]}")
            if value and len(value) != k:
                raise UserError(f"{where}: field 'head_stats.{key}' has {len(value)} values but the model has "
                                f"{k} head(s)")
            if key == "std" and any(v <= 0 for v in value):
                raise UserError(f"{where}: field 'head_stats.std': every std must be > 0")
        elif value is not None and not isinstance(value, (int, float, str)):
            raise UserError(f"{where}: field 'head_stats.{key}': expected a number or text, got {type(value).__name__}")
