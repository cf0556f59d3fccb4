"""`robust-rlhf simulate {bandit,softmax,scoring}`: the theory checks of seeds 002 and 000.

Thin: parse arguments into the config dataclass of `robust_rlhf.experiments.{bandit,kl_policies,scoring}`, run it,
write results.json + a PNG (`robust_rlhf.report.theory_plots`), print a short summary. See docs/theory.md.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from robust_rlhf.errors import UserError
from robust_rlhf.experiments import bandit, kl_policies, scoring
from robust_rlhf.report import theory_plots
from robust_rlhf.utils import MAX_SEED, atomic_write_json, atomic_write_text, check_output_dir

MAX_COUNT = 10_000_000
"""Largest trials/actions/dimension accepted: bigger ones are typos that would exhaust memory."""


MAX_MAGNITUDE = 1e12
"""Largest |value| of a number flag, and 1/MAX_MAGNITUDE the smallest non-zero one: beyond them
squares, exponentials and variances overflow or underflow double precision."""


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if abs(value) > MAX_MAGNITUDE or (value != 0 and abs(value) < 1 / MAX_MAGNITUDE):
        raise argparse.ArgumentTypeError(f"expected 0 or a magnitude in [1e-12, 1e12], got {text!r}")
    return value


def _nonfinite(value: Any, key: str = "") -> str | None:
    """The key path of the first inf/nan in nested results (dicts, lists, numpy arrays), or None."""
    import numpy as np

    if isinstance(value, dict):
        for k, v in value.items():
            bad = _nonfinite(v, f"{key}.{k}" if key else str(k))
            if bad:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _nonfinite(v, f"{key}[{i}]")
            if bad:
                return bad
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        if not np.isfinite(value).all():
            return f"{key}[{int(np.argmin(np.isfinite(value).ravel()))}]"
    elif isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return key or "result"
    return None


def _quiet(run, cfg):
    """Run a simulation with numpy's overflow warnings silenced: `_check_results` reports them as one line."""
    import warnings

    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return run(cfg)


def _check_results(results: dict, arrays: dict) -> None:
    """Refuse to print or write a result holding inf/nan: an overflowing or underflowing input
    would otherwise be reported as an answer."""
    bad = _nonfinite(results) or _nonfinite(arrays)
    if bad:
        raise UserError(f"the simulation produced a non-finite value ({bad}): the inputs overflow or underflow "
                        f"double precision (huge rewards, tiny variances, a perturbation near the float maximum); "
                        f"use moderate magnitudes. Nothing was written")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a whole number in [1, {MAX_COUNT}], got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**32 - 1], got {value}")
    return value


def _apply(cfg: Any, values: dict[str, Any]) -> Any:
    """Set every non-None value onto the dataclass `cfg`."""
    names = {f.name for f in fields(cfg)}
    for key, value in values.items():
        if value is not None:
            assert key in names, key
            setattr(cfg, key, value)
    return cfg


