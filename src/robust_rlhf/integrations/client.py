"""`RewardClient`: a small synchronous client for the reward server (stdlib only).

It never turns a failure into a reward (USER_NEEDS 2): it retries with exponential backoff on
408, 429, 5xx and connection errors/timeouts (scoring is idempotent, so a retry is safe),
honours ``Retry-After``, and raises `RewardServerError` when the retries are spent or the server
answers another 4xx. It does not trust the reply either (USER_NEEDS 4): the number of rewards
must match the number of texts and every value must be a finite number.

Usage::

    client = RewardClient("http://127.0.0.1:8000", token=None, timeout=60, retries=5)
    result = client.score(["Q: 2+2?"], [" 4"])
    result.rewards, result.reward_std, result.rewards_per_head
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

from robust_rlhf.errors import UserError

__all__ = ["RewardClient", "RewardServerError", "ScoreResult", "TOKEN_ENV"]

log = logging.getLogger(__name__)

TOKEN_ENV = "ROBUST_RLHF_TOKEN"
"""Environment variable read for the bearer token when none is given."""


class RewardServerError(UserError):
    """The reward server could not be reached, refused the request, or sent an invalid reply."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ScoreResult:
    """Scores of B texts from ``POST /score``.

    Attributes:
        rewards: (B,) aggregated reward (the server's ``--aggregator``).
        reward_std: (B,) ensemble std over the K heads.
        rewards_per_head: (B, K) head rewards.
        reward_std_per_head: (B, K) Gaussian (BRME) head stds, or None.
    """

    rewards: list[float]
    reward_std: list[float]
    rewards_per_head: list[list[float]]
    reward_std_per_head: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    def to_output(self):  # -> robust_rlhf.RewardOutput (torch imported only here)
        """The same scores as the package's one result container, `robust_rlhf.RewardOutput`
        (tensors; ``reward`` = ``rewards``). This client stays stdlib-only, so `score` keeps
        returning plain lists."""
        from robust_rlhf.reward.output import RewardOutput

        reply = {"rewards": self.rewards, "rewards_per_head": self.rewards_per_head}
        if self.reward_std_per_head is not None:
            reply["reward_std_per_head"] = self.reward_std_per_head
        return RewardOutput.from_json(reply)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_vector(reply: dict, key: str, n: int, where: str) -> list[float]:
    values = reply.get(key)
    if not isinstance(values, list):
        raise RewardServerError(f"{where}: reply has no list '{key}'")
    if len(values) != n:
        raise RewardServerError(f"{where}: reply has {len(values)} '{key}' values for {n} texts")
    for i, v in enumerate(values):
        if not _is_number(v):
            raise RewardServerError(f"{where}: reply '{key}'[{i}] is {v!r}, not a finite number")
    return [float(v) for v in values]


def _check_matrix(reply: dict, key: str, n: int, where: str) -> list[list[float]]:
    rows = reply.get(key)
    if not isinstance(rows, list) or len(rows) != n:
        got = f"{len(rows)} rows" if isinstance(rows, list) else "none"
        raise RewardServerError(f"{where}: reply '{key}' must have {n} rows, got {got}")
    k = None
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or (k is not None and len(row) != k) or not row:
            raise RewardServerError(f"{where}: reply '{key}'[{i}] is not a list of the same length as the others")
        k = len(row)
        for j, v in enumerate(row):
            if not _is_number(v):
                raise RewardServerError(f"{where}: reply '{key}'[{i}][{j}] is {v!r}, not a finite number")
        out.append([float(v) for v in row])
    return out


