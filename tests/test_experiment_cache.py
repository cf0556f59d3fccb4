"""The lab's cache is keyed by what a unit is computed from, never by where the experiment folder
lives: the same experiment planned under a relative or an absolute folder, a renamed one or from
another working directory carries the same fingerprint for every unit; an edited input file outside
the folder re-keys exactly the units that read it, a moved identical one re-keys nothing; and a
finished experiment moved to another folder resumes with nothing to recompute."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.experiments import overopt
from robust_rlhf.experiments.calibration import calibration_flow
from robust_rlhf.experiments.config import expanded_methods, load_experiment_config
from robust_rlhf.experiments.scheduler import InlineBackend, Scheduler
from robust_rlhf.experiments.units import Unit, root_relative, units_root


def write_nothing(folder: Path) -> dict:
    return {}


# ----------------------------------------------------------------------------- root_relative
def test_root_relative_hand_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("runs/a/units")
    spec = {"model": "runs/a/units/rm/bt/model", "abs": str(tmp_path / "runs/a/units/data/prompts.jsonl"),
            "path": root / "data", "root": "runs/a/units", "sibling": "runs/a/units2/x", "prefix": "runs/a/unit",
            "outside": "/data/train.jsonl", "name": "smollm2-135m", "n": 3, "none": None,
            "nested": [("runs/a/units/pool/s0", 1.5)]}
    assert root_relative(spec, root) == {
        "model": "<units>/rm/bt/model", "abs": "<units>/data/prompts.jsonl", "path": "<units>/data",
        "root": "<units>", "sibling": "runs/a/units2/x", "prefix": "runs/a/unit", "outside": "/data/train.jsonl",
        "name": "smollm2-135m", "n": 3, "none": None, "nested": [["<units>/pool/s0", 1.5]]}
    # an absolute root: its own spelling of the paths
    assert root_relative({"m": str(tmp_path / "runs/a/units/rm"), "r": "runs/a/units/rm"}, tmp_path / root) == {
        "m": "<units>/rm", "r": "runs/a/units/rm"}


def test_scheduler_refuses_a_spec_naming_a_path_inside_the_folder(tmp_path):
    s = Scheduler(tmp_path, InlineBackend(tmp_path), progress=False)
    with pytest.raises(RuntimeError, match="names a path inside"):
        s.add(Unit("x", "test", {"model": str(tmp_path / "rm" / "model")}, write_nothing))
    s.add(Unit("y", "test", {"model": "<units>/rm/model", "data": "/elsewhere/train.jsonl"}, write_nothing))
    assert s.waiting == ["y"]


# ----------------------------------------------------------------------------- fingerprints of a plan
def _write_prompts(path: Path, prompts: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    return str(path)


def _config(prompts: str, bon: str, shift: str):
    """experiment_tiny with every kind of unit: external prompt files for the data, the best-of-n
    study and the shifted sets, and a calibrated method (its probes are policy units too)."""
    return load_experiment_config("experiment_tiny", [
        f"prompts.source={prompts}", f"bon_study.prompt_source={bon}", f"shift.prompt_source={shift}",
        "bon_study.enabled=true", "bon_study.num_prompts=3", "bon_study.pool_size=4",
        "shift.enabled=true", "shift.num_prompts=3",
        "methods=[{name: bon-bt, type: best_of_n, reward_model: bt},"
        " {name: ppo-mean, type: ppo, reward_model: ens},"
        " {name: ppo-cal, type: ppo, reward_model: ens, calibrate_kl: true}]",
        "baseline=ppo-mean"])


def _fingerprints(cfg, output_dir: str | Path) -> dict[str, str]:
    """Every unit the lab declares for ``cfg`` into ``output_dir`` (nothing is written), with the
    first calibration probe of each calibrated method."""
    root = units_root(Path(output_dir))
    plan = overopt._plan(cfg, root, overopt.load_prompts(cfg.prompts), expanded_methods(cfg))
    units = [plan.data, *plan.rm_units.values(), *plan.pools.values(), *plan.pool_scores.values(),
             *plan.shift_units.values(), *plan.bon_units.values(), *(u for _, u in plan.policies)]
    prompts_file = root / plan.data.key / "prompts.jsonl"
    for method, seed, head, rm, _ in plan.calibrated.values():
        units += next(calibration_flow(cfg, method, seed, head, rm, root, prompts_file))
    return {u.key: u.fingerprint for u in units}


PROMPTS = [f"Prompt number {i} was" for i in range(30)]


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "inputs"
    return {"prompts": _write_prompts(d / "prompts.txt", PROMPTS),
            "bon": _write_prompts(d / "bon.txt", ["The hotel was", "My phone is", "The album felt", "This pizza"]),
            "shift": _write_prompts(d / "shift.txt", ["The waiter was", "Our room felt", "The novel is"])}


def test_fingerprints_do_not_depend_on_where_the_folder_lives(tmp_path, monkeypatch, inputs):
    cfg = _config(inputs["prompts"], inputs["bon"], inputs["shift"])
    monkeypatch.chdir(tmp_path)
    relative = _fingerprints(cfg, "runs/study")
    assert {k.split("/")[0] for k in relative} == {"data", "rm", "pool", "pool_scores", "shift", "bon", "runs",
                                                  "calibration"}
    assert _fingerprints(cfg, tmp_path / "runs/study") == relative  # absolute
    assert _fingerprints(cfg, tmp_path / "elsewhere/renamed") == relative  # moved and renamed
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert _fingerprints(cfg, "../runs/study") == relative  # another working directory


def test_an_edited_input_file_rekeys_the_units_that_read_it(tmp_path, inputs):
    cfg = _config(inputs["prompts"], inputs["bon"], inputs["shift"])
    before = _fingerprints(cfg, tmp_path / "exp")
    # the same files moved elsewhere: the same inputs, nothing re-keyed
    moved = {k: shutil.copy(v, tmp_path / f"moved_{k}.txt") for k, v in inputs.items()}
    assert _fingerprints(_config(moved["prompts"], moved["bon"], moved["shift"]), tmp_path / "exp") == before

    def changed(which: str) -> set[str]:
        path = Path(moved[which])
        original = path.read_text(encoding="utf-8")
        path.write_text(original.replace("was", "is"), encoding="utf-8")  # the first prompt of each file says "was"
        try:
            after = _fingerprints(_config(moved["prompts"], moved["bon"], moved["shift"]), tmp_path / "exp")
        finally:
            path.write_text(original, encoding="utf-8")
        assert set(after) == set(before)
        return {k for k in before if after[k] != before[k]}

    assert changed("bon") == {"bon/pool", "bon/scores/bt", "bon/scores/ens"}
    assert changed("shift") == {"shift/sets", "shift/scores/bt", "shift/scores/ens"}
    assert changed("prompts") == set(before)  # the data is built from them: everything depends on it


@pytest.mark.parametrize("key", ["bon_study.prompt_source", "shift.prompt_source"])
def test_a_missing_prompt_file_is_refused_before_anything_is_written(tmp_path, key):
    """The prompt files are read when the units are declared (they key them): a missing one is the
    user's error, named by its key, before the folder exists."""
    cfg = load_experiment_config("experiment_tiny", [f"{key.split('.')[0]}.enabled=true",
                                                     f"{key}={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match=f"^{key}: prompts file .*missing.jsonl' does not exist"):
        overopt.run_experiment(cfg, tmp_path / "exp", progress=False)
    assert not (tmp_path / "exp").exists()


# ----------------------------------------------------------------------------- a moved experiment resumes
def test_a_moved_experiment_resumes_with_nothing_to_recompute(tmp_path, monkeypatch):
    """The smallest run (data, one reward model, a best-of-n pool and its scores, a 1-step PPO run)
    into a relative folder; the folder renamed; run again by its absolute path from another
    working directory: every unit is found finished."""
    before = torch.get_num_threads()
    cfg = load_experiment_config("experiment_tiny", [
        "num_threads=1", "reward_models=[{name: bt, preset: rm_tiny, overrides: "
        "{model.head_type: scalar, stage1.max_steps: 2, data.limit: null}}]",
        "methods=[{name: bon-bt, type: best_of_n, reward_model: bt}, {name: ppo-bt, type: ppo, reward_model: bt}]",
        "policy_overrides.train.steps=1", "baseline=ppo-bt"])
    monkeypatch.chdir(tmp_path)
    try:
        first = overopt.run_experiment(cfg, "runs/a", progress=False, render=False)
        assert sorted(first.executed) == ["data", "pool/s0", "pool_scores/bt/s0", "rm/bt", "runs/ppo-bt/s0"]
        os.rename("runs/a", "runs/b")
        monkeypatch.chdir(tmp_path / "runs")
        second = overopt.run_experiment(cfg, tmp_path / "runs/b", progress=False, render=False)
    finally:
        torch.set_num_threads(before)
    assert second.executed == [] and sorted(second.skipped) == sorted(first.executed)
    assert second.results["methods"]["ppo-bt"]["final_gold"] == first.results["methods"]["ppo-bt"]["final_gold"]
