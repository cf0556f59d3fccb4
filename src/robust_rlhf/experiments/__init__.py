"""The over-optimisation laboratory (`overopt`) and the theory checks (`theory`)."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "load_experiment_config": ".config",
    "run_experiment": ".overopt",
    "fit_gao": ".fits",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
