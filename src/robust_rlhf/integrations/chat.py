"""Chat-templated text -> the plain (prompt, response) text a reward model reads.

OpenRLHF passes *templated text* (``apply_chat_template`` output, special tokens included, e.g.
SmolLM2's ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...``). `untemplate` reads its
turns back into messages and renders them with `robust_rlhf.data.text.render_pair` -- the one
rule every client uses (docs/serving.md, "One rendering rule"), so a templated query scores like
its plain twin and like the same conversation sent through verl, TRL or ``rm score``.
"""

from __future__ import annotations

import re
from typing import Sequence

from robust_rlhf.data.text import render_pair

__all__ = ["untemplate", "untemplate_many"]


# ---------------------------------------------------------------------------- templated text
# (name, turn regex: role + content up to the turn's end marker or the end of the text, stop tokens)
_FAMILIES = (
    ("chatml", re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)(<\|im_end\|>|\Z)", re.S), "<|im_start|>"),
    ("llama3", re.compile(r"<\|start_header_id\|>([^<]*)<\|end_header_id\|>\n\n(.*?)(<\|eot_id\|>|\Z)", re.S),
     "<|start_header_id|>"),
    ("gemma", re.compile(r"<start_of_turn>([^\n<]*)\n(.*?)(<end_of_turn>|\Z)", re.S), "<start_of_turn>"),
)
_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
_EOS_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>", "<|end|>")


def _family(text: str):
    for fam in _FAMILIES:
        if fam[2] in text:
            return fam
    return None


def _clean_response(text: str) -> str:
    """The assistant text up to its turn's end marker, without trailing EOS/pad tokens."""
    for marker in _END_MARKERS:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    changed = True
    while changed:
        changed = False
        for eos in _EOS_TOKENS:
            if text.endswith(eos):
                text, changed = text[: -len(eos)], True
    return text


def _turns(fam, text: str) -> list[dict]:
    """The messages of templated text; Gemma's "model" role is "assistant"."""
    roles = {"model": "assistant"}
    return [{"role": roles.get(m.group(1).strip(), m.group(1).strip()), "content": m.group(2)}
            for m in fam[1].finditer(text)]


def untemplate(prompt: str, response: str) -> tuple[str, str, bool]:
    """(plain prompt, plain response, whether a chat template was found) of templated text.

    ``prompt`` is the templated prompt (generation prompt included) or "" when the caller could
    not split the text; then ``response`` is the whole templated conversation and its last
    assistant turn is the response. Text with no known template (ChatML -- SmolLM2, Qwen --,
    Llama 3, Gemma markers) is returned unchanged.
    """
    fam = _family(prompt) or (None if prompt else _family(response))
    if fam is None:
        return (*render_pair(prompt, response), False)
    if prompt:
        turns = _turns(fam, prompt)
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
            turns.pop()  # the generation prompt
        return (*render_pair(turns, _clean_response(response)), True)
    turns = _turns(fam, response)
    if not turns or turns[-1]["role"] != "assistant":
        return "", _clean_response(response), True
    return (*render_pair(turns[:-1], _clean_response(turns[-1]["content"])), True)


def untemplate_many(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str], int]:
    """`untemplate` over a batch: (prompts, responses, how many were templated)."""
    out_p, out_r, n = [], [], 0
    for p, r in zip(prompts, responses):
        a, b, t = untemplate(p, r)
        out_p.append(a)
        out_r.append(b)
        n += t
    return out_p, out_r, n
