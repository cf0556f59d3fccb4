"""KL matching: `calibrate_kl_coef` (pure search over probe runs) and `calibrate_all` (one
calibration per method with ``calibrate_kl: true``; the probes are cached units)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from robust_rlhf.config import build_dataclass
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.config import ExperimentConfig, heads_of
from robust_rlhf.experiments.stages import policy_config_dict, policy_unit, trainer
from robust_rlhf.experiments.units import UnitRunner
from robust_rlhf.utils import atomic_write_json

log = logging.getLogger(__name__)


def calibrate_kl_coef(probe: Callable[[float], float], target: float, coef0: float, coef_min: float,
                      coef_max: float, max_probes: int, tolerance: float) -> tuple[float, list[dict]]:
    """Find the KL coefficient whose run ends at KL ``target``: a secant on (log coef, log KL)
    -- final KL falls roughly as a power of the coefficient -- safeguarded by bisection in log
    space once the target is bracketed, clipped to [coef_min, coef_max].

    Args:
        probe: runs a (short) training with a coefficient and returns its final KL.
        target: target KL (> 0).
        coef0: first coefficient tried.
        max_probes: at most this many probes.
        tolerance: stop when ``|KL / target - 1| <= tolerance``.

    Returns:
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
        kl = float(probe(math.exp(x)))
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


def _coef_tag(coef: float) -> str:
    return f"{coef:.4g}".replace("+", "")



def calibrate_all(cfg: ExperimentConfig, methods, rm_units: dict, rm_heads: dict, root: Path, prompts_file: Path,
                   runner: UnitRunner) -> dict[str, float]:
    """KL coefficient per calibrated method (sweep / perturbation copies inherit their base's)."""
    cal = cfg.calibration
    coefs: dict[str, float] = {}
    for m, seeds, study in methods:
        if not m.calibrate_kl or study != "main":
            continue
        cls, _ = trainer(m.type)
        coef0 = build_dataclass(cls, policy_config_dict(cfg, m, seeds[0], root, prompts_file),
                                f"methods[{m.name}]").kl.coef
        head = heads_of(m, rm_heads[m.reward_model])[0]
        probes = 0

        def probe(coef: float, m=m, head=head) -> float:
            nonlocal probes
            probes += 1
            u = policy_unit(cfg, m, seeds[0], head, rm_units[m.reward_model], root, prompts_file, kl_coef=coef,
                             steps=cal.steps, key=f"calibration/{m.name}/coef_{_coef_tag(coef)}", stage="calibration")
            return float(runner(u)["final_kl"])

        coef, history = calibrate_kl_coef(probe, cal.target_kl, coef0 or 0.05, cal.coef_min, cal.coef_max,
                                          cal.max_probes, cal.tolerance)
        runner.grow(probes - cal.max_probes)
        coefs[m.name] = coef
        atomic_write_json(root / "calibration" / m.name / "calibration.json",
                          {"target_kl": cal.target_kl, "chosen_coef": coef, "probes": history})
        log.info("calibrated %s: kl.coef = %.4g (probes: %s)", m.name, coef,
                 ", ".join(f"{h['coef']:.3g}->{h['kl']:.2f}" for h in history))
    return coefs
