"""verl custom reward function that scores responses with a running robust-rlhf reward server.

verl loads a file named in ``custom_reward_function.path`` and calls the function named in
``custom_reward_function.name`` (default ``compute_score``) as::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)

(``NaiveRewardManager``, one call per response; it accepts a float, or a dict with ``"score"``
whose other keys it logs). ``BatchRewardManager`` instead calls
``compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=...)`` once
per batch and expects a list -- use `compute_score_batch` there: one HTTP request per batch,
which the server's dynamic batching prefers.

verl passes only the decoded response, so the prompt is read from ``extra_info["prompt"]``
(or ``extra_info["question"]``, as verl's example preprocessors store it); put the prompt text
there when you preprocess the data. Without it the response is scored alone.

Configuration (environment variables, read on first use):
    ROBUST_RLHF_URL      server base URL (required), e.g. http://127.0.0.1:8000
    ROBUST_RLHF_TOKEN    bearer token, if the server has one
    ROBUST_RLHF_TIMEOUT  seconds per attempt (default 60)
    ROBUST_RLHF_RETRIES  retries on 408/429/5xx/connection errors (default 5)

A failed call raises `RewardServerError` -- it never returns 0 in place of a reward.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Sequence

from robust_rlhf.errors import UserError
from robust_rlhf.integrations.client import RewardClient

__all__ = ["URL_ENV", "compute_score", "compute_score_batch", "compute_score_with_std", "get_client"]

log = logging.getLogger(__name__)

URL_ENV = "ROBUST_RLHF_URL"
TIMEOUT_ENV = "ROBUST_RLHF_TIMEOUT"
RETRIES_ENV = "ROBUST_RLHF_RETRIES"

_clients: dict[tuple, RewardClient] = {}
_lock = threading.Lock()
_warned_no_prompt = False


def get_client() -> RewardClient:
    """The `RewardClient` configured by the environment (one per configuration, reused)."""
    url = os.environ.get(URL_ENV)
    if not url:
        raise UserError(f"set {URL_ENV} to the reward server's URL (e.g. http://127.0.0.1:8000) "
                        f"to use robust_rlhf.integrations.verl_reward")
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, "60"))
        retries = int(os.environ.get(RETRIES_ENV, "5"))
    except ValueError as e:
        raise UserError(f"{TIMEOUT_ENV}/{RETRIES_ENV} must be numbers ({e})") from None
    key = (url, os.environ.get("ROBUST_RLHF_TOKEN"), timeout, retries)
    with _lock:
        if key not in _clients:
            _clients[key] = RewardClient(url, timeout=timeout, retries=retries)
        return _clients[key]


def _prompt_of(extra_info: Any) -> str:
    global _warned_no_prompt
    if isinstance(extra_info, dict):
        for key in ("prompt", "question"):
            value = extra_info.get(key)
            if isinstance(value, str):
                return value
    if not _warned_no_prompt:
        _warned_no_prompt = True
        log.warning("verl extra_info has no 'prompt' (or 'question') string: scoring responses "
                    "without their prompts; add the prompt text to extra_info when preprocessing")
    return ""


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> float:
    """verl ``compute_score``: the server's aggregated reward of one response.

    Args:
        data_source: dataset name (unused: the reward model scores every source).
        solution_str: the decoded response.
        ground_truth: unused (a learned reward model needs no reference answer).
        extra_info: its ``prompt`` (or ``question``) string is scored as the prompt.
        **kwargs: further arguments some verl versions pass; ignored.

    Returns:
        The aggregated reward (float).

    Raises:
        RewardServerError: the server failed after retries or sent an invalid reply.
    """
    return get_client().score([_prompt_of(extra_info)], [solution_str]).rewards[0]


def compute_score_with_std(data_source: str, solution_str: str, ground_truth: Any,
                           extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """Like `compute_score`, returning ``{"score": reward, "reward_std": ensemble std}`` so that
    verl (versions whose reward manager accepts dicts) logs the ensemble spread too."""
    result = get_client().score([_prompt_of(extra_info)], [solution_str])
    return {"score": result.rewards[0], "reward_std": result.reward_std[0]}


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, **kwargs: Any) -> list[float]:
    """verl ``BatchRewardManager`` form: all responses of a batch in one request.

    Returns:
        One aggregated reward per response, in order.
    """
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    if len(infos) != len(solution_strs):
        raise UserError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
    return get_client().score([_prompt_of(i) for i in infos], list(solution_strs)).rewards
