"""verl custom reward functions that score responses with a running robust-rlhf reward server.

Read: the released verl 0.9.1 wheel (PyPI): ``verl/trainer/config/reward/reward.yaml``,
``verl/trainer/ppo/reward.py`` (``get_custom_reward_fn``, ``load_reward_manager``),
``verl/experimental/reward_loop/reward_manager/naive.py`` and ``reward_loop.py``. verl loads the
module named in ``reward.custom_reward_function.path`` (``pkg://robust_rlhf.integrations.verl_reward``
or this file's path; verl <= 0.8: top-level ``custom_reward_function.path``, which 0.9.1's
``main_ppo`` silently ignores) and calls the function named in ``reward.custom_reward_function.name``
(default ``compute_score``) as::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **kwargs)

once per response (``kwargs``: ``reward.custom_reward_function.reward_kwargs``, and
``reward_router_address`` / ``reward_model_tokenizer`` when a verl reward model is enabled; all
ignored here). The reward loop's managers (``naive``, ``dapo``, ``rate_limited``, ``remote``,
``gdpo``) run many such calls at once in threads, and the reward server's dynamic batching
gathers them into one backbone batch -- that is what "one request per batch" became (0.9.1's
reward loop has no ``batch`` manager). The result is a float, or a dict whose ``"score"`` is the
reward and whose other keys verl logs (`compute_score_with_std`). `compute_score_batch` is kept
for older verl releases with a ``batch`` manager (verl 0.7.1 and 0.8.0 have none: their reward
loop registers naive, dapo, gdpo, remote, rate_limited, like 0.9.1).

verl passes only the decoded response (``skip_special_tokens=True``) and the row's ``extra_info``
(plus ``num_turns`` / ``rollout_reward_scores``); the ``prompt`` column is not passed, so the
prompt is read from ``extra_info["prompt"]`` (copied there when preprocessing) -- a string, or
chat messages ``[{"role", "content"}, ...]`` as verl's own preprocessors write the top-level
``prompt`` column -- or ``extra_info["question"]``. Chat
messages become plain text by the one rule of `robust_rlhf.data.text.render_pair`, which the server
applies to every pair (so ``"Review the film" + "Wonderful"`` reads ``"Review the film Wonderful"``
through verl, OpenRLHF, TRL and ``rm score`` alike). Without a prompt the response is scored
alone (a warning is logged once).

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
from robust_rlhf.data.text import is_messages, render_prompt
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
    """The plain prompt text in verl's ``extra_info``: ``prompt`` (string or chat messages) or ``question``."""
    global _warned_no_prompt
    if isinstance(extra_info, dict):
        for key in ("prompt", "question"):
            value = extra_info.get(key)
            if isinstance(value, str):
                return value
            if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
                messages = list(value)  # verl stores lists as numpy object arrays in the parquet round trip
                if is_messages(messages):
                    return render_prompt(messages)
    if not _warned_no_prompt:
        _warned_no_prompt = True
        log.warning("verl extra_info has no 'prompt' (string or chat messages) or 'question': scoring "
                    "responses without their prompts; add the prompt to extra_info when preprocessing")
    return ""


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> float:
    """verl ``compute_score``: the server's aggregated reward of one response.

    Args:
        data_source: dataset name (unused: the reward model scores every source).
        solution_str: the decoded response.
        ground_truth: unused (a learned reward model needs no reference answer).
        extra_info: its ``prompt`` (string or chat messages) or ``question`` is scored as the prompt.
        **kwargs: further arguments some verl versions pass; ignored.

    Returns:
        The aggregated reward (float).

    Raises:
        RewardServerError: the server failed after retries or sent an invalid reply.
    """
    return get_client().score([_prompt_of(extra_info)], [solution_str]).rewards[0]


def compute_score_with_std(data_source: str, solution_str: str, ground_truth: Any,
                           extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """Like `compute_score`, returning ``{"score": reward, "reward_std": ensemble std,
    "reward_mean": ensemble mean}``: verl's reward managers put the extra keys in
    ``reward_extra_info`` and log them, so the ensemble's uncertainty on the policy's samples is tracked."""
    result = get_client().score([_prompt_of(extra_info)], [solution_str])
    heads = result.rewards_per_head[0]
    return {"score": result.rewards[0], "reward_std": result.reward_std[0],
            "reward_mean": sum(heads) / len(heads)}


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, **kwargs: Any) -> list[float]:
    """The ``BatchRewardManager`` form of verl releases older than 0.7 (``reward_model.reward_manager=batch``;
    verl 0.7.1, 0.8.0 and 0.9.1 have no ``batch`` manager): all responses of a batch in one request.

    Returns:
        One aggregated reward per response, in order.
    """
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    if len(infos) != len(solution_strs):
        raise UserError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
    return get_client().score([_prompt_of(i) for i in infos], list(solution_strs)).rewards
