"""The deep-ensemble recipe (``model.head_type: deep_ensemble``): K whole reward models, each its
own `train_reward_model` run on its own data (``members.data``) and/or backbone
(``members.overrides``), saved as one folder that `RewardModel.from_pretrained` loads as a
`DeepEnsembleRewardModel` (`robust_rlhf.reward.deep_ensemble`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from robust_rlhf.errors import UserError
from robust_rlhf.reward.deep_ensemble import (
    MEMBERS_DIR,
    DeepEnsembleRewardModel,
    MembersConfig,
    member_pairs,
    member_prompt_sets,
)
from robust_rlhf.reward.heads import CONFIG_NAME
from robust_rlhf.reward.model import RewardModel

log = logging.getLogger(__name__)


def member_configs(cfg) -> list:
    """The K member `RewardTrainConfig`s of deep-ensemble config `cfg` (validated; nothing written):
    scalar head, seed cfg.seed + k, members.overrides[k % len] applied. Data paths are set later."""
    from robust_rlhf.config import _merge, build_dataclass, config_to_dict, parse_overrides

    K = cfg.model.num_heads
    if K < 2:
        raise UserError(f"model.head_type=deep_ensemble needs model.num_heads >= 2 members, got {K}")
    base = config_to_dict(cfg)
    base["model"].update(head_type="scalar", num_heads=1)
    base["members"] = config_to_dict(MembersConfig())
    out = []
    for k in range(K):
        raw = dict(base, seed=cfg.seed + k)
        ov = cfg.members.overrides[k % len(cfg.members.overrides)] if cfg.members.overrides else []
        try:
            extra = parse_overrides(ov)
        except UserError as e:
            raise UserError(f"config members.overrides[{k % len(cfg.members.overrides)}]: {e}") from None
        if "members" in extra or extra.get("model", {}).get("head_type") not in (None, "scalar"):
            raise UserError("config members.overrides: a member is a single-head model; "
                            "members.* and model.head_type cannot be overridden per member")
        raw = _merge(raw, extra)
        out.append(build_dataclass(type(cfg), raw, f"members.overrides[{k % max(1, len(cfg.members.overrides))}]"))
    return out


def train_deep_ensemble(cfg, output_dir: str | Path, train_member: Callable[..., Path],
                        check_run_config: Callable[..., None]) -> Path:
    """Train the K members of `cfg` (model.head_type=deep_ensemble) one after the other into
    output_dir/members/k with `train_member` (`reward.train.train_reward_model`, passed in by it:
    each member resumable, a finished one reused), then write the ensemble's reward_config.json
    (last), config.yaml and train_summary.json. `check_run_config` refuses a folder holding
    another run before anything is written."""
    import yaml

    from robust_rlhf.config import config_to_dict, saved_run_config
    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.utils import atomic_write_json, atomic_write_jsonl, atomic_write_text, check_output_dir

    out = check_output_dir(output_dir)
    t0 = time.time()
    check_run_config(cfg, out)
    members = member_configs(cfg)  # validates every member's overrides before the first write
    train = load_preferences(cfg.data.train, limit=cfg.data.limit)
    sets = member_prompt_sets([p.prompt for p in train], len(members), cfg.members.data, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    summary: dict = {"members": [], "data": cfg.members.data, "num_train_pairs": len(train)}
    loaded = []
    for k, (mcfg, prompts) in enumerate(zip(members, sets)):
        data_file = out / MEMBERS_DIR / "data" / f"member_{k}.jsonl"
        pairs = member_pairs(train, prompts)
        atomic_write_jsonl(data_file, [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
        mcfg = replace(mcfg, data=replace(mcfg.data, train=str(data_file), limit=None))
        mdir = out / MEMBERS_DIR / str(k)
        done = (mdir / CONFIG_NAME).exists() and saved_run_config(mdir, "a deep-ensemble member's") == \
            {**config_to_dict(mcfg)}
        if done:
            log.info("member %d/%d already trained in %s", k + 1, len(members), mdir)
        else:
            log.info("member %d/%d: %s on %d pairs (%d distinct prompts), seed %d", k + 1, len(members),
                     mcfg.model.backbone, len(pairs), len(set(prompts)), mcfg.seed)
            train_member(mcfg, mdir)
        ms = json.loads((mdir / "train_summary.json").read_text())
        summary["members"].append({"backbone": mcfg.model.backbone, "num_train_pairs": len(pairs),
                                   "distinct_prompts": len(set(prompts)), "seed": mcfg.seed,
                                   "val_accuracy": ms.get("val_accuracy_mean"),
                                   "stage1_steps": ms.get("stage1", {}).get("steps")})
        loaded.append(RewardModel.from_pretrained(mdir))
    config = replace(cfg.model, head_stats={}, max_length=min(m.model.max_length for m in members))
    model = DeepEnsembleRewardModel(config, loaded)
    if cfg.data.validation:
        val = load_preferences(cfg.data.validation)
        vout = model.score([p.prompt for p in val] * 2, [p.chosen for p in val] + [p.rejected for p in val])
        ph = vout.per_head
        config.head_stats = {"mean": ph.mean(0).tolist(), "std": ph.std(0).clamp_min(1e-6).tolist(),
                             "source": str(cfg.data.validation), "ensemble_var_mean": vout.var.mean().item(),
                             "ensemble_std_mean": vout.std.mean().item()}
        n = len(val)
        summary["val_accuracy_mean"] = (vout.mean[:n] > vout.mean[n:]).float().mean().item()
    summary["wall_time_s"] = time.time() - t0
    atomic_write_json(out / "train_summary.json", summary)
    cfg_dict = {**asdict(config), "members": [f"{MEMBERS_DIR}/{k}" for k in range(len(loaded))]}
    atomic_write_json(out / CONFIG_NAME, cfg_dict)  # last: present = a complete model
    log.info("saved deep ensemble of %d members to %s (validation accuracy of the mean: %s)", len(loaded), out,
             summary.get("val_accuracy_mean"))
    return out
