"""`robust-rlhf simulate {bandit,softmax,scoring}`: the theory checks of seeds 002 and 000.

Thin: parse arguments into the config dataclass of `robust_rlhf.experiments.theory`, run it,
write results.json + a PNG, print a short summary. See docs/theory.md.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from robust_rlhf.errors import UserError
from robust_rlhf.experiments import theory


def _apply(cfg: Any, values: dict[str, Any]) -> Any:
    """Set every non-None value onto the dataclass `cfg`."""
    names = {f.name for f in fields(cfg)}
    for key, value in values.items():
        if value is not None:
            assert key in names, key
            setattr(cfg, key, value)
    return cfg


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
    cfg = theory.BanditConfig()
    if args.preset is not None:
        _apply(cfg, theory.BANDIT_PRESETS[args.preset])
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
    out = args.out or f"runs/simulate/bandit-{cfg.preset or 'custom'}"
    results, arrays = theory.run_bandit(cfg)
    paths = theory.write_bandit_outputs(out, results, arrays)
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
    cfg = _apply(theory.SoftmaxConfig(), dict(
        actions=args.actions, var_low=low, var_high=high, r_star_scale=args.r_star_scale, kl=args.kl,
        trials=args.trials, seed=args.seed, variances_file=args.variances, r_star_file=args.r_star,
        pi0_file=args.pi0,
    ))
    cfg.dim_explicit = args.actions is not None
    out = args.out or "runs/simulate/softmax"
    results, arrays = theory.run_softmax(cfg)
    paths = theory.write_softmax_outputs(out, results, arrays)
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
    return _finish(paths, lines)


# ---------------------------------------------------------------- scoring


def _scoring(args: argparse.Namespace) -> int:
    cfg = _apply(theory.ScoringConfig(), dict(
        actions=args.actions, fraction=args.fraction, delta=args.delta, beta=args.beta, trials=args.trials,
        seed=args.seed, beta_min=args.beta_min, beta_max=args.beta_max, sweep_points=args.sweep_points,
    ))
    out = args.out or "runs/simulate/scoring"
    results, arrays = theory.run_scoring(cfg)
    paths = theory.write_scoring_outputs(out, results, arrays)
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
    p.add_argument(dim_flag, type=int, default=None, help=dim_help)
    p.add_argument(
        "--var-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
        help="draw the diagonal variances of Sigma uniformly in [LOW, HIGH] (both > 0)",
    )
    p.add_argument("--variances", metavar="FILE", default=None,
                   help="fix the variances exactly: one number (> 0) per line; sets the dimension")
    p.add_argument("--r-star", metavar="FILE", default=None,
                   help="fix the true reward r* exactly: one number per line")
    p.add_argument("--r-star-scale", type=float, default=None, metavar="S",
                   help="without --r-star, draw r*_i ~ N(0, S^2) once from --seed")
    p.add_argument("--pi0", metavar="FILE", default=None,
                   help="reference policy pi0, one probability per line (sums to 1); uniform by default")
    p.add_argument("--seed", type=int, default=None,
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
        "--preset", choices=sorted(theory.BANDIT_PRESETS), default=None,
        help="the paper's settings (d=1000, 10,000 trials, variances in (3,100) or (70,100), "
             "r*_i ~ N(0, 0.13^2) seed 0, uniform pi0, eps=1); without it the defaults equal high-variability",
    )
    _add_problem_args(b, "--dim", "dimension d (number of prompt-response pairs; default 1000)")
    b.add_argument("--epsilon", type=float, default=None,
                   help="L2 budget eps of pi1, > 0 (default 1); pi2 uses eps~ = min(variance) * eps")
    b.add_argument("--trials", type=int, default=None, help="number of estimates R^ drawn (default 10000)")
    b.add_argument("--out", default=None,
                   help="output folder for results.json, bandit.png and the r*/variances/pi0 used "
                        "(default runs/simulate/bandit-<preset>)")
    b.set_defaults(func=_bandit)

    s = ssub.add_parser(
        "softmax",
        help="discrete-action Theorem 3.6: pi0·exp(R^/(beta sigma^2)) vs pi0·exp(R^/beta) at equal KL",
        description="Both policies' beta is solved by bisection per trial so that KL(pi || pi0) equals "
                    "--kl; reports true return and regret against the oracle pi0·exp(r*/beta*) at the same KL.",
    )
    _add_problem_args(s, "--actions", "number of actions K (default 100)")
    s.add_argument("--kl", type=float, default=None,
                   help="KL(pi || pi0) in nats both policies are matched to, per trial (default 1.0; "
                        "must be < -log max pi0)")
    s.add_argument("--trials", type=int, default=None, help="number of estimates R^ drawn (default 5000)")
    s.add_argument("--out", default=None, help="output folder (default runs/simulate/softmax)")
    s.set_defaults(func=_softmax)

    c = ssub.add_parser(
        "scoring",
        help="seed 000: does over-scoring (+delta) hurt a KL-regularised policy more than under-scoring (-delta)?",
        description="pi ∝ pi0·exp(r/beta) fitted to r* ± delta on a random fraction of actions; loss of true "
                    "return vs the policy fitted to r* itself, paired over trials, plus sweeps over beta "
                    "and over the fraction.",
    )
    c.add_argument("--actions", type=int, default=None, help="number of actions K (default 100)")
    c.add_argument("--fraction", type=float, default=None,
                   help="fraction of actions perturbed, a fresh random subset per trial (default 0.1)")
    c.add_argument("--delta", type=float, default=None,
                   help="perturbation size, in units of the true reward's std (r* ~ N(0, 1); default 1.0)")
    c.add_argument("--beta", type=float, default=None,
                   help="KL coefficient beta of pi ∝ pi0·exp(r/beta) for the headline numbers (default 0.1)")
    c.add_argument("--beta-min", type=float, default=None, help="smallest beta of the sweep (default 0.01)")
    c.add_argument("--beta-max", type=float, default=None, help="largest beta of the sweep (default 10)")
    c.add_argument("--sweep-points", type=int, default=None, help="points per sweep (default 25)")
    c.add_argument("--trials", type=int, default=None, help="trials, each with a fresh r* and subset (default 2000)")
    c.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    c.add_argument("--out", default=None, help="output folder (default runs/simulate/scoring)")
    c.set_defaults(func=_scoring)
