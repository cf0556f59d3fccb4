"""Reward server: a saved `RewardModel` behind HTTP, with dynamic batching (USER_NEEDS 2-4).

Built on aiohttp: a mature, actively maintained asyncio HTTP server and client in one package
(already a dependency), so one event loop can hold thousands of slow or idle connections while
the model runs in a worker thread. No web framework or ASGI server is needed on top.

The pieces, top to bottom:

* `RewardService` -- the synchronous part: ``(prompts, responses) -> RewardOutput`` (score with the
  reward model's own tokenizer, aggregate the K heads, check finiteness). Runs in the worker.
* `DynamicBatcher` -- gathers concurrent requests into backbone batches (up to
  ``max_batch_size`` texts, waiting at most ``max_wait_ms`` after the first one arrives), runs
  one batch at a time in a single worker thread (the event loop never blocks), and hands each
  request its slice. Its queue is bounded in texts: a full queue answers 503.
* `create_app` -- the HTTP contract: ``GET /health``, ``POST /score``, and ``POST /openrlhf``
  (alias ``/get_reward``), which speaks OpenRLHF's remote reward request/response as is
  (``--reward.remote_url``, formerly ``--remote_rm_url``), chat-templated queries included.
  Every error is a JSON ``{"error": message, "status": code}`` whose message names the field.
* `serve` (blocking, for the CLI) and `BackgroundServer` (a thread; tests, notebooks, benchmark).

The HTTP contract is documented in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import signal
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import torch
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from robust_rlhf import __version__
from robust_rlhf.aggregate import AggregatorConfig, aggregate, aggregator_params, normalize_heads
from robust_rlhf.errors import UserError
from robust_rlhf.reward.output import RewardOutput

__all__ = [
    "BackgroundServer",
    "DynamicBatcher",
    "RewardService",
    "ScoreBatch",
    "ServerConfig",
    "create_app",
    "load_service",
    "serve",
    "split_query",
]

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[str], Sequence[str]], RewardOutput]


# ----------------------------------------------------------------------------- config


@dataclass
class ServerConfig:
    """Network, batching and limit settings of the reward server (the CLI flags of `serve`)."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default so nothing outside this machine can reach it."""
    port: int = 8000
    """TCP port; 0 picks a free one (the bound URL is printed)."""
    token: str | None = None
    """Bearer token every request must carry (``Authorization: Bearer <token>``); None = no auth."""
    max_batch_size: int = 64
    """Most texts per backbone forward pass; concurrent requests are gathered up to this."""
    max_wait_ms: float = 5.0
    """Longest a request waits for others to fill its batch while the scorer is idle."""
    max_queue_items: int = 4096
    """Most texts waiting to be scored; a request that would exceed it gets 503 + Retry-After."""
    max_items_per_request: int = 1024
    """Most texts in one request (413 above it); clients split bigger jobs."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body in bytes (413 above it)."""
    max_text_chars: int = 100_000
    """Longest single prompt/response/query string in characters (413 above it)."""

    def validate(self) -> None:
        """Raise `UserError` for settings that cannot work."""
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_queue_items", "max_items_per_request", "max_body_bytes",
                     "max_text_chars"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise UserError(f"--max-wait-ms must be finite and >= 0, got {self.max_wait_ms}")
        if self.token is not None and not self.token.strip():
            if not is_loopback(self.host):
                raise UserError(f"the bearer token is empty but --host {self.host} is not loopback: give a "
                                f"non-empty token (ROBUST_RLHF_TOKEN or --token) or bind 127.0.0.1")
            self.token = None  # an empty token on loopback means "no token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- scoring (worker thread)


class ScoreBatch(RewardOutput):
    """DEPRECATED: the server now returns `RewardOutput` with ``reward`` set (``rewards`` here).

    Kept so ``ScoreBatch(rewards, reward_std, per_head, per_head_std)`` still works (with a
    `DeprecationWarning`); ``reward_std`` is recomputed from ``per_head`` (it always was its
    ensemble std).
    """

    def __init__(self, rewards: torch.Tensor, reward_std: torch.Tensor | None, per_head: torch.Tensor,
                 per_head_std: torch.Tensor | None = None) -> None:
        warnings.warn("robust_rlhf.integrations.server.ScoreBatch is deprecated; use "
                      "robust_rlhf.RewardOutput(per_head, per_head_std, reward=rewards)", DeprecationWarning, stacklevel=2)
        super().__init__(per_head, per_head_std, reward=rewards)

    @property
    def rewards(self) -> torch.Tensor:
        return self.reward  # type: ignore[return-value]

    @property
    def reward_std(self) -> torch.Tensor:
        return self.std


