"""Plots and the HTML report of an experiment; the figures of a reward-model evaluation."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "build_html": ".html",
    "write_report": ".html",
    "render_all": ".plots",
    "write_eval_report": ".reward_eval",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
