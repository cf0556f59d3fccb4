"""Theory checks in closed form and by Monte Carlo, in numpy (no model, no GPU): one import for
the three simulations behind `robust-rlhf simulate ...` (docs/theory.md).

The code lives in one module per concern; this module re-exports their public names:

* `robust_rlhf.experiments.theory_common` -- r*, Sigma, pi0 from vector files or seeded draws.
* `robust_rlhf.experiments.bandit` -- **bandit**: the linear bandit of seed 002 §3
  (Definitions 3.1/3.2, Theorem 3.3): pi1 (L2 ball) vs pi2 (Sigma-weighted ball).
* `robust_rlhf.experiments.kl_policies` -- **softmax**: KL-regularised policies over K actions
  and seed 002 Theorem 3.6, both as printed (pi ∝ pi0 exp(R^/(beta sigma^2))) and exact
  (pi = pi0 exp((R^ - mu)/(beta sigma^2) - 1), mu by 1-D root finding).
* `robust_rlhf.experiments.scoring` -- **scoring**: seed 000's over- vs under-scoring.
* `robust_rlhf.report.theory_plots` -- the PNGs; `robust_rlhf.cli.simulate` writes the files.
"""

from __future__ import annotations

from robust_rlhf.experiments.bandit import (
    BANDIT_PRESETS,
    BanditConfig,
    run_bandit,
    underperform_probabilities,
    vanilla_policy,
    variance_aware_policy,
)
from robust_rlhf.experiments.kl_policies import (
    SoftmaxConfig,
    exact_variance_aware_policy,
    gibbs_policy,
    kl_to_reference,
    paper_variance_aware_policy,
    run_softmax,
    solve_beta_for_kl,
    variance_weighted_objective,
)
from robust_rlhf.experiments.scoring import ScoringConfig, random_subset_mask, run_scoring, scoring_losses
from robust_rlhf.experiments.theory_common import (
    _streams,
    check_epsilon,
    check_pi0,
    check_var_range,
    check_variances,
    read_vector_file,
)

__all__ = [
    "BANDIT_PRESETS",
    "BanditConfig",
    "ScoringConfig",
    "SoftmaxConfig",
    "check_epsilon",
    "check_pi0",
    "check_var_range",
    "check_variances",
    "exact_variance_aware_policy",
    "gibbs_policy",
    "kl_to_reference",
    "paper_variance_aware_policy",
    "random_subset_mask",
    "read_vector_file",
    "run_bandit",
    "run_scoring",
    "run_softmax",
    "scoring_losses",
    "solve_beta_for_kl",
    "underperform_probabilities",
    "vanilla_policy",
    "variance_aware_policy",
    "variance_weighted_objective",
]
