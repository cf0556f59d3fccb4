"""Deep ensembles: K reward models trained independently, each on its own data and/or backbone
(`model.head_type: deep_ensemble`, presets `rm_deep_*`), served as one (B, K) reward model.

Linear heads on one backbone agree where they are wrong (docs/reward_models.md): they see the
same features. Here each member is a whole stage-1 run (backbone + one BT head, full fine-tune
or LoRA) with its own

* data (`members.data`): ``seed`` -- every member on all pairs, its own seed (the reference deep
  ensemble); ``bootstrap`` -- a prompt-level bootstrap resample each (Coste et al. 2023);
  ``partition`` -- disjoint prompt partitions (member k never saw the other members' prompts);
* backbone and settings (`members.overrides`: per-member `key=value` lists, cycled over the
  members, e.g. ``[[], [model.backbone=smollm2-135m, stage1.lora=true]]``).

Saved layout (one reward-model folder; `RewardModel.from_pretrained` returns a
`DeepEnsembleRewardModel`):

    dir/reward_config.json   head_type deep_ensemble, num_heads K, members ["members/0", ...],
                             head_stats of the K members on the validation set (written last)
    dir/members/k/           member k: an ordinary single-head reward-model folder (+ its run files)
    dir/members/data/        member k's training pairs (member_k.jsonl)

Scoring cost: K backbone passes (K x one model for K members of one backbone).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn

from robust_rlhf.errors import UserError
from robust_rlhf.reward.heads import CONFIG_NAME
from robust_rlhf.reward.output import RewardOutput

log = logging.getLogger("robust_rlhf.reward.train")

MemberData = Literal["seed", "bootstrap", "partition"]
MEMBERS_DIR = "members"


@dataclass
class MembersConfig:
    """Members of `model.head_type: deep_ensemble` (K = `model.num_heads` members)."""

    data: MemberData = "bootstrap"
    """seed: all members on all pairs, own seeds; bootstrap: a prompt-level bootstrap resample each;
    partition: disjoint prompt partitions (each member sees 1/K of the prompts)."""
    overrides: list[list[str]] = field(default_factory=list)
    """Per-member `key=value` overrides of this config (e.g. model.backbone=smollm2-135m), cycled over the
    members (member k gets overrides[k % len]); empty = every member like the config."""


# ------------------------------------------------------------------------------------- data
def member_prompt_sets(prompts: Sequence[str], k: int, data: MemberData, seed: int) -> list[list[str]]:
    """The prompts (with multiplicity) each of `k` members trains on, from the distinct `prompts`
    (sorted first, so the draw depends only on the set): seed -> all prompts for every member;
    bootstrap -> len(prompts) draws with replacement per member; partition -> a shuffled split
    into k disjoint parts of sizes differing by at most one."""
    distinct = sorted(set(prompts))
    rng = random.Random(seed)
    if data == "seed":
        return [list(distinct) for _ in range(k)]
    if data == "bootstrap":
        return [[distinct[rng.randrange(len(distinct))] for _ in distinct] for _ in range(k)]
    if data == "partition":
        if k > len(distinct):
            raise UserError(f"members.data=partition: {k} members but only {len(distinct)} training prompts")
        order = list(distinct)
        rng.shuffle(order)
        return [order[i::k] for i in range(k)]
    raise UserError(f"members.data must be seed, bootstrap or partition, got {data!r}")


def member_pairs(pairs: list, prompt_set: list[str]) -> list:
    """The pairs of each prompt in `prompt_set`, a prompt drawn twice contributing its pairs twice."""
    by_prompt: dict[str, list] = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, []).append(p)
    return [p for q in prompt_set for p in by_prompt.get(q, [])]


# ------------------------------------------------------------------------------------- model
class DeepEnsembleRewardModel(nn.Module):
    """K independently trained single-head `RewardModel`s behind `RewardModel`'s interface:
    ``score`` -> `RewardOutput` (B, K), column k = member k. Members may have different backbones
    and tokenizers (each tokenizes the texts itself); ``tokenizer`` is member 0's (for reading
    data); ``score(..., return_features=True)`` returns member 0's pooled features."""

    def __init__(self, config: Any, members: Sequence[Any]):
        """`config`: the ensemble's `RewardModelConfig`; `members`: K single-head `RewardModel`s."""
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(members)
        self.tokenizer = members[0].tokenizer
        self.backbone_source = "+".join(m.backbone_source for m in members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def truncated_count(self) -> int:
        return max(m.truncated_count for m in self.members)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64,
              return_features: bool = False):
        """(B,) prompts and responses -> `RewardOutput` with per_head (B, K) [, member 0's (B, H) features]."""
        cols, feats = [], None
        for k, m in enumerate(self.members):
            if k == 0 and return_features:
                out, feats = m.score(prompts, responses, batch_size, return_features=True)
            else:
                out = m.score(prompts, responses, batch_size)
            cols.append(out.per_head)  # (B, 1)
        per_head = torch.cat(cols, dim=1)  # (B, K)
        out = RewardOutput(per_head, None)
        return (out, feats) if return_features else out

    def save_pretrained(self, path: str | Path) -> Path:
        """Write every member into path/members/k and the ensemble's reward_config.json last."""
        from robust_rlhf.utils import atomic_write_json

        path = Path(path)
        (path / CONFIG_NAME).unlink(missing_ok=True)
        for k, m in enumerate(self.members):
            m.save_pretrained(path / MEMBERS_DIR / str(k))
        cfg = asdict(self.config)
        cfg["members"] = [f"{MEMBERS_DIR}/{k}" for k in range(len(self.members))]
        atomic_write_json(path / CONFIG_NAME, cfg)
        return path


def load_deep_ensemble(path: Path, raw: dict, member_cls: Any, device=None) -> DeepEnsembleRewardModel:
    """The `DeepEnsembleRewardModel` in folder `path` whose reward_config.json holds `raw`; each
    member is loaded with ``member_cls.from_pretrained`` (`RewardModel`, which calls this)."""
    from robust_rlhf.config import build_dataclass

    cfg_file = path / CONFIG_NAME
    members = raw.pop("members", None)
    raw.pop("backbone_location", None)
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise UserError(f"{cfg_file}: field 'members': expected a non-empty list of member folders")
    try:
        config = build_dataclass(member_cls.config_class, raw)
    except UserError as e:
        raise UserError(f"{cfg_file}: {str(e).removeprefix('config ')}") from None
    if config.num_heads != len(members):
        raise UserError(f"{cfg_file}: num_heads={config.num_heads} but {len(members)} members")
    loaded = []
    for rel in members:
        d = (path / rel).resolve()
        if not d.is_relative_to(path.resolve()):
            raise UserError(f"{cfg_file}: member folder {rel!r} lies outside the model folder")
        m = member_cls.from_pretrained(d, device=device)
        if m.config.num_heads != 1:
            raise UserError(f"{d}: a deep-ensemble member must have one head, it has {m.config.num_heads}")
        loaded.append(m)
    return DeepEnsembleRewardModel(config, loaded).eval()
