"""The trainers' current protocols, written out from their source (no framework installed).

Sources read (issue 11):
* OpenRLHF v0.11.0 (github OpenRLHF/OpenRLHF 3c3be62): ``openrlhf/utils/agent.py``
  ``SingleTurnAgentExecutor.execute`` / ``_fetch_rewards_via_http`` (one query per call, payload
  ``{"query", "prompts", "labels"}`` sharded over every URL -- the URLs after the first get empty
  lists --, aiohttp ``raise_for_status`` then ``.json()``; reads ``rewards``, ``scores`` (falls
  back to ``rewards``) and ``extra_logs``; ``query = decode(prompt_ids + action_ids,
  skip_special_tokens=False)``, prompt = ``apply_chat_template(..., add_generation_prompt=True)``
  with ``--data.apply_chat_template``) and ``trainer/ppo_utils/samples_generator.py`` (each
  ``extra_logs`` key becomes a per-sample tensor).
* verl b178a3c (0.8.0.dev): ``experimental/reward_loop/reward_manager/naive.py`` (per-sample
  ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``, dict -> ``score`` +
  logged extras); verl's preprocessors store the prompt as chat messages.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import torch

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.errors import UserError
from robust_rlhf.integrations.chat import render_conversation, untemplate
from robust_rlhf.integrations.server import BackgroundServer, RewardService, ServerConfig, create_app
from robust_rlhf.reward.output import RewardOutput

K = 3


def fake_score(prompts, responses):
    """Head k of (p, r): len(p) + (k + 1) * len(r) / 10 (as in test_server.py)."""
    rows = [[len(p) + (k + 1) * len(r) / 10 for k in range(K)] for p, r in zip(prompts, responses)]
    return RewardOutput(torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), K))


def serve(score_fn=fake_score, **config):
    service = RewardService(score_fn, K, AggregatorConfig("mean"), info={"model": "fake"})
    return BackgroundServer(create_app(service, ServerConfig(**config)))  # started by `with`


async def openrlhf_0_11_fetch(urls, query, prompt, label):
    """OpenRLHF 0.11 `_fetch_rewards_via_http([query], [prompt], [label])` + how `execute` reads it."""
    queries, prompts, labels = [query], [prompt], [label]
    size = (len(queries) + len(urls) - 1) // len(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        replies = []
        for i, url in enumerate(urls):
            payload = {"query": queries[i * size:(i + 1) * size], "prompts": prompts[i * size:(i + 1) * size],
                       "labels": labels[i * size:(i + 1) * size]}
            async with session.post(url, json=payload) as response:
                response.raise_for_status()
                replies.append(await response.json())
    info = replies[0]
    score = info.get("scores")
    if score is None:
        score = info.get("rewards")
    extra = {k: torch.tensor([v]) for k, v in (info.get("extra_logs") or {}).items()}  # samples_generator
    return torch.tensor([info.get("rewards")]), torch.tensor([score]), extra, replies


SMOL_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n")


def test_openrlhf_0_11_single_query_two_urls_and_templated_query():
    with serve() as a, serve() as b:
        urls = [a.url + "/openrlhf", b.url + "/get_reward"]
        # plain: "ab" + "xyz" -> heads [2.3, 2.6, 2.9]
        rewards, scores, extra, replies = asyncio.run(openrlhf_0_11_fetch(urls, "abxyz", "ab", "4"))
        assert rewards.flatten().tolist() == pytest.approx([2.6]) and scores.flatten().tolist() == pytest.approx([2.6])
        assert extra["reward_std"].flatten().tolist() == pytest.approx([0.3])
        assert extra["reward_mean"].flatten().tolist() == pytest.approx([2.6])
        assert replies[1] == {"rewards": [], "scores": [], "extra_logs": {"reward_std": [], "reward_mean": []},
                              "rewards_per_head": []}  # the 2nd URL gets the empty shard
        # templated (SmolLM2 ChatML, EOS decoded): scored as ("ab", " xyz") -> 2 + (k+1)*0.4
        rewards, _, extra, _ = asyncio.run(openrlhf_0_11_fetch(urls, SMOL_PROMPT + "xyz<|im_end|>", SMOL_PROMPT, None))
        assert rewards.flatten().tolist() == pytest.approx([2.8])
        assert extra["reward_std"].flatten().tolist() == pytest.approx([0.4])
        # query re-decoded so that it does not start with the prompt: the last assistant turn is the response
        rewards, *_ = asyncio.run(openrlhf_0_11_fetch(urls, "<|endoftext|>" + SMOL_PROMPT + "xyz", SMOL_PROMPT, None))
        assert rewards.flatten().tolist() == pytest.approx([2.8])
        import urllib.request
        health = json.loads(urllib.request.urlopen(a.url + "/health").read())
        assert health["stats"]["templated_queries"] == 2
        assert health["stats"]["mean_reward_std"] == pytest.approx((0.3 + 0.4 + 0.4) / 3)


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


def test_render_conversation_roles_none_and_system():
    assert render_conversation([{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"}],
                               [{"role": "assistant", "content": "there"}]) == ("Hi", " there")
    assert render_conversation([{"role": "user", "content": None}], [{"role": "assistant", "content": None}]) == ("", "")
    assert render_conversation([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}],
                               "b") == ("a", "b")
    with pytest.raises(UserError, match="content"):
        render_conversation([{"role": "user", "content": 5}])


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
        # verl's reward loop: keyword call, extra info as stored by its preprocessors
        assert verl_reward.compute_score(data_source="gsm8k", solution_str="xyz", ground_truth="4",
                                         extra_info={"prompt": messages, "index": 0}) == pytest.approx(2.6)
        as_array = np.array(messages, dtype=object)  # lists come back from parquet as object arrays
        assert verl_reward.compute_score("d", "xyz", None, {"prompt": as_array}) == pytest.approx(2.6)
        assert verl_reward.compute_score_with_std("d", "xyz", None, {"prompt": messages}, num_turns=None) == \
            pytest.approx({"score": 2.6, "reward_std": 0.3, "reward_mean": 2.6})