def _write_outputs(out_dir: str | Path, name: str, results: dict, arrays: dict,
                   vectors: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write OUT/results.json, OUT/<name>.png and, for `vectors`, OUT/<vector>.txt (one number
    per line, so --r-star/--variances/--pi0 can replay the exact problem)."""
    _check_results(results, arrays)
    out = Path(out_dir)
    paths = {"results": out / "results.json", "png": out / f"{name}.png"}
    for vec in vectors:
        paths[vec] = out / f"{vec}.txt"
        atomic_write_text(paths[vec], "".join(f"{x:.17g}\n" for x in arrays[vec]))
    atomic_write_json(paths["results"], results)
    plot = {"bandit": theory_plots.plot_bandit, "softmax": theory_plots.plot_softmax, "scoring": theory_plots.plot_scoring}
    plot[name](results, arrays, paths["png"])
    return paths


def _finish(paths: dict[str, Path], lines: list[str]) -> int:
    print("\n".join(lines))
    print(f"  results: {paths['results']}")
    print(f"  figure:  {paths['png']}")
    return 0


def _p_line(name: str, r: dict) -> str:
    key = f"p_under_{name}"
    z = r[f"{key}_z"]
    z_txt = f", z={z:+.2f}" if z is not None else ""
    return f"{r[f'{key}_empirical']:.4f} (theory {r[f'{key}_theory']:.4f}{z_txt})"


# ---------------------------------------------------------------- bandit


def _bandit(args: argparse.Namespace) -> int:
    cfg = bandit.BanditConfig()
    if args.preset is not None:
        _apply(cfg, bandit.BANDIT_PRESETS[args.preset])
        cfg.preset = args.preset
    if args.variances is not None and args.var_range is not None:
        raise UserError("give either --var-range or --variances, not both")
    low, high = args.var_range if args.var_range is not None else (None, None)
    _apply(cfg, dict(
        dim=args.dim, var_low=low, var_high=high, epsilon=args.epsilon, r_star_scale=args.r_star_scale,
        trials=args.trials, seed=args.seed, variances_file=args.variances, r_star_file=args.r_star,
        pi0_file=args.pi0,
    ))
    cfg.dim_explicit = args.dim is not None
    out = check_output_dir(args.out if args.out is not None else f"runs/simulate/bandit-{cfg.preset or 'custom'}", "--out")
    results, arrays = _quiet(bandit.run_bandit, cfg)
    paths = _write_outputs(out, "bandit", results, arrays, vectors=("r_star", "variances", "pi0"))
    r = results
    lines = [
        f"bandit ({cfg.preset or 'custom'}): d={r['dim']}, trials={r['trials']}, "
        f"variances in [{r['lambda_min']:.3g}, {r['lambda_max']:.3g}], eps={r['epsilon']:g}, "
        f"eps~={r['epsilon_tilde']:.4g}, pi0ᵀr*={r['return_pi0']:.4f}  ({r['runtime_s']:.2f}s)",
        f"  return pi1 (variance-unaware): mean {r['return_mean_vanilla']:.4f}  std {r['return_std_vanilla']:.4f}",
        f"  return pi2 (variance-aware):   mean {r['return_mean_variance_aware']:.4f}  std {r['return_std_variance_aware']:.4f}",
        f"  P(pi1ᵀr* <= pi0ᵀr*) = {_p_line('vanilla', r)}",
        f"  P(pi2ᵀr* <= pi0ᵀr*) = {_p_line('variance_aware', r)}",
    ]
    lines += [f"  note: {n}" for n in r["notes"]]
    return _finish(paths, lines)


# ---------------------------------------------------------------- softmax


def _softmax(args: argparse.Namespace) -> int:
    if args.variances is not None and args.var_range is not None:
        raise UserError("give either --var-range or --variances, not both")
    low, high = args.var_range if args.var_range is not None else (None, None)
    cfg = _apply(kl_policies.SoftmaxConfig(), dict(
        actions=args.actions, var_low=low, var_high=high, r_star_scale=args.r_star_scale, kl=args.kl,
        trials=args.trials, seed=args.seed, variances_file=args.variances, r_star_file=args.r_star,
        pi0_file=args.pi0,
    ))
    cfg.dim_explicit = args.actions is not None
    out = check_output_dir(args.out if args.out is not None else "runs/simulate/softmax", "--out")
    results, arrays = _quiet(kl_policies.run_softmax, cfg)
    paths = _write_outputs(out, "softmax", results, arrays)
    r = results
    lines = [
        f"softmax (Thm 3.6): K={r['n_actions']}, trials={r['trials']}, KL(pi||pi0)={r['kl_target']:g} "
        f"(max error {r['kl_max_abs_error']:.1e}), oracle return {r['return_oracle']:.4f}, "
        f"pi0ᵀr*={r['return_pi0']:.4f}  ({r['runtime_s']:.2f}s)",
        f"  pi ∝ pi0 exp(R^/beta):          return {r['return_mean_vanilla']:.4f} ± {r['return_std_vanilla']:.4f}"
        f"  regret {r['regret_mean_vanilla']:.4f}",
        f"  pi ∝ pi0 exp(R^/(beta sigma^2)): return {r['return_mean_variance_aware']:.4f} ± {r['return_std_variance_aware']:.4f}"
        f"  regret {r['regret_mean_variance_aware']:.4f}",
        f"  variance-aware better in {100 * r['p_variance_aware_beats_vanilla']:.1f}% of trials "
        f"(mean gain {r['return_diff_mean']:+.4f} ± {r['return_diff_stderr']:.4f} s.e.)",
    ]
    ex = r["thm36_exact_vs_paper"]
    lines += [
        "  Thm 3.6 at the same beta, exact maximiser pi0·exp((R^-mu)/(beta sigma^2)-1) vs the paper's form:",
        f"    objective J: exact {ex['objective_mean_exact']:.4f}, paper {ex['objective_mean_paper']:.4f} "
        f"(gap mean {ex['objective_gap_mean']:.2e}, max {ex['objective_gap_max']:.2e})",
        f"    true return: exact {ex['return_mean_exact']:.4f} ± {ex['return_std_exact']:.4f}, paper "
        f"{ex['return_mean_paper']:.4f} ± {ex['return_std_paper']:.4f} "
        f"(exact - paper {ex['return_diff_exact_minus_paper_mean']:+.4f} ± {ex['return_diff_exact_minus_paper_stderr']:.4f} s.e.)",
        f"    KL(pi||pi0): exact {ex['kl_mean_exact']:.4f}, paper {ex['kl_mean_paper']:.4f}",
    ]
    return _finish(paths, lines)


# ---------------------------------------------------------------- scoring


def _scoring(args: argparse.Namespace) -> int:
    cfg = _apply(scoring.ScoringConfig(), dict(
        actions=args.actions, fraction=args.fraction, delta=args.delta, beta=args.beta, trials=args.trials,
        seed=args.seed, beta_min=args.beta_min, beta_max=args.beta_max, sweep_points=args.sweep_points,
    ))
    out = check_output_dir(args.out if args.out is not None else "runs/simulate/scoring", "--out")
    results, arrays = _quiet(scoring.run_scoring, cfg)
    paths = _write_outputs(out, "scoring", results, arrays)
    r = results
    lines = [
        f"scoring (seed 000): K={r['n_actions']}, {r['n_perturbed']} perturbed by ±{r['delta']:g}, "
        f"beta={r['beta']:g}, trials={r['trials']}  ({r['runtime_s']:.2f}s)",
        f"  true-return loss, over-scoring:  {r['loss_mean_over']:.4f} (std {r['loss_std_over']:.4f})",
        f"  true-return loss, under-scoring: {r['loss_mean_under']:.4f} (std {r['loss_std_under']:.4f})",
        f"  over - under: {r['loss_diff_mean']:+.4f} ± {r['loss_diff_stderr']:.4f} s.e.; "
        f"over worse in {100 * r['p_over_worse']:.1f}% of trials -> {r['verdict']}",
    ]
    return _finish(paths, lines)


# ---------------------------------------------------------------- parser


def _add_problem_args(p: argparse.ArgumentParser, dim_flag: str, dim_help: str) -> None:
    p.add_argument(dim_flag, type=_count, default=None, help=dim_help)
    p.add_argument(
        "--var-range", nargs=2, type=_finite_float, metavar=("LOW", "HIGH"), default=None,
        help="draw the diagonal variances of Sigma uniformly in [LOW, HIGH] (both > 0)",
    )
    p.add_argument("--variances", metavar="FILE", default=None,
                   help="fix the variances exactly: one number (> 0) per line; sets the dimension")
    p.add_argument("--r-star", metavar="FILE", default=None,
                   help="fix the true reward r* exactly: one number per line")
    p.add_argument("--r-star-scale", type=_finite_float, default=None, metavar="S",
                   help="without --r-star, draw r*_i ~ N(0, S^2) once from --seed")
    p.add_argument("--pi0", metavar="FILE", default=None,
                   help="reference policy pi0, one probability per line (sums to 1); uniform by default")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed for r*, the variances and the noise (independent streams; default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `simulate` command group (bandit, softmax, scoring)."""
    sim = subparsers.add_parser(
        "simulate",
        help="theory checks in seconds: linear bandit (Thm 3.3), softmax (Thm 3.6), over/under-scoring",
        description="Closed-form + Monte-Carlo checks of the variance-aware theory (seed 002 §3) and of "
                    "seed 000's over- vs under-scoring claim. Each writes results.json and a PNG.",
    )
    ssub = sim.add_subparsers(dest="simulation", metavar="SIMULATION")
    ssub.required = True

    b = ssub.add_parser(
        "bandit",
        help="linear bandit of seed 002 §3: pi1 (L2 ball) vs pi2 (Sigma-weighted ball), Theorem 3.3",
        description="pi1 = pi0 + sqrt(eps/R^ᵀR^) R^ vs pi2 = pi0 + sqrt(eps~/R^ᵀΣ⁻¹R^) Σ⁻¹R^ with "
                    "eps~ = lambda_min(Σ) eps, over R^ ~ N(r*, Σ); returns, histogram, and "
                    "P(piᵀr* <= pi0ᵀr*) empirical vs Theorem 3.3. Explicit flags override the preset.",
    )
    b.add_argument(
        "--preset", choices=sorted(bandit.BANDIT_PRESETS), default=None,
        help="the paper's settings (d=1000, 10,000 trials, variances in (3,100) or (70,100), "
             "r*_i ~ N(0, 0.13^2) seed 0, uniform pi0, eps=1); without it the defaults equal high-variability",
    )
    _add_problem_args(b, "--dim", "dimension d (number of prompt-response pairs; default 1000)")
    b.add_argument("--epsilon", type=_finite_float, default=None,
                   help="L2 budget eps of pi1, > 0 (default 1); pi2 uses eps~ = min(variance) * eps")
    b.add_argument("--trials", type=_count, default=None, help="number of estimates R^ drawn (default 10000)")
    b.add_argument("--out", default=None,
                   help="output folder for results.json, bandit.png and the r*/variances/pi0 used "
                        "(default runs/simulate/bandit-<preset>)")
    b.set_defaults(func=_bandit)

    s = ssub.add_parser(
        "softmax",
        help="discrete-action Theorem 3.6: pi0·exp(R^/(beta sigma^2)) vs pi0·exp(R^/beta) at equal KL",
        description="Both policies' beta is solved by bisection per trial so that KL(pi || pi0) equals "
                    "--kl; reports true return and regret against the oracle pi0·exp(r*/beta*) at the same KL, "
                    "and, at the same beta, the exact Thm 3.6 maximiser pi0·exp((R^-mu)/(beta sigma^2)-1) "
                    "against the paper's form (objective, true return, KL).",
    )
    _add_problem_args(s, "--actions", "number of actions K (default 100)")
    s.add_argument("--kl", type=_finite_float, default=None,
                   help="KL(pi || pi0) in nats both policies are matched to, per trial (default 1.0; "
                        "must be < -log max pi0)")
    s.add_argument("--trials", type=_count, default=None, help="number of estimates R^ drawn (default 5000)")
    s.add_argument("--out", default=None, help="output folder (default runs/simulate/softmax)")
    s.set_defaults(func=_softmax)

    c = ssub.add_parser(
        "scoring",
        help="seed 000: does over-scoring (+delta) hurt a KL-regularised policy more than under-scoring (-delta)?",
        description="pi ∝ pi0·exp(r/beta) fitted to r* ± delta on a random fraction of actions; loss of true "
                    "return vs the policy fitted to r* itself, paired over trials, plus sweeps over beta "
                    "and over the fraction.",
    )
    c.add_argument("--actions", type=_count, default=None, help="number of actions K (default 100)")
    c.add_argument("--fraction", type=_finite_float, default=None,
                   help="fraction of actions perturbed, a fresh random subset per trial (default 0.1)")
    c.add_argument("--delta", type=_finite_float, default=None,
                   help="perturbation size, in units of the true reward's std (r* ~ N(0, 1); default 1.0)")
    c.add_argument("--beta", type=_finite_float, default=None,
                   help="KL coefficient beta of pi ∝ pi0·exp(r/beta) for the headline numbers (default 0.1)")
    c.add_argument("--beta-min", type=_finite_float, default=None, help="smallest beta of the sweep (default 0.01)")
    c.add_argument("--beta-max", type=_finite_float, default=None, help="largest beta of the sweep (default 10)")
    c.add_argument("--sweep-points", type=_count, default=None, help="points per sweep (default 25)")
    c.add_argument("--trials", type=_count, default=None, help="trials, each with a fresh r* and subset (default 2000)")
    c.add_argument("--seed", type=_seed, default=None, help="random seed (default 0)")
    c.add_argument("--out", default=None, help="output folder (default runs/simulate/scoring)")
    c.set_defaults(func=_scoring)
