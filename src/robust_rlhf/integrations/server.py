"""Reward server: a saved `RewardModel` behind HTTP, with dynamic batching (USER_NEEDS 2-4).

Built on aiohttp: a mature, actively maintained asyncio HTTP server and client in one package
(already a dependency), so one event loop can hold thousands of slow or idle connections while
the model runs in a worker thread. No web framework or ASGI server is needed on top.

The pieces, top to bottom:

* `RewardService` -- the synchronous part: ``(prompts, responses) -> RewardOutput`` (score with the
  reward model's own tokenizer, aggregate the K heads, check finiteness). Runs in the worker.
* `DynamicBatcher` (`robust_rlhf.integrations.batching`) -- gathers concurrent requests into backbone batches (up to
  ``max_batch_size`` texts, waiting at most ``max_wait_ms`` after the first one arrives), runs
  one batch at a time in a single worker thread (the event loop never blocks), and hands each
  request its slice. Its queue is bounded in texts: a full queue answers 503.
* `create_app` -- the HTTP contract: ``GET /health``, ``POST /score``, and ``POST /openrlhf``
  (alias ``/get_reward``), which speaks OpenRLHF's remote reward request/response as is
  (``--reward.remote_url``, formerly ``--remote_rm_url``), chat-templated queries included.
  Every error is a JSON ``{"error": message, "status": code}`` whose message names the field.
  Settings, limits and the validation of request fields live in
  `robust_rlhf.integrations.protocol` (`ServerConfig`, `ApiError`, `split_query`).
* `serve` (blocking, for the CLI) and `BackgroundServer` (a thread; tests, notebooks, benchmark).

The HTTP contract is documented in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from functools import partial
from typing import Any, Callable, Sequence

import torch
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from robust_rlhf import __version__
from robust_rlhf.aggregate import AggregatorConfig, aggregate, aggregator_params, normalize_heads
from robust_rlhf.data.text import render_pair
from robust_rlhf.errors import UserError
from robust_rlhf.integrations.batching import DynamicBatcher, QueueFull
from robust_rlhf.integrations.protocol import (
    ApiError,
    ServerConfig,
    _json_type,
    _reject_constant,
    _same_length,
    _string_list,
    _unique_keys,
    client_allowed,
    is_loopback,
    parse_networks,
    openrlhf_pairs,
)
from robust_rlhf.reward.output import RewardOutput

__all__ = [
    "BackgroundServer",
    "RewardService",
    "create_app",
    "load_service",
    "serve",
]

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[str], Sequence[str]], RewardOutput]


# ----------------------------------------------------------------------------- scoring (worker thread)


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
    from robust_rlhf.utils import resolve_device

    model = RewardModel.from_pretrained(model_dir, device=resolve_device(None if device is None else str(device)))
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


# ----------------------------------------------------------------------------- HTTP


BATCHER = web.AppKey("batcher", DynamicBatcher)
SERVICE = web.AppKey("service", RewardService)
CONFIG = web.AppKey("config", ServerConfig)
STARTED = web.AppKey("started", float)
COUNTS = web.AppKey("counts", dict)
NETWORKS = web.AppKey("networks", list)


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
    networks = request.app[NETWORKS]
    if networks and not client_allowed(request.remote, networks):
        raise ApiError(403, f"client {request.remote} is not in this server's --allow-client list")
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
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text; send a JSON object") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; send a flat JSON object") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_json_type(data)}")
    return data


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
    responses = _string_list(data, "responses", config, visible=True)
    assert prompts is not None and responses is not None
    _same_length("prompts", len(prompts), "responses", len(responses))
    pairs = [render_pair(p, r) for p, r in zip(prompts, responses)]  # the one rule (data/text.py)
    result = await _score(request, [p for p, _ in pairs], [r for _, r in pairs])
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
    try:
        plain_prompts, plain_responses, templated, cut = openrlhf_pairs(queries, prompts)
    except UserError as e:  # e.g. a chat turn with an unknown role
        raise ApiError(400, f"field 'query': {e}") from None
    stats = request.app[BATCHER].stats
    stats.templated += templated
    if any(cut):
        if not stats.prompts_cut:
            log.warning("a client cut a prompt from the left before generating (OpenRLHF: a prompt longer than "
                        "its length budget minus the generation budget); its response is scored without the "
                        "prompt's head. Counted in /health stats.prompts_cut and extra_logs.prompt_cut; warned once")
        stats.prompts_cut += sum(cut)
    result = await _score(request, plain_prompts, plain_responses)
    out = result.to_json()

    # extra_logs: OpenRLHF (0.11.2 trainer/ppo_utils/samples_generator.py) turns each key into a per-sample metric,
    # so the ensemble's uncertainty on the policy's own samples is logged beside the reward.
    return _json_response({"rewards": out["rewards"], "scores": out["rewards"],
                           "extra_logs": {"reward_std": out["reward_std"],
                                          "reward_mean": result.per_head.mean(dim=1).tolist(),
                                          "prompt_cut": [float(c) for c in cut]},
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
        "allow_clients": list(config.allow_clients),
        "stats": {"requests": s.requests, "items_scored": s.items, "batches": s.batches,
                  "mean_batch_size": s.items / s.batches if s.batches else 0.0,
                  "rejected_queue_full": s.rejected_queue_full, "scorer_errors": s.scorer_errors,
                  "busy_s": round(s.busy_s, 3), "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
                  "responses_by_class": {f"{k}xx": v for k, v in sorted(request.app[COUNTS].items())},
                  "truncated_texts": getattr(model, "truncated_count", None),
                  "templated_queries": s.templated,
                  "prompts_cut": s.prompts_cut,
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
    app[NETWORKS] = parse_networks(config.allow_clients)
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
    if not is_loopback(config.host) and config.token is None and not config.allow_clients:
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
