"""The trainers' current protocols, written out from their released source (no framework installed).

Sources read (released wheels from PyPI, unpacked, not installed):
* OpenRLHF 0.11.2 (``openrlhf-0.11.2-cp311-cp311-manylinux1_x86_64.whl``): ``openrlhf/utils/agent.py``
  ``SingleTurnAgentExecutor.execute`` / ``_fetch_rewards_via_http``: one query per call, payload
  ``{"query": [q], "prompts": [p], "labels": [label]}`` (label ``""`` without ``--data.label_key``);
  with several URLs (``--reward.remote_url a,b`` split on commas in ``cli/train_ppo_ray.py``) each
  call goes to the NEXT URL of an ``itertools.cycle`` (round robin; no empty shards -- OpenRLHF 0.11.0
  posted to every URL, the later ones with empty lists); a fresh aiohttp session per attempt,
  ``ClientTimeout(total=180)``, ``raise_for_status`` then ``.json()``, 5 attempts 1 s apart (4xx
  included); it reads ``rewards``, ``scores`` (falls back to ``rewards``) and ``extra_logs``;
  ``query = decode(prompt_ids + action_ids, skip_special_tokens=False)``; prompt =
  ``apply_chat_template(..., add_generation_prompt=True)`` with ``--data.apply_chat_template``
  (``datasets/prompts_dataset.py``). ``trainer/ppo_utils/samples_generator.py``
  (``_process_response_into_experience``) makes ``torch.tensor([reward])`` and one tensor per
  ``extra_logs`` key.
* verl 0.9.1 (``verl-0.9.1-py3-none-any.whl``): ``verl/experimental/reward_loop/reward_manager/naive.py``
  (``NaiveRewardManager.run_single``): per sample, keyword call ``compute_score(data_source=,
  solution_str=, ground_truth=, extra_info=)`` (+ ``reward_router_address=``, ``reward_model_tokenizer=``
  when a verl reward model is enabled; + ``reward.custom_reward_function.reward_kwargs``, merged in
  ``verl/trainer/ppo/reward.py``); ``extra_info`` is the dataset row's, with ``num_turns`` and
  ``rollout_reward_scores`` added; dict result -> ``score`` + logged extras. The prompt reaches
  ``extra_info`` only if preprocessing copies it there (``verl/utils/dataset/rl_dataset.py`` keeps the
  ``prompt`` column as ``raw_prompt``, which is not passed).
"""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import numpy as np
import pytest
import torch

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.errors import UserError
from robust_rlhf.data.text import render_pair
from robust_rlhf.integrations.chat import untemplate
from robust_rlhf.integrations.protocol import ServerConfig
from robust_rlhf.integrations.server import BackgroundServer, RewardService, create_app
from robust_rlhf.reward.output import RewardOutput

K = 3


def fake_score(prompts, responses):
    """Head k of (p, r): len(p) + (k + 1) * len(r.lstrip(" ")) / 10 (as in test_server.py)."""
    rows = [[len(p) + (k + 1) * len(r.lstrip(" ")) / 10 for k in range(K)] for p, r in zip(prompts, responses)]
    return RewardOutput(torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), K))


def serve(score_fn=fake_score, **config):
    service = RewardService(score_fn, K, AggregatorConfig("mean"), info={"model": "fake"})
    return BackgroundServer(create_app(service, ServerConfig(**config)))  # started by `with`


