"""Reward server, client and verl function: HTTP contract, batching, limits, failures, auth.

Most tests use a hand-computable fake scorer; head k of text (p, r) scores

    r_k = len(p) + (k + 1) * len(r.lstrip(" ")) / 10        (K = 3)

(the space the one rendering rule puts at a glued join, ``"ab" + "xyz"`` -> ``"ab" + " xyz"``, is not
counted: these tests are about the HTTP contract; the joining rule has its own tests), so for p = "ab", r = "xyz": heads [2.3, 2.6, 2.9], mean 2.6, min 2.3, unbiased std
sqrt(((-.3)^2 + 0 + .3^2) / 2) = 0.3, lcb(beta=1) = 2.3, uwo(lam=1) = 2.6 - 0.09 = 2.51.
One test runs a real MiniLM reward model and compares with in-process scoring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from aiohttp import web

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.errors import UserError
from robust_rlhf.integrations.client import RewardClient, RewardServerError
from robust_rlhf.integrations.protocol import ServerConfig, split_query
from robust_rlhf.integrations.server import BackgroundServer, RewardService, create_app, load_service
from robust_rlhf.reward.output import RewardOutput

K = 3


def fake_score(prompts, responses):
    rows = [[len(p) + (k + 1) * len(r.lstrip(" ")) / 10 for k in range(K)] for p, r in zip(prompts, responses)]
    return RewardOutput(torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), K))  # (B, K)


def make_service(score_fn=fake_score, aggregator=None, **kw):
    return RewardService(score_fn, K, aggregator or AggregatorConfig("mean"), info={"model": "fake"}, **kw)


def start(service=None, **config):
    return BackgroundServer(create_app(service or make_service(), ServerConfig(**config))).start()


def http(url, body=None, method=None, headers=None, timeout=30):
    """(status, parsed JSON reply, headers); ``body`` may be bytes or a JSON-able object."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


@pytest.fixture(scope="module")
def server():
    srv = start(max_items_per_request=8, max_text_chars=1000, max_body_bytes=64 * 1024)
    yield srv
    srv.stop()


# ----------------------------------------------------------------------------- contract


def test_score_values_worked_by_hand(server):
    status, reply, _ = http(server.url + "/score", {"prompts": ["ab", ""], "responses": ["xyz", "0123456789"]})
    assert status == 200
    assert reply["rewards"] == pytest.approx([2.6, 2.0])           # mean: 2 + .2*3 ; 0 + .2*10
    assert reply["reward_std"] == pytest.approx([0.3, 1.0])        # len(r)/10
    torch.testing.assert_close(torch.tensor(reply["rewards_per_head"]), torch.tensor([[2.3, 2.6, 2.9], [1.0, 2.0, 3.0]]))
    assert "reward_std_per_head" not in reply                     # point-estimate heads


@pytest.mark.parametrize("agg, expected", [
    (AggregatorConfig("min"), 2.3),
    (AggregatorConfig("lcb", beta=1.0), 2.3),
    (AggregatorConfig("uwo", lam=1.0), 2.51),
    (AggregatorConfig("median"), 2.6),
])
def test_aggregator_is_applied(agg, expected):
    with BackgroundServer(create_app(make_service(aggregator=agg))) as srv:
        result = RewardClient(srv.url).score(["ab"], ["xyz"])
        assert result.rewards == pytest.approx([expected])
        assert result.reward_std == pytest.approx([0.3])
        assert RewardClient(srv.url).health()["aggregator"]["name"] == agg.name


def test_normalize_uses_head_stats_and_reports_normalised_heads():
    # heads [2.3, 2.6, 2.9] standardised by mean (2, 2, 2), std (0.1, 0.2, 0.3) -> [3, 3, 3]
    stats = (torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0.1, 0.2, 0.3]))
    service = make_service(aggregator=AggregatorConfig("min", normalize=True), head_stats=stats)
    with BackgroundServer(create_app(service)) as srv:
        r = RewardClient(srv.url).score(["ab"], ["xyz"])
    assert r.rewards_per_head == [pytest.approx([3.0, 3.0, 3.0])]
    assert r.rewards == pytest.approx([3.0]) and r.reward_std == pytest.approx([0.0], abs=1e-5)


