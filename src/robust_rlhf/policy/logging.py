"""Deprecated alias of `robust_rlhf.policy.tracking` (this name shadowed the standard library's
``logging``); it will be removed in 0.3."""

import warnings

from robust_rlhf.policy.tracking import *  # noqa: F401,F403
from robust_rlhf.policy.tracking import CHECKPOINT_DIR, LogConfig, Run, capture_rng, restore_rng  # noqa: F401

warnings.warn("robust_rlhf.policy.logging is deprecated; import robust_rlhf.policy.tracking instead",
              FutureWarning, stacklevel=2)
