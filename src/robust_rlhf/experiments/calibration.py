"""KL matching: `kl_coef_search` (the pure search, one probe at a time), `calibrate_kl_coef` (the
same search over a probe function) and `calibration_flow` (one method's calibration as a
scheduler flow: the probes are cached units, run one after another)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Generator

from robust_rlhf.config import build_dataclass
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.config import ExperimentConfig, MethodSpec
from robust_rlhf.experiments.stages import policy_config_dict, policy_unit, trainer
from robust_rlhf.experiments.units import Unit
from robust_rlhf.utils import atomic_write_json

log = logging.getLogger(__name__)


def kl_coef_search(target: float, coef0: float, coef_min: float, coef_max: float, max_probes: int,
                   tolerance: float) -> Generator[float, float, tuple[float, list[dict]]]:
    """Find the KL coefficient whose run ends at KL ``target``: a secant on (log coef, log KL)
    -- final KL falls roughly as a power of the coefficient -- safeguarded by bisection in log
    space once the target is bracketed, clipped to [coef_min, coef_max].

    A generator: it yields the next coefficient to probe and is sent that probe's final KL.

    Args:
        target: target KL (> 0).
        coef0: first coefficient tried.
        max_probes: at most this many probes.
        tolerance: stop when ``|KL / target - 1| <= tolerance``.

    Returns (as StopIteration's value):
        (the probed coefficient whose KL was closest to target in log ratio, probe history).
    """
    if target <= 0:
        raise UserError(f"calibration.target_kl must be > 0, got {target}")
    lo_c, hi_c = math.log(coef_min), math.log(coef_max)
    history: list[dict] = []
    x = min(max(math.log(coef0), lo_c), hi_c)
    below: tuple[float, float] | None = None  # (log coef, log KL) with KL < target (coef too large)
    above: tuple[float, float] | None = None  # KL > target (coef too small)
    for _ in range(max_probes):
        kl = float((yield math.exp(x)))
        y = math.log(max(kl, 1e-6))
        history.append({"coef": math.exp(x), "kl": kl})
        if abs(kl / target - 1) <= tolerance:
            break
        if kl < target:
            below = (x, y) if below is None or x < below[0] else below
        else:
            above = (x, y) if above is None or x > above[0] else above
        if below is not None and above is not None:
            (x1, y1), (x2, y2) = below, above
            slope = (y2 - y1) / (x2 - x1) if x2 != x1 else 0.0
            nxt = x1 + (math.log(target) - y1) / slope if slope < 0 else (x1 + x2) / 2
            if not min(x1, x2) < nxt < max(x1, x2):
                nxt = (x1 + x2) / 2  # secant left the bracket: bisect
        else:
            # one side only: assume KL ~ coef^-1 and step (at least a factor 2, at most 10)
            step = min(max(abs(y - math.log(target)), math.log(2)), math.log(10))
            nxt = x + step if kl > target else x - step
        nxt = min(max(nxt, lo_c), hi_c)
        if any(abs(nxt - math.log(h["coef"])) < 1e-9 for h in history):
            break  # clipped onto a coefficient already tried
        x = nxt
    best = min(history, key=lambda h: abs(math.log(max(h["kl"], 1e-6) / target)))
    return best["coef"], history


def calibrate_kl_coef(probe: Callable[[float], float], target: float, coef0: float, coef_min: float,
                      coef_max: float, max_probes: int, tolerance: float) -> tuple[float, list[dict]]:
    """`kl_coef_search` driven by ``probe`` (runs a short training with a coefficient and returns
    its final KL). Returns (chosen coefficient, probe history)."""
    search = kl_coef_search(target, coef0, coef_min, coef_max, max_probes, tolerance)
    coef = next(search)
    while True:
        try:
            coef = search.send(float(probe(coef)))
        except StopIteration as stop:
            return stop.value


def _coef_tag(coef: float) -> str:
    return f"{coef:.4g}".replace("+", "")


def calibration_flow(cfg: ExperimentConfig, method: MethodSpec, seed: int, head: int | None, rm: Unit, root: Path,
                     prompts_file: Path, on_probes: Callable[[int], None] | None = None
                     ) -> Generator[list[Unit], list[dict], float]:
    """One method's KL calibration as a scheduler flow: yields one probe unit at a time (a short
    policy run at the next coefficient of `kl_coef_search`), writes
    ``units/calibration/<method>/calibration.json`` and returns the chosen coefficient.

    Args:
        seed, head: the probe runs' seed and head (the method's first).
        on_probes: called with the number of probes used (the scheduler's planned total shrinks
            when the search stopped before ``max_probes``).
    """
    cal = cfg.calibration
    cls, _ = trainer(method.type)
    coef0 = build_dataclass(cls, policy_config_dict(cfg, method, seed, root, prompts_file),
                            f"methods[{method.name}]").kl.coef
    search = kl_coef_search(cal.target_kl, coef0 or 0.05, cal.coef_min, cal.coef_max, cal.max_probes, cal.tolerance)
    coef = next(search)
    while True:
        u = policy_unit(cfg, method, seed, head, rm, root, prompts_file, kl_coef=coef, steps=cal.steps,
                        key=f"calibration/{method.name}/coef_{_coef_tag(coef)}", stage="calibration")
        (summary,) = yield [u]
        try:
            coef = search.send(float(summary["final_kl"]))
        except StopIteration as stop:
            chosen, history = stop.value
            break
    if on_probes is not None:
        on_probes(len(history))
    atomic_write_json(root / "calibration" / method.name / "calibration.json",
                      {"target_kl": cal.target_kl, "chosen_coef": chosen, "probes": history})
    log.info("calibrated %s: kl.coef = %.4g (probes: %s)", method.name, chosen,
             ", ".join(f"{h['coef']:.3g}->{h['kl']:.2f}" for h in history))
    return chosen