def test_empty_request_returns_empty_lists(server):
    status, reply, _ = http(server.url + "/score", {"prompts": [], "responses": []})
    assert status == 200 and reply == {"rewards": [], "reward_std": [], "rewards_per_head": []}


def test_health_reports_model_heads_aggregator_and_queue(server):
    status, h, _ = http(server.url + "/health")
    assert status == 200 and h["status"] == "ok"
    assert h["num_heads"] == K and h["model"] == "fake"
    assert h["aggregator"] == {"name": "mean", "normalize": False}
    assert h["queue_depth"] == 0 and h["auth"] is False
    assert h["limits"]["max_items_per_request"] == 8


def test_openrlhf_client_request_exactly_as_sent():
    """OpenRLHF <= 0.9's `openrlhf/utils/remote_rm_utils.py::request_api_wrapper` posted
    {"query", "prompts", "labels"} with requests and read response.json()["rewards"]. The current
    client (released 0.11.2 wheel, openrlhf/utils/agent.py: aiohttp, one query per request, round
    robin over the URLs) is held in tests/test_integrations_protocol.py."""
    requests = pytest.importorskip("requests")
    with BackgroundServer(create_app(make_service())) as srv:
        queries = ["abxyz", "<s>ab 0123456789"]   # the 2nd was re-decoded with a BOS: no prompt prefix
        data = {"query": queries, "prompts": ["ab", "ab"], "labels": [None, "4"]}
        for path in ("/openrlhf", "/get_reward"):
            response = requests.post(url=srv.url + path, json=data, headers={"Content-Type": "application/json"},
                                     timeout=180)
            response.raise_for_status()
            response = response.json()
            assert "rewards" in response
            # "abxyz" -> ("ab", "xyz") -> 2.6 ; the 2nd is scored whole with prompt "" -> 0.2 * 16
            assert response["rewards"] == pytest.approx([2.6, 3.2])
            assert response["scores"] == response["rewards"]
            assert response["extra_logs"]["reward_std"] == pytest.approx([0.3, 1.6])
            assert response["extra_logs"]["reward_mean"] == pytest.approx([2.6, 3.2])
            assert len(response["rewards_per_head"]) == 2
        # Older OpenRLHF sends only {"query": ...}
        response = requests.post(url=srv.url + "/openrlhf", json={"query": ["abxyz"]}, timeout=180).json()
        assert response["rewards"] == pytest.approx([0.2 * 5])


def test_split_query():
    assert split_query("Q: hi A: yo", "Q: hi") == ("Q: hi", " A: yo")
    assert split_query("<s>Q: hi A: yo", "Q: hi") == ("", "<s>Q: hi A: yo")
    assert split_query("abc", None) == ("", "abc")


# ----------------------------------------------------------------------------- bad input