class RewardService:
    """Score (prompt, response) pairs and aggregate the K heads: the synchronous, thread-bound part.

    Args:
        score_fn: ``(prompts, responses) -> RewardOutput (B, K)``, e.g. ``RewardModel.score``.
        num_heads: K.
        aggregator: how the K heads become one reward.
        head_stats: ``(mean (K,), std (K,))`` when ``aggregator.normalize``; else None.
        gaussian: whether ``score_fn`` returns ``per_head_std`` (BRME heads).
        info: model description for ``/health``.
    """

    def __init__(self, score_fn: ScoreFn, num_heads: int, aggregator: AggregatorConfig,
                 head_stats: tuple[torch.Tensor, torch.Tensor] | None = None, gaussian: bool = False,
                 info: dict[str, Any] | None = None) -> None:
        aggregator.validate()
        self.score_fn = score_fn
        self.num_heads = num_heads
        self.aggregator = aggregator
        self.head_stats = head_stats
        self.gaussian = gaussian
        self.info = dict(info or {})
        self.model: Any = None
        """The underlying `RewardModel` when loaded from a folder (for truncation counts)."""
        # Fail at start-up, not on the first request: brme on point heads, normalize without stats.
        probe = RewardOutput(torch.zeros(1, num_heads), torch.ones(1, num_heads) if gaussian else None)
        aggregate(probe, aggregator, head_stats)

    def describe(self) -> dict[str, Any]:
        """Model and aggregator, as ``/health`` reports them."""
        return {**self.info, "num_heads": self.num_heads, "gaussian_heads": self.gaussian,
                "aggregator": {"name": self.aggregator.name, **aggregator_params(self.aggregator),
                               "normalize": self.aggregator.normalize}}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardOutput:
        """Score B pairs. Raises if the scorer returns the wrong shape."""
        if not prompts:
            return RewardOutput.empty(self.num_heads, self.gaussian)
        out = self.score_fn(list(prompts), list(responses))
        if not isinstance(out, RewardOutput):
            raise RuntimeError(f"scorer returned {type(out).__name__}, expected RewardOutput")
        if tuple(out.per_head.shape) != (len(prompts), self.num_heads):
            raise RuntimeError(f"scorer returned shape {tuple(out.per_head.shape)} for "
                               f"{len(prompts)} texts and {self.num_heads} heads")
        out = RewardOutput(out.per_head.detach().float().cpu(),
                           None if out.per_head_std is None else out.per_head_std.detach().float().cpu())
        rewards = aggregate(out, self.aggregator, self.head_stats).float()  # (B,)
        shown = normalize_heads(out, *self.head_stats) if self.head_stats is not None else out
        return shown.with_reward(rewards)


def load_service(model_dir: str, aggregator: AggregatorConfig, batch_size: int = 64,
                 device: str | None = None, warmup: bool = True) -> RewardService:
    """Load a saved reward model as a `RewardService` (texts are scored with its own tokenizer).

    Args:
        model_dir: folder written by ``rm train`` / ``save_pretrained``.
        aggregator: aggregation of the K heads; ``normalize`` uses the per-head validation
            statistics saved with the model.
        batch_size: texts per forward pass inside one gathered batch.
        device: torch device; None = CUDA if available, else CPU.
        warmup: score one text now, so that start-up problems surface before serving and the
            first request does not pay for lazy initialisation.

    Raises:
        UserError: not a reward model, normalize without saved statistics, an aggregator the
            heads cannot support.
    """
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.utils import default_device

    model = RewardModel.from_pretrained(model_dir, device=device or default_device())
    k = model.config.num_heads
    head_stats = None
    if aggregator.normalize:
        stats = model.config.head_stats or {}
        if not stats.get("mean") or not stats.get("std"):
            raise UserError(f"--normalize needs per-head statistics saved with the model "
                            f"(head_stats in {model_dir}/reward_config.json); this model has none -- "
                            f"train it with a validation set, or drop --normalize")
        head_stats = (torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32))
    info = {"model": str(model_dir), "backbone": model.backbone_source, "head_type": model.config.head_type,
            "max_length": model.config.max_length, "truncation": model.config.truncation,
            "device": str(model.device)}
    service = RewardService(partial(model.score, batch_size=batch_size), k, aggregator, head_stats,
                            gaussian=model.config.head_type == "gaussian", info=info)
    service.model = model
    if warmup:
        service(["warm-up"], [" text"])
        model.truncated_count = 0
    return service