class OpenRLHF0112Executor:
    """OpenRLHF 0.11.2 ``SingleTurnAgentExecutor``'s reward path (openrlhf/utils/agent.py) and how
    ``samples_generator.py`` turns the reply into tensors -- rewritten here, not copied."""

    def __init__(self, urls):
        self.urls = list(urls)
        self.next_url = itertools.cycle(self.urls)  # kept across calls: round robin over the servers

    async def _post(self, url, payload, attempts=5):
        for _ in range(attempts):
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
                    async with session.post(url, json=payload) as response:
                        response.raise_for_status()  # any non-2xx, 4xx included, is retried
                        return await response.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.01)  # 1 s in OpenRLHF
        raise RuntimeError(f"Request error for {attempts} times")

    async def fetch(self, query, prompt, label):
        queries, prompts, labels = [query], [prompt], [label]
        size = (len(queries) + len(self.urls) - 1) // len(self.urls)
        tasks = []
        for i in range(len(self.urls)):
            if i * size >= len(queries):
                break  # one query: only one shard, hence one URL per call
            payload = {"query": queries[i * size:(i + 1) * size], "prompts": prompts[i * size:(i + 1) * size],
                       "labels": labels[i * size:(i + 1) * size]}
            tasks.append(self._post(next(self.next_url), payload))
        replies = await asyncio.gather(*tasks)
        info = replies[0]
        score = info.get("scores")
        if score is None:
            score = info.get("rewards")
        extra = {k: torch.tensor([v]) for k, v in (info.get("extra_logs") or {}).items()}
        return torch.tensor([info.get("rewards")]), torch.tensor([score]), extra, replies


SMOL_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n")


def test_openrlhf_0_11_single_query_round_robin_urls_and_templated_query():
    import urllib.request

    with serve() as a, serve() as b:
        executor = OpenRLHF0112Executor([a.url + "/openrlhf", b.url + "/get_reward"])
        # call 1 -> a. plain: "ab" + "xyz" -> heads [2.3, 2.6, 2.9]
        rewards, scores, extra, replies = asyncio.run(executor.fetch("abxyz", "ab", "4"))
        assert len(replies) == 1  # one request per query, to one server
        assert rewards.flatten().tolist() == pytest.approx([2.6]) and scores.flatten().tolist() == pytest.approx([2.6])
        assert extra["reward_std"].flatten().tolist() == pytest.approx([0.3])
        assert extra["reward_mean"].flatten().tolist() == pytest.approx([2.6])
        # call 2 -> b. templated (SmolLM2 ChatML, EOS decoded): scored as ("ab", " xyz"), like the plain query
        rewards, _, extra, _ = asyncio.run(executor.fetch(SMOL_PROMPT + "xyz<|im_end|>", SMOL_PROMPT, ""))
        assert rewards.flatten().tolist() == pytest.approx([2.6])
        assert extra["reward_std"].flatten().tolist() == pytest.approx([0.3])
        # call 3 -> a. query re-decoded so that it does not start with the prompt: the last
        # assistant turn is the response
        rewards, *_ = asyncio.run(executor.fetch("<|endoftext|>" + SMOL_PROMPT + "xyz", SMOL_PROMPT, ""))
        assert rewards.flatten().tolist() == pytest.approx([2.6])
        stats_a = json.loads(urllib.request.urlopen(a.url + "/health").read())["stats"]
        stats_b = json.loads(urllib.request.urlopen(b.url + "/health").read())["stats"]
        assert (stats_a["items_scored"], stats_b["items_scored"]) == (2, 1)  # round robin a, b, a
        assert (stats_a["templated_queries"], stats_b["templated_queries"]) == (1, 1)
        assert stats_a["mean_reward_std"] == pytest.approx(0.3)
        assert stats_b["mean_reward_std"] == pytest.approx(0.3)


def test_openrlhf_0_11_failure_is_an_error_not_a_reward():
    """A server error is retried by OpenRLHF and then raised (its executor logs it and leaves the
    reward None); the server never answers a failure with a made-up number."""
    def broken(prompts, responses):
        raise RuntimeError("backbone exploded")

    with serve(score_fn=broken) as srv:
        executor = OpenRLHF0112Executor([srv.url + "/openrlhf"])
        with pytest.raises(RuntimeError, match="5 times"):
            asyncio.run(executor.fetch("abxyz", "ab", ""))


def test_untemplate_families_and_plain_text_unchanged():
    assert untemplate("The movie was", " great.") == ("The movie was", " great.", False)
    assert untemplate(SMOL_PROMPT, "Fine.<|im_end|><|endoftext|>") == ("ab", " Fine.", True)
    llama = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert untemplate(llama, "Hello!<|eot_id|>") == ("Hi there", " Hello!", True)
    gemma = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert untemplate(gemma, "Yo<end_of_turn>") == ("Hi", " Yo", True)
    two_turns = ("<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
                 "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n")
    assert untemplate(two_turns, "a2<|im_end|>") == ("user: q1\nassistant: a1\nuser: q2\nassistant: ", "a2", True)