BAD_REQUESTS = [
    # (path, body (bytes or JSON-able), expected status, words the message must contain)
    ("/score", b"not json", 400, ["not valid JSON"]),
    ("/score", b"", 400, ["empty"]),
    ("/score", b"\xff\xfe\x00garbage", 400, ["UTF-8"]),
    ("/score", [1, 2], 400, ["JSON object", "array"]),
    ("/score", b"[" * 20000 + b"]" * 20000, 400, ["JSON"]),
    ("/score", {}, 400, ["'prompts'"]),
    ("/score", {"prompts": ["a"]}, 400, ["'responses'"]),
    ("/score", {"prompts": "a", "responses": ["b"]}, 400, ["'prompts'", "list of strings", "a string"]),
    ("/score", {"prompts": {"a": 1}, "responses": ["b"]}, 400, ["'prompts'", "an object"]),
    ("/score", {"prompts": [1], "responses": ["b"]}, 400, ["'prompts' item 0", "a number"]),
    ("/score", {"prompts": ["a", "b"], "responses": ["c", None]}, 400, ["'responses' item 1", "null"]),
    ("/score", {"prompts": ["a", "b"], "responses": ["c"]}, 400, ["'prompts'", "'responses'", "same length"]),
    ("/score", {"prompts": ["a"], "responses": ["b"], "respones": []}, 400, ["'respones'", "valid fields"]),
    ("/score", {"prompts": ["a"] * 9, "responses": ["b"] * 9}, 413, ["'prompts'", "9 items", "at most 8"]),
    ("/score", {"prompts": ["a"], "responses": ["x" * 1001]}, 413, ["'responses' item 0", "1001 characters"]),
    ("/score", {"prompts": ["a" * 900] * 8, "responses": ["b" * 900] * 8, "pad": "z" * 70000}, 413, ["body", "limit"]),
    ("/openrlhf", {"prompts": ["a"]}, 400, ["'query'"]),
    ("/openrlhf", {"query": [1]}, 400, ["'query' item 0"]),
    ("/openrlhf", {"query": ["ab"], "prompts": ["a", "b"]}, 400, ["'query'", "'prompts'", "same length"]),
    ("/openrlhf", {"query": ["ab"], "prompts": 5}, 400, ["'prompts'", "a number"]),
    ("/openrlhf", {"query": ["a"] * 9}, 413, ["'query'", "at most 8"]),
    ("/nope", {"prompts": []}, 404, ["/nope", "/score"]),
]


def test_bad_requests_get_4xx_naming_the_field_and_server_survives(server):
    assert len(BAD_REQUESTS) >= 15
    for path, body, status, words in BAD_REQUESTS:
        got, reply, _ = http(server.url + path, body)
        assert got == status, (path, body if len(str(body)) < 200 else "...", reply)
        assert reply["status"] == status
        for w in words:
            assert w in reply["error"], (w, reply["error"])
    got, reply, headers = http(server.url + "/score", method="GET")
    assert got == 405 and "POST" in reply["error"]
    got, reply, _ = http(server.url + "/health", {"prompts": []})
    assert got == 405
    # ... and a good request still works.
    got, reply, _ = http(server.url + "/score", {"prompts": ["ab"], "responses": ["xyz"]})
    assert got == 200 and reply["rewards"] == pytest.approx([2.6])
    assert http(server.url + "/health")[1]["stats"]["responses_by_class"]["4xx"] >= len(BAD_REQUESTS)


def test_nonfinite_rewards_are_refused_not_returned():
    def nan_for_bad(prompts, responses):
        out = fake_score(prompts, responses).per_head
        out[[i for i, r in enumerate(responses) if r.strip() == "bad"]] = float("nan")
        return RewardOutput(out)

    with BackgroundServer(create_app(make_service(nan_for_bad))) as srv:
        status, reply, _ = http(srv.url + "/score", {"prompts": ["a", "a"], "responses": ["ok", "bad"]})
        assert status == 500 and "non-finite" in reply["error"] and "[1]" in reply["error"]
        with pytest.raises(RewardServerError, match="non-finite"):
            RewardClient(srv.url, retries=1, backoff=0).score(["a"], ["bad"])
        assert RewardClient(srv.url).score(["a"], ["ok"]).rewards == pytest.approx([0.2 * 2 + 1])


def test_a_failing_request_does_not_fail_its_batch_neighbours():
    def boom(prompts, responses):
        if any(r.strip() == "BOOM" for r in responses):
            raise RuntimeError("scorer exploded")
        time.sleep(0.02)
        return fake_score(prompts, responses)

    service = make_service(boom)
    with BackgroundServer(create_app(service, ServerConfig(max_wait_ms=200))) as srv:
        bodies = [{"prompts": ["a"], "responses": ["BOOM" if i == 3 else "x" * i]} for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: http(srv.url + "/score", b), bodies))
        for i, (status, reply, _) in enumerate(results):
            if i == 3:
                assert status == 500 and "scorer exploded" in reply["error"]
            else:
                assert status == 200 and reply["rewards"] == pytest.approx([1 + 0.2 * i])