# ----------------------------------------------------------------------------- dynamic batching


class QueueFull(Exception):
    """The batcher's queue has no room for a request."""


@dataclass
class _Job:
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future
    arrived: float

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class BatcherStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    rejected_queue_full: int = 0
    scorer_errors: int = 0
    busy_s: float = 0.0
    std_sum: float = 0.0
    """Sum of the ensemble std of every text scored (``/health`` reports the mean)."""
    templated: int = 0
    """Chat-templated OpenRLHF queries that were turned into plain text."""
    started: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gather concurrent requests into backbone batches; score them one batch at a time in a thread.

    While the worker scores batch n, requests keep arriving and wait in the queue; when it is
    done they form batch n + 1 at once. When the worker is idle, the first request waits at most
    ``max_wait_s`` for company (or until ``max_batch_size`` texts are waiting). A request larger
    than ``max_batch_size`` forms a batch of its own (the service chunks it). Requests are never
    split across batches, so each gets one consistent answer.

    Args:
        service: the synchronous scorer.
        max_batch_size: texts per gathered batch (soft for a single large request).
        max_wait_s: longest wait for more requests when idle.
        max_queue_items: most texts waiting; `submit` raises `QueueFull` beyond it.
    """

    def __init__(self, service: Callable[[list[str], list[str]], RewardOutput], max_batch_size: int = 64,
                 max_wait_s: float = 0.005, max_queue_items: int = 4096) -> None:
        self.service = service
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.stats = BatcherStats()
        self._pending: deque[_Job] = deque()
        self._pending_items = 0
        self._in_flight_items = 0
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        """Texts waiting to be scored (not counting the batch being scored)."""
        return self._pending_items

    @property
    def in_flight(self) -> int:
        """Texts in the batch being scored now."""
        return self._in_flight_items

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scorer")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reward-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._pending_items = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, prompts: list[str], responses: list[str]) -> RewardOutput:
        """Queue one request's texts and wait for its scores.

        Raises:
            QueueFull: the queue has no room for ``len(prompts)`` more texts.
            Exception: whatever the scorer raised for this request.
        """
        if self._task is None or self._wakeup is None:
            raise RuntimeError("batcher is not started")
        n = len(prompts)
        if self._pending_items + n > self.max_queue_items:
            self.stats.rejected_queue_full += 1
            raise QueueFull(f"queue full: {self._pending_items} texts waiting, the limit is "
                            f"{self.max_queue_items} (--max-queue); retry later")
        loop = asyncio.get_running_loop()
        job = _Job(prompts, responses, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_items += n
        self.stats.requests += 1
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[_Job]:
        jobs: list[_Job] = []
        total = 0
        while self._pending and (total == 0 or total + len(self._pending[0]) <= self.max_batch_size):
            job = self._pending.popleft()
            self._pending_items -= len(job)
            if job.future.done():  # the client went away; nothing to score
                continue
            jobs.append(job)
            total += len(job)
        return jobs

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_items < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = self._take_batch()
            if not jobs:
                continue
            try:
                await self._score(jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("server is shutting down"))
                raise
            except Exception as e:  # never let the loop die: fail these jobs, keep serving
                log.exception("batcher error")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self._in_flight_items = 0

    async def _score(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        prompts = [p for job in jobs for p in job.prompts]
        responses = [r for job in jobs for r in job.responses]
        self._in_flight_items = len(prompts)
        t0 = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, self.service, prompts, responses)
            groups = [(jobs, result)]
        except Exception as e:
            self.stats.scorer_errors += 1
            if len(jobs) == 1:
                log.warning("scoring failed: %s", e)
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(e)
                return
            # One bad request must not fail its neighbours: score each request on its own.
            log.warning("scoring a batch of %d requests failed (%s); retrying them one by one", len(jobs), e)
            groups = []
            for job in jobs:
                try:
                    groups.append(([job], await loop.run_in_executor(self._executor, self.service,
                                                                     job.prompts, job.responses)))
                except Exception as e_job:
                    if not job.future.done():
                        job.future.set_exception(e_job)
        finally:
            self.stats.busy_s += time.monotonic() - t0
        self.stats.batches += 1
        for group, res in groups:
            start = 0
            for job in group:
                if not job.future.done():
                    job.future.set_result(res.slice(start, start + len(job)))
                start += len(job)
                self.stats.items += len(job)
            self.stats.std_sum += float(res.std.double().sum())


# ----------------------------------------------------------------------------- HTTP


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


BATCHER = web.AppKey("batcher", DynamicBatcher)
SERVICE = web.AppKey("service", RewardService)
CONFIG = web.AppKey("config", ServerConfig)
STARTED = web.AppKey("started", float)
COUNTS = web.AppKey("counts", dict)

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _json_response(payload: dict, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # allow_nan=False: a NaN must never reach a client as a number (it is not JSON either).
    return web.json_response(payload, status=status, headers=headers,
                             dumps=partial(json.dumps, allow_nan=False))


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json_response({"error": message, "status": status}, status=status, headers=headers)


@web.middleware
async def _error_middleware(request: web.Request, handler) -> web.StreamResponse:
    counts = request.app[COUNTS]
    try:
        response = await handler(request)
    except ApiError as e:
        response = _error_response(e.status, e.message, e.headers)
    except web.HTTPException as e:  # 404/405 from the router, 413 from aiohttp's body reader
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 413:
            message = (f"request body is too large; the limit is {request.app[CONFIG].max_body_bytes} "
                       f"bytes (--max-body-mb)")
        elif e.status == 404:
            message = f"no endpoint {request.path}; endpoints: GET /health, POST /score, POST /openrlhf"
        elif e.status == 405:
            message = f"method {request.method} is not allowed on {request.path}; allowed: {e.headers.get('Allow', '')}"
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
        response = _error_response(e.status, message, headers)
    except Exception as e:  # a bug: answer 500, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        response = _error_response(500, f"internal server error: {type(e).__name__}: {e}")
    counts[response.status // 100] = counts.get(response.status // 100, 0) + 1
    return response


@web.middleware
async def _auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    token = request.app[CONFIG].token
    if token is not None:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            raise ApiError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                "(or ?token=<token> for clients that cannot set headers)",
                           {"WWW-Authenticate": 'Bearer realm="robust-rlhf"'})
    return await handler(request)


class _AccessLogger(AbstractAccessLogger):
    """Method, path (never the query string, which may hold a token), status, time."""

    def log(self, request, response, time):  # noqa: A002 - aiohttp's signature
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, 1000 * time)


async def _read_json_object(request: web.Request) -> dict:
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is {request.content_length} bytes; the limit is {limit} "
                            f"bytes (--max-body-mb)")
    body = await request.read()
    if not body:
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text; send a JSON object") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; send a flat JSON object") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_json_type(data)}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use null or a number)")


def _string_list(data: dict, name: str, config: ServerConfig, required: bool = True) -> list[str] | None:
    if name not in data or (not required and data[name] is None):
        if required:
            raise ApiError(400, f"missing field '{name}' (a list of strings)")
        return None
    value = data[name]
    if not isinstance(value, list):
        raise ApiError(400, f"field '{name}' must be a list of strings, got {_json_type(value)}")
    if len(value) > config.max_items_per_request:
        raise ApiError(413, f"field '{name}' has {len(value)} items; this server accepts at most "
                            f"{config.max_items_per_request} per request (--max-items); split the request")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(400, f"field '{name}' item {i} must be a string, got {_json_type(item)}")
        if len(item) > config.max_text_chars:
            raise ApiError(413, f"field '{name}' item {i} has {len(item)} characters; the limit is "
                                f"{config.max_text_chars} (--max-text-chars)")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise ApiError(400, f"field '{name}' item {i} is not valid Unicode (lone surrogate)") from None
    return value


def _same_length(a: str, la: int, b: str, lb: int) -> None:
    if la != lb:
        raise ApiError(400, f"fields '{a}' ({la} items) and '{b}' ({lb} items) must have the same length")


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """OpenRLHF sends ``query`` = prompt + response text; split it with the request's prompt.

    If the query does not start with the prompt (e.g. the policy's tokenizer re-decoded it
    differently), the whole query is returned as the response with an empty prompt (then
    `openrlhf_pairs` finds the response as the query's last assistant turn, if templated).
    """
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt):]
    return "", query


def openrlhf_pairs(queries: Sequence[str], prompts: Sequence[str] | None) -> tuple[list[str], list[str], int]:
    """Plain (prompts, responses) of OpenRLHF's ``query``/``prompts``, and how many were templated.

    The query is split with its prompt (`split_query`); chat-templated text (special tokens and
    role markers, e.g. SmolLM2's ChatML) becomes the plain prompt and response the reward model
    was trained on (`robust_rlhf.integrations.chat.untemplate`), so that truncation can keep the
    response and a templated query scores like its plain twin.
    """
    from robust_rlhf.integrations.chat import untemplate_many

    pairs = [split_query(q, prompts[i] if prompts is not None else None) for i, q in enumerate(queries)]
    return untemplate_many([p for p, _ in pairs], [r for _, r in pairs])


async def _score(request: web.Request, prompts: list[str], responses: list[str]) -> RewardOutput:
    batcher = request.app[BATCHER]
    if not prompts:
        service = request.app[SERVICE]
        return RewardOutput.empty(service.num_heads, service.gaussian)
    try:
        result = await batcher.submit(prompts, responses)
    except QueueFull as e:
        raise ApiError(503, str(e), {"Retry-After": "1"}) from None
    except UserError as e:  # e.g. truncation=error and a response longer than max_length
        raise ApiError(422, f"cannot score this request: {e}") from None
    except Exception as e:
        raise ApiError(500, f"scoring failed: {type(e).__name__}: {e}") from None
    bad = result.nonfinite_rows()
    if bad:
        raise ApiError(500, f"the reward model produced non-finite rewards for items {bad[:20]}; "
                            f"refusing to return them")
    return result


_SCORE_FIELDS = ("prompts", "responses")


async def handle_score(request: web.Request) -> web.Response:
    """``POST /score`` ``{"prompts": [...], "responses": [...]}`` -> rewards, reward_std, per head."""
    config = request.app[CONFIG]
    data = await _read_json_object(request)
    unknown = sorted(set(data) - set(_SCORE_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field '{unknown[0]}'; valid fields: {', '.join(_SCORE_FIELDS)}")
    prompts = _string_list(data, "prompts", config)
    responses = _string_list(data, "responses", config)
    assert prompts is not None and responses is not None
    _same_length("prompts", len(prompts), "responses", len(responses))
    result = await _score(request, prompts, responses)
    return _json_response(result.to_json())


async def handle_openrlhf(request: web.Request) -> web.Response:
    """OpenRLHF remote reward: ``{"query": [...], "prompts": [...], "labels": [...]}``.

    Answers ``{"rewards", "scores", "extra_logs": {"reward_std", "reward_mean"}, "rewards_per_head"}``;
    other request fields (``labels``, ``datasources``, ...) are accepted and ignored.
    """
    config = request.app[CONFIG]
    data = await _read_json_object(request)
    queries = _string_list(data, "query", config)
    prompts = _string_list(data, "prompts", config, required=False)
    assert queries is not None
    if prompts is not None:
        _same_length("query", len(queries), "prompts", len(prompts))
    plain_prompts, plain_responses, templated = openrlhf_pairs(queries, prompts)
    request.app[BATCHER].stats.templated += templated
    result = await _score(request, plain_prompts, plain_responses)
    out = result.to_json()
    # extra_logs: OpenRLHF (0.11.2 trainer/ppo_utils/samples_generator.py) turns each key into a per-sample metric,
    # so the ensemble's uncertainty on the policy's own samples is logged beside the reward.
    return _json_response({"rewards": out["rewards"], "scores": out["rewards"],
                           "extra_logs": {"reward_std": out["reward_std"],
                                          "reward_mean": result.per_head.mean(dim=1).tolist()},
                           "rewards_per_head": out["rewards_per_head"]})


async def handle_health(request: web.Request) -> web.Response:
    """``GET /health``: model, K, aggregator, queue depth, counters."""
    batcher, service, config = request.app[BATCHER], request.app[SERVICE], request.app[CONFIG]
    s = batcher.stats
    model = service.model
    return _json_response({
        "status": "ok",
        "version": __version__,
        **service.describe(),
        "queue_depth": batcher.queue_depth,
        "in_flight": batcher.in_flight,
        "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                     "max_queue_items": config.max_queue_items},
        "limits": {"max_items_per_request": config.max_items_per_request,
                   "max_body_bytes": config.max_body_bytes, "max_text_chars": config.max_text_chars},
        "auth": config.token is not None,
        "stats": {"requests": s.requests, "items_scored": s.items, "batches": s.batches,
                  "mean_batch_size": s.items / s.batches if s.batches else 0.0,
                  "rejected_queue_full": s.rejected_queue_full, "scorer_errors": s.scorer_errors,
                  "busy_s": round(s.busy_s, 3), "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
                  "responses_by_class": {f"{k}xx": v for k, v in sorted(request.app[COUNTS].items())},
                  "truncated_texts": getattr(model, "truncated_count", None),
                  "templated_queries": s.templated,
                  "mean_reward_std": s.std_sum / s.items if s.items else None},
    })


def create_app(service: RewardService, config: ServerConfig | None = None) -> web.Application:
    """The aiohttp application: routes, auth, JSON errors, and the batcher's lifecycle.

    Args:
        service: scorer + aggregator (see `load_service`).
        config: batching, limits and auth (host/port are used by `serve`, not here).
    """
    config = config or ServerConfig()
    config.validate()
    # aiohttp's own body limit is a backstop (chunked bodies); _read_json_object checks first.
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[_error_middleware, _auth_middleware])
    app[CONFIG] = config
    app[SERVICE] = service
    app[BATCHER] = DynamicBatcher(service, config.max_batch_size, config.max_wait_ms / 1000.0,
                                  config.max_queue_items)
    app[STARTED] = time.monotonic()
    app[COUNTS] = {}
    app.router.add_get("/health", handle_health)
    app.router.add_post("/score", handle_score)
    app.router.add_post("/openrlhf", handle_openrlhf)
    app.router.add_post("/get_reward", handle_openrlhf)  # the path OpenRLHF's examples use

    async def _start(app: web.Application) -> None:
        await app[BATCHER].start()

    async def _stop(app: web.Application) -> None:
        await app[BATCHER].stop()

    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


# ----------------------------------------------------------------------------- running


def _bound_url(runner: web.AppRunner, host: str) -> str:
    port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def warn_if_exposed(config: ServerConfig) -> None:
    if not is_loopback(config.host) and config.token is None:
        log.warning("serving on %s WITHOUT a token: anyone who can reach this port can query the "
                    "reward model; set ROBUST_RLHF_TOKEN or --token", config.host)


def serve(app: web.Application, config: ServerConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Run ``app`` until SIGINT/SIGTERM (blocking). ``on_ready(url)`` is called once bound."""
    warn_if_exposed(config)

    async def main() -> None:
        runner = web.AppRunner(app, access_log_class=_AccessLogger, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, backlog=1024)
            try:
                await site.start()
            except OSError as e:
                raise UserError(f"cannot bind {config.host}:{config.port}: {e.strerror or e}") from None
            url = _bound_url(runner, config.host)
            if on_ready is not None:
                on_ready(url)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
                    pass
            await stop.wait()
            log.info("shutting down")
        finally:
            await runner.cleanup()

    asyncio.run(main())


class BackgroundServer:
    """Run an app on its own event loop in a daemon thread (tests, notebooks, the benchmark).

    Usage::

        with BackgroundServer(create_app(service), port=0) as srv:
            RewardClient(srv.url).score(prompts, responses)
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._main, name="reward-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("reward server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            loop.run_until_complete(site.start())
            self.url = _bound_url(self._runner, self.host)
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