def test_render_pair_roles_none_and_system():
    assert render_pair([{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"}],
                               [{"role": "assistant", "content": "there"}]) == ("Hi", " there")
    assert render_pair([{"role": "user", "content": None}], [{"role": "assistant", "content": None}]) == ("", "")
    assert render_pair([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}],
                               "b") == ("a", " b")
    with pytest.raises(UserError, match="content"):
        render_pair([{"role": "user", "content": 5}], "")


@pytest.fixture(scope="module")
def smol_tokenizer():
    from robust_rlhf.models.hub import load_tokenizer

    return load_tokenizer("smollm2-135m")


def test_real_smollm2_template_with_minilm_rm_ranks_like_plain(minilm_rm_factory, smol_tokenizer, tmp_path):
    """Issue 11, item 1: SmolLM2's templated prompt alone is ~56 MiniLM tokens; at max_length 48
    two responses used to get the same reward. Now they differ and equal their plain twins."""
    from robust_rlhf.integrations.server import load_service

    rm = minilm_rm_factory(head_type="ensemble", num_heads=3, max_length=48)
    rm.save_pretrained(tmp_path, save_backbone=False)
    service = load_service(str(tmp_path), AggregatorConfig("mean"))
    user = "Write one sentence about the film you watched yesterday evening."
    prompt = smol_tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                add_generation_prompt=True)
    assert len(service.model.tokenizer(prompt)["input_ids"]) > 48  # the template alone overflows
    responses = ["It was a wonderful, moving and beautiful film.", "It was boring, dull and far too long."]
    # what OpenRLHF sends: prompt + response + EOS, decoded with special tokens
    queries = [prompt + smol_tokenizer.decode(smol_tokenizer(r, add_special_tokens=False)["input_ids"]
                                              + [smol_tokenizer.eos_token_id], skip_special_tokens=False)
               for r in responses]
    with BackgroundServer(create_app(service, ServerConfig())) as srv:
        import urllib.request
        req = urllib.request.Request(srv.url + "/openrlhf", json.dumps(
            {"query": queries, "prompts": [prompt, prompt], "labels": [None, None]}).encode(),
            headers={"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req).read())["rewards"]
    plain = service.model.score([user, user], [" " + r for r in responses]).per_head.mean(1).tolist()
    assert got[0] != pytest.approx(got[1], abs=1e-4)
    assert got == pytest.approx(plain, abs=1e-5)


def test_verl_prompt_as_chat_messages(monkeypatch):
    from robust_rlhf.integrations import verl_reward

    with serve() as srv:
        monkeypatch.setenv("ROBUST_RLHF_URL", srv.url)
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}]
        # verl 0.9.1 NaiveRewardManager.run_single: keyword call; extra_info is the row's (prompt
        # copied in by preprocessing) plus num_turns / rollout_reward_scores added by the manager
        extra_info = {"prompt": messages, "index": 0, "num_turns": None, "rollout_reward_scores": {}}
        assert verl_reward.compute_score(data_source="gsm8k", solution_str="xyz", ground_truth="4",
                                         extra_info=extra_info) == pytest.approx(2.6)
        # ... and with a verl reward model enabled it also passes these two keywords
        assert verl_reward.compute_score(data_source="gsm8k", solution_str="xyz", ground_truth="4",
                                         extra_info=extra_info, reward_router_address="127.0.0.1:1",
                                         reward_model_tokenizer=None) == pytest.approx(2.6)
        as_array = np.array(messages, dtype=object)  # lists come back from parquet as object arrays
        assert verl_reward.compute_score("d", "xyz", None, {"prompt": as_array}) == pytest.approx(2.6)
        assert verl_reward.compute_score_with_std("d", "xyz", None, {"prompt": messages}, num_turns=None) == \
            pytest.approx({"score": 2.6, "reward_std": 0.3, "reward_mean": 2.6})