# ----------------------------------------------------------------------------- batching and queue


def test_concurrent_requests_are_gathered_into_batches():
    """The first batch holds the worker (an event) until every other request is queued (counted
    by /health's queue_depth); then the queue drains in full batches of max_batch_size."""
    sizes = []
    started, release = threading.Event(), threading.Event()

    def recording(prompts, responses):
        sizes.append(len(prompts))
        started.set()
        assert release.wait(120), "never released"
        return fake_score(prompts, responses)

    with BackgroundServer(create_app(make_service(recording), ServerConfig(max_batch_size=8, max_wait_ms=50))) as srv:
        client = RewardClient(srv.url)
        jobs = [(["p" * i], ["r" * (2 * i)]) for i in range(32)]
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(client.score, *j) for j in jobs]
            assert started.wait(120)
            while client.health()["queue_depth"] < 32 - sizes[0]:  # the other requests arrive
                assert not any(f.done() for f in futures)
            release.set()
            results = [f.result(timeout=120) for f in futures]
        health = client.health()
    for i, res in enumerate(results):  # each request got its own slice back
        assert res.rewards == pytest.approx([i + 0.2 * 2 * i])
    rest = 32 - sizes[0]
    assert sizes[1:] == [8] * (rest // 8) + ([rest % 8] if rest % 8 else []), sizes  # gathered in full batches
    assert health["stats"]["items_scored"] == 32


def test_large_request_is_scored_as_one_batch_and_queue_full_gives_503():
    release = threading.Event()
    calls = []

    def blocking(prompts, responses):
        calls.append(len(prompts))
        release.wait(20)
        return fake_score(prompts, responses)

    with BackgroundServer(create_app(make_service(blocking), ServerConfig(max_queue_items=4, max_wait_ms=0))) as srv:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(http, srv.url + "/score", {"prompts": ["a"], "responses": ["b"]})
            _wait_until(lambda: http(srv.url + "/health")[1]["in_flight"] == 1)
            second = pool.submit(http, srv.url + "/score", {"prompts": ["a"] * 4, "responses": ["b"] * 4})
            _wait_until(lambda: http(srv.url + "/health")[1]["queue_depth"] == 4)
            status, reply, headers = http(srv.url + "/score", {"prompts": ["a"], "responses": ["b"]})
            assert status == 503 and "queue full" in reply["error"] and headers["Retry-After"] == "1"
            release.set()
            assert first.result()[0] == 200 and second.result()[0] == 200
    assert calls == [1, 4]


def _wait_until(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- auth


def test_bearer_token_required_when_set(monkeypatch):
    with BackgroundServer(create_app(make_service(), ServerConfig(token="s3cret"))) as srv:
        body = {"prompts": ["ab"], "responses": ["xyz"]}
        status, reply, headers = http(srv.url + "/score", body)
        assert status == 401 and "bearer token" in reply["error"] and "Bearer" in headers["WWW-Authenticate"]
        assert http(srv.url + "/health")[0] == 401
        assert http(srv.url + "/score", body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http(srv.url + "/score", body, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert http(srv.url + "/openrlhf?token=s3cret", {"query": ["abxyz"]})[0] == 200  # header-less clients
        assert RewardClient(srv.url, token="s3cret").score(["ab"], ["xyz"]).rewards == pytest.approx([2.6])
        real_urlopen, calls = urllib.request.urlopen, []

        def counting_urlopen(*args, **kwargs):
            calls.append(args[0].full_url)
            return real_urlopen(*args, **kwargs)

        monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
        with pytest.raises(RewardServerError, match="401") as e:
            RewardClient(srv.url, token="nope", retries=5, backoff=1).score(["ab"], ["xyz"])
        assert e.value.status == 401 and calls == [srv.url + "/score"]  # one request: 401 is not retried


def test_client_reads_token_from_environment(monkeypatch):
    monkeypatch.setenv("ROBUST_RLHF_TOKEN", "envtok")
    assert RewardClient("http://127.0.0.1:1").token == "envtok"
    assert RewardClient("http://127.0.0.1:1", token="x").token == "x"


# ----------------------------------------------------------------------------- client failures


class Scripted:
    """A fake server answering a scripted list of (status, JSON body text) for POST /score."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0
        app = web.Application()
        app.router.add_post("/score", self.handle)
        self.srv = BackgroundServer(app).start()

    async def handle(self, request):
        status, text = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return web.Response(status=status, text=text, content_type="application/json")


GOOD = json.dumps({"rewards": [1.0], "reward_std": [0.0], "rewards_per_head": [[1.0, 1.0, 1.0]]})


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_client_retries_transient_statuses_then_succeeds(status):
    s = Scripted([(status, '{"error": "busy"}'), (status, '{"error": "busy"}'), (200, GOOD)])
    try:
        assert RewardClient(s.srv.url, retries=3, backoff=0.001).score(["a"], ["b"]).rewards == [1.0]
        assert s.calls == 3
    finally:
        s.srv.stop()


@pytest.mark.parametrize("script, match, calls", [
    ([(503, '{"error": "busy"}')], "failed after 3 attempt.*busy", 3),                   # never a silent 0
    ([(400, '{"error": "field \'prompts\' is bad"}')], "HTTP 400: field 'prompts'", 1),  # not retried
    ([(200, '{"rewards": [1.0, 2.0], "reward_std": [0, 0], "rewards_per_head": [[1], [2]]}')], "2 'rewards' values for 1", 1),
    ([(200, '{"rewards": [NaN], "reward_std": [0], "rewards_per_head": [[1]]}')], "not a finite number", 1),
    ([(200, '{"rewards": ["1"], "reward_std": [0], "rewards_per_head": [[1]]}')], "not a finite number", 1),
    ([(200, '{"rewards": [1.0], "reward_std": [0]}')], "rewards_per_head", 1),
    ([(200, "<html>oops</html>")], "not JSON", 1),
])
def test_client_raises_on_failure_or_invalid_reply(script, match, calls):
    s = Scripted(script)
    try:
        with pytest.raises(RewardServerError, match=match):
            RewardClient(s.srv.url, retries=2, backoff=0.001).score(["a"], ["b"])
        assert s.calls == calls
    finally:
        s.srv.stop()


def test_client_raises_when_server_is_unreachable():
    with BackgroundServer(web.Application()) as srv:
        url = srv.url
    with pytest.raises(RewardServerError, match="failed after 2 attempt"):
        RewardClient(url, retries=1, backoff=0.001, timeout=2).score(["a"], ["b"])


def test_client_splits_long_inputs(server):
    n = 20  # server accepts at most 8 per request
    result = RewardClient(server.url, max_items=8).score(["ab"] * n, ["xyz"] * n)
    assert result.rewards == pytest.approx([2.6] * n)


def test_client_rejects_bad_arguments():
    with pytest.raises(UserError, match="must look like http://host:port"):
        RewardClient("localhost:8000")
    with pytest.raises(UserError, match="2 prompts but 1"):
        RewardClient("http://127.0.0.1:1").score(["a", "b"], ["c"])


# ----------------------------------------------------------------------------- verl


def test_verl_compute_score(server, monkeypatch):
    from robust_rlhf.integrations import verl_reward

    monkeypatch.setenv("ROBUST_RLHF_URL", server.url)
    assert verl_reward.compute_score("ds", "xyz", "gt", {"prompt": "ab"}) == pytest.approx(2.6)
    assert verl_reward.compute_score(data_source="ds", solution_str="xyz", ground_truth=None,
                                     extra_info={"question": "abcd"}) == pytest.approx(4.6)
    assert verl_reward.compute_score("ds", "xyz", "gt") == pytest.approx(0.6)  # no prompt known
    assert verl_reward.compute_score_with_std("ds", "xyz", "gt", {"prompt": "ab"}) == pytest.approx(
        {"score": 2.6, "reward_std": 0.3, "reward_mean": 2.6})
    assert verl_reward.compute_score_batch(["d", "d"], ["xyz", "x"], [None, None],
                                           [{"prompt": "ab"}, None]) == pytest.approx([2.6, 0.2])
    monkeypatch.setenv("ROBUST_RLHF_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ROBUST_RLHF_RETRIES", "0")
    with pytest.raises(RewardServerError, match="failed after 1 attempt"):
        verl_reward.compute_score("ds", "xyz", "gt", {"prompt": "ab"})
    monkeypatch.delenv("ROBUST_RLHF_URL")
    with pytest.raises(UserError, match="ROBUST_RLHF_URL"):
        verl_reward.compute_score("ds", "xyz", "gt")


# ----------------------------------------------------------------------------- start-up checks and CLI


def test_aggregator_the_heads_cannot_support_fails_at_startup():
    with pytest.raises(UserError, match="per_head_std"):
        make_service(aggregator=AggregatorConfig("brme_nominal"))
    with pytest.raises(UserError, match="normalize"):
        make_service(aggregator=AggregatorConfig("mean", normalize=True))


def _parser():
    from robust_rlhf.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_arguments_have_help_and_build_configs(monkeypatch):
    from robust_rlhf.cli.serve import cmd_serve, config_from_args

    parser = _parser()
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]
    for action in serve_parser._actions:
        assert action.help, action.dest
    monkeypatch.setenv("ROBUST_RLHF_TOKEN", "tok")
    args = parser.parse_args(["serve", "--model", "m", "--aggregator", "lcb", "--beta", "2", "--port", "0",
                              "--max-batch-size", "16", "--max-body-mb", "1"])
    assert args.func is cmd_serve
    config, agg = config_from_args(args)
    assert (agg.name, agg.beta, config.token, config.host) == ("lcb", 2.0, "tok", "127.0.0.1")
    assert config.max_batch_size == 16 and config.max_body_bytes == 1024 * 1024
    for bad, match in ([["--aggregator", "nope"], "unknown aggregator"], [["--lam", "0.1"], "no effect"],
                       [["--max-batch-size", "0"], "max-batch-size"], [["--port", "70000"], "port"],
                       [["--max-wait-ms", "-1"], "max-wait-ms"]):
        with pytest.raises(UserError, match=match):
            config_from_args(parser.parse_args(["serve", "--model", "m", *bad]))


@pytest.fixture(scope="module")
def untrained_rm_dir(minilm_rm_factory, tmp_path_factory):
    model = minilm_rm_factory(head_type="ensemble", num_heads=3)
    path = tmp_path_factory.mktemp("rm_untrained")
    model.save_pretrained(path, save_backbone=False)
    return path, model


def test_real_model_over_http_equals_in_process_scoring(untrained_rm_dir):
    path, model = untrained_rm_dir
    service = load_service(str(path), AggregatorConfig("mean"), batch_size=4)
    prompts = ["The movie was", "I think", "Honestly, the food", "A"] * 3
    responses = [" great.", " it is a truly wonderful and long day out here", " bad", " b"] * 3
    expected = model.score(prompts, responses)
    with BackgroundServer(create_app(service, ServerConfig(max_batch_size=8, max_wait_ms=30))) as srv:
        client = RewardClient(srv.url)
        with ThreadPoolExecutor(6) as pool:  # concurrent, mixed-length requests batched together
            parts = list(pool.map(lambda i: client.score(prompts[i:i + 2], responses[i:i + 2]), range(0, 12, 2)))
        health = client.health()
    per_head = torch.tensor([row for p in parts for row in p.rewards_per_head])
    torch.testing.assert_close(per_head, expected.per_head, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor([x for p in parts for x in p.rewards]), expected.mean, atol=1e-5, rtol=1e-5)
    assert health["num_heads"] == 3 and health["head_type"] == "ensemble" and health["model"] == str(path)
    with pytest.raises(UserError, match="--normalize needs per-head statistics"):
        load_service(str(path), AggregatorConfig("mean", normalize=True), warmup=False)


def test_serve_command_runs_reports_url_and_stops_on_sigterm(untrained_rm_dir):
    path, _ = untrained_rm_dir
    env = {**os.environ, "ROBUST_RLHF_TOKEN": "tok", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robust_rlhf.cli.serve", "--model", str(path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # never hang the suite: wait at most 120 s for the first line
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, ("no output from the serve command within 120 s", proc.poll())
        line = proc.stdout.readline()
        assert "serving" in line and "bearer token required" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        result = RewardClient(url, token="tok").score(["Hello"], [" world"])
        assert len(result.rewards) == 1 and math.isfinite(result.rewards[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


HOSTILE = [
    # (body bytes, expected status): never a 500
    (b'"a string"', 400), (b"42", 400), (b"null", 400), (b"true", 400),
    (b'{"prompts": ["a"], "responses": [NaN]}', 400), (b'{"prompts": [Infinity], "responses": ["b"]}', 400),
    (b'{"prompts": ["\\ud800"], "responses": ["b"]}', 400),             # lone surrogate
    (b'{"prompts": [' + b"9" * 5000 + b'], "responses": ["b"]}', 400),  # past Python's int digit limit
    (b"[" * 30000 + b"]" * 30000, 400),                                  # deeply nested, under 64 KiB
    (b"\xc3\x28", 400),                                                   # invalid UTF-8
    (b'{"prompts": [["a"]], "responses": ["b"]}', 400), (b'{"prompts": [true], "responses": ["b"]}', 400),
]


@pytest.mark.parametrize("body,status", HOSTILE)
def test_hostile_bodies_get_4xx_never_500(server, body, status):
    got, reply, _ = http(server.url + "/score", body)
    expected = 413 if len(body) > 64 * 1024 else status  # the module server's body limit is 64 KiB
    assert got == expected and 400 <= got < 500, (got, reply)
    for path in ("/openrlhf",):
        got, reply, _ = http(server.url + path, body.replace(b'"prompts"', b'"query"').replace(b'"responses"', b'"prompts"'))
        assert 400 <= got < 500, (got, reply)


def test_deep_nesting_under_the_body_limit_is_400():
    with BackgroundServer(create_app(make_service(), ServerConfig())) as srv:
        got, reply, _ = http(srv.url + "/score", b'{"a": ' * 100000 + b"1" + b"}" * 100000)
        assert got == 400 and "nested" in reply["error"]


def test_scorer_user_error_is_422_not_500():
    def strict(prompts, responses):
        raise UserError("text 0: the response alone is 99 tokens")
    with BackgroundServer(create_app(make_service(strict), ServerConfig())) as srv:
        got, reply, _ = http(srv.url + "/score", {"prompts": ["a"], "responses": ["b"]})
        assert got == 422 and "99 tokens" in reply["error"]


def test_empty_token_is_refused_from_every_source(monkeypatch):
    """Issue 22: an empty or blank token -- flag or environment, loopback or not -- never starts an
    unauthenticated server; unset the variable and drop the flag to serve without a token."""
    from robust_rlhf.cli.serve import config_from_args

    parser = _parser()
    for argv in (["--token", ""], ["--host", "::1", "--token", "\t"], ["--host", "10.1.2.3", "--token", " "]):
        with pytest.raises(UserError, match="token is empty"):
            config_from_args(parser.parse_args(["serve", "--model", "m", *argv]))
    monkeypatch.setenv("ROBUST_RLHF_TOKEN", "  ")
    with pytest.raises(UserError, match="token is empty"):
        config_from_args(parser.parse_args(["serve", "--model", "m"]))
    monkeypatch.delenv("ROBUST_RLHF_TOKEN")
    assert config_from_args(parser.parse_args(["serve", "--model", "m"]))[0].token is None
    env = {**os.environ, "ROBUST_RLHF_TOKEN": ""}
    proc = subprocess.run([sys.executable, "-m", "robust_rlhf.cli.serve", "--model", "m", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "token is empty" in proc.stderr
