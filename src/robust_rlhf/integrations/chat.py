"""Chat messages and chat-templated text -> the plain (prompt, response) text a reward model reads.

A reward model here is trained on plain ``prompt + response`` text (``rm train`` data). Trainers
hand it other shapes: TRL and verl pass chat *messages* (``[{"role", "content"}, ...]``), and
OpenRLHF passes *templated text* (``apply_chat_template`` output, special tokens included,
e.g. SmolLM2's ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...``). Both are turned
into the plain pair by the same rule (docs/serving.md, "Chat-templated input"):

* system messages are dropped (templates inject default ones -- SmolLM2's is 56 MiniLM tokens --
  and the reward model was trained on the user's text, not on them);
* messages whose content is None or empty (e.g. a tool call) are skipped, never scored as "None";
* a single user turn is the prompt as is: its plain twin scores identically;
* several turns are rendered with roles: the reward model tokenizer's own chat template when it
  has one, else ``"role: content"`` lines ending in ``"assistant: "``;
* the response is the completion's content(s); a space is put between prompt and response when
  neither side has whitespace at the join (``"the film" + "It was"`` -> ``"the film It was"``).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from robust_rlhf.errors import UserError

__all__ = ["content_text", "is_messages", "render_conversation", "untemplate", "untemplate_many"]


def is_messages(x: Any) -> bool:
    """True for a chat message dict or a list of them (verl/TRL conversational format)."""
    if isinstance(x, dict):
        return "role" in x or "content" in x
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


def content_text(content: Any) -> str:
    """A message's content as text: None -> "", str as is, content parts -> their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # multimodal-style parts: keep the text ones
        return "".join(p.get("text") or "" if isinstance(p, dict) else content_text(p) for p in content)
    raise UserError(f"chat message content must be a string, a list of parts or null, got {type(content).__name__}")


def _messages(x: Any) -> list[tuple[str, str]]:
    """(role, text) of the non-system messages with non-empty text."""
    items = [x] if isinstance(x, (dict, str)) else list(x)
    out = []
    for m in items:
        if isinstance(m, str):
            role, text = "user", m
        elif isinstance(m, dict):
            role, text = str(m.get("role") or "user"), content_text(m.get("content"))
        else:
            raise UserError(f"chat message must be an object with 'role' and 'content', got {type(m).__name__}")
        if role != "system" and text:
            out.append((role, text))
    return out


def _join(prompt: str, response: str) -> str:
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return " " + response
    return response


def render_conversation(prompt: Any, completion: Any = "", tokenizer: Any = None) -> tuple[str, str]:
    """Plain (prompt, response) text of a prompt and a completion, each text or chat messages.

    Args:
        prompt: a string, or messages (list of ``{"role", "content"}``, or one such dict).
        completion: a string, or messages (TRL: ``[{"role": "assistant", "content": ...}]``).
        tokenizer: the reward model's tokenizer; its chat template renders multi-turn prompts.
    """
    if isinstance(prompt, str):
        p = prompt
    else:
        turns = _messages(prompt)
        if len(turns) <= 1 and all(r == "user" for r, _ in turns):
            p = turns[0][1] if turns else ""
        elif tokenizer is not None and getattr(tokenizer, "chat_template", None):
            p = tokenizer.apply_chat_template([{"role": r, "content": t} for r, t in turns], tokenize=False,
                                              add_generation_prompt=True)
        else:
            p = "".join(f"{r}: {t}\n" for r, t in turns) + "assistant: "
    if isinstance(completion, str):
        return p, completion
    turns = _messages(completion)
    r = "\n".join(t if role == "assistant" else f"{role}: {t}" for role, t in turns)
    return p, _join(p, r)


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
        return prompt, response, False
    if prompt:
        turns = _turns(fam, prompt)
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
            turns.pop()  # the generation prompt
        plain_p, _ = render_conversation(turns)
        return plain_p, _join(plain_p, _clean_response(response)), True
    turns = _turns(fam, response)
    if not turns or turns[-1]["role"] != "assistant":
        return "", _clean_response(response), True
    plain_p, _ = render_conversation(turns[:-1])
    return plain_p, _join(plain_p, _clean_response(turns[-1]["content"])), True


def untemplate_many(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str], int]:
    """`untemplate` over a batch: (prompts, responses, how many were templated)."""
    out_p, out_r, n = [], [], 0
    for p, r in zip(prompts, responses):
        a, b, t = untemplate(p, r)
        out_p.append(a)
        out_r.append(b)
        n += t
    return out_p, out_r, n