class RewardClient:
    """Synchronous client of a robust-rlhf reward server.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000``.
        token: bearer token; None reads ``ROBUST_RLHF_TOKEN`` (unset = no auth header; empty = an error).
        timeout: seconds per HTTP attempt.
        retries: extra attempts after the first on 408/429/5xx/connection errors (0 = none).
        backoff: first retry delay in seconds; doubles each attempt (with jitter), capped at
            ``max_backoff``. A ``Retry-After`` header is honoured up to the same cap.
        max_backoff: longest delay between attempts.
        max_items: texts per request; longer inputs are sent in several requests (keep it at or
            below the server's ``--max-items``).
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 10.0, max_items: int = 1024) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"reward server URL must look like http://host:port, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0 or max_items < 1:
            raise UserError("RewardClient: timeout and max_items must be > 0; retries, backoff and "
                            "max_backoff >= 0")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if token is not None and not token.strip():
            raise UserError(f"the bearer token is empty (token= or {TOKEN_ENV}): give the server's token, or unset "
                            f"{TOKEN_ENV} for a server without one")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_items = max_items

    # ---- public API ---------------------------------------------------------------------
    def health(self) -> dict:
        """``GET /health``: model info, K, aggregator, queue depth."""
        reply = self._request("GET", "/health")
        if reply.get("status") != "ok":
            raise RewardServerError(f"{self.url}/health: unexpected reply {reply!r}")
        return reply

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoreResult:
        """Score (prompt, response) pairs; the server concatenates and scores each pair.

        Raises:
            RewardServerError: unreachable after the retries, a 4xx, or an invalid reply.
            UserError: inputs that are not equal-length sequences of strings.
        """
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise UserError(f"{len(prompts)} prompts but {len(responses)} responses")
        for name, texts in (("prompts", prompts), ("responses", responses)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise UserError(f"{name}[{i}] must be a string, got {type(t).__name__}")
        parts = [self._score_chunk(prompts[i:i + self.max_items], responses[i:i + self.max_items])
                 for i in range(0, len(prompts), self.max_items)]
        if not parts:
            return ScoreResult([], [], [], None)
        std_rows = [p.reward_std_per_head for p in parts]
        return ScoreResult(
            rewards=[x for p in parts for x in p.rewards],
            reward_std=[x for p in parts for x in p.reward_std],
            rewards_per_head=[row for p in parts for row in p.rewards_per_head],
            reward_std_per_head=None if any(s is None for s in std_rows) else [r for s in std_rows for r in s],  # type: ignore[union-attr]
        )

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Only the aggregated rewards of `score` (a TRL-style reward function body)."""
        return self.score(prompts, responses).rewards

    # ---- internals ----------------------------------------------------------------------
    def _score_chunk(self, prompts: list[str], responses: list[str]) -> ScoreResult:
        n = len(prompts)
        where = f"{self.url}/score"
        reply = self._request("POST", "/score", {"prompts": prompts, "responses": responses})
        rewards = _check_vector(reply, "rewards", n, where)
        std = _check_vector(reply, "reward_std", n, where)
        per_head = _check_matrix(reply, "rewards_per_head", n, where)
        std_per_head = _check_matrix(reply, "reward_std_per_head", n, where) if "reward_std_per_head" in reply else None
        return ScoreResult(rewards, std, per_head, std_per_head)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        url = self.url + path
        data = None if payload is None else json.dumps(payload, allow_nan=False).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempts = self.retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            retry_after = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
                try:
                    reply = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise RewardServerError(f"{url}: reply is not JSON ({e})") from None
                if not isinstance(reply, dict):
                    raise RewardServerError(f"{url}: reply is not a JSON object")
                return reply
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code in (408, 429) or 500 <= e.code < 600:
                    last = f"HTTP {e.code}: {message}"
                    retry_after = e.headers.get("Retry-After") if e.headers else None
                else:  # 400, 401, 404, 413, ...: retrying cannot help
                    raise RewardServerError(f"{url}: HTTP {e.code}: {message}", status=e.code) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                    http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", None) or e
                last = f"{type(e).__name__}: {reason}"
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                log.warning("reward server %s: %s; retry %d/%d in %.2fs", url, last, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise RewardServerError(f"{url}: failed after {attempts} attempt(s); last error: {last}")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status is what matters
        return e.reason or ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return parsed["error"]
    except json.JSONDecodeError:
        pass
    return body[:500] or str(e.reason)
