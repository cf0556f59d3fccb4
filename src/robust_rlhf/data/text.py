"""The one rule that turns a (prompt, response) -- text or chat messages -- into the text a reward
model reads, and the checks every text reader applies (docs/serving.md, "One rendering rule").

A reward model reads ``prompt + response``. Training data, ``rm score``, the server's every route,
the verl functions and the TRL adapter all go through `render_pair`, so one conversation gets one
reward whichever door it comes through:

* **Joining.** A space is put between prompt and response when the prompt ends in a non-space
  and the response starts with a character that begins a word (a letter, a digit, an opening
  quote or bracket, a symbol). Nothing is put before whitespace or before punctuation that
  attaches to the previous word (``. , ; : ! ? ) ] } ' ’ ” %`` and ``…``). Evidence: the built-in
  training data reads ``"The film was" + " wonderful"`` (1301 of its 1340 texts have whitespace at
  the join, 35 more start with attaching punctuation; only 3 start with a letter glued on, a
  sub-word continuation). Chat templates and verl decode the response without its leading
  space, and gluing ``"Review the film" + "Wonderful"`` flips 10 % of the built-in test
  decisions (issue 22), so the missing space is restored. The rule is idempotent.
* **Conversations.** System (and ``developer``) messages are dropped; roles other than
  ``user``, ``assistant``, ``tool`` (``ipython`` / ``function``: tool results of Llama-3 / the older
  OpenAI) are refused. A prompt of one user turn is its content, exactly like its plain twin;
  longer prompts are ``"role: content"`` lines ending in ``"assistant: "`` -- never the
  tokenizer's chat template, which depends on the backbone and re-inserts default system
  prompts, and which a client without the tokenizer (verl) cannot apply. A completion is its
  messages' texts, one per line (non-assistant ones as ``"role: content"``). A tool call is
  rendered as ``call name(arguments)``, so an assistant turn holding only a tool call is scored
  as that call, not as an empty response.
* **Checks** (`check_text`): no lone UTF-16 surrogate, no NUL byte; a response (and a required
  field of a file) must hold a visible character -- zero-width/format characters alone are not
  text.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from robust_rlhf.errors import UserError

__all__ = ["DROPPED_ROLES", "ROLES", "check_text", "content_text", "is_messages", "is_visible", "join_pair",
           "message_text", "render_completion", "render_pair", "render_prompt"]

DROPPED_ROLES = ("system", "developer")
ROLES = ("user", "assistant", "tool", "ipython", "function")
# Punctuation that attaches to the word before it: no space is put in front of it.
_ATTACHING = set(".,;:!?)]}'’”%…")


def is_visible(text: str) -> bool:
    """True when ``text`` has a character that is neither whitespace nor an invisible format /
    control character (zero-width space U+200B, joiners, BOM, soft hyphen, ...)."""
    for ch in text:
        if ch.isspace():
            continue
        if unicodedata.category(ch) in ("Cf", "Cc", "Cn", "Zs", "Zl", "Zp", "Mn") or ch == "\u3164" or ch == "\u115f":
            continue
        return True
    return False


def check_text(text: str, where: str, require_visible: bool = False) -> str:
    """``text`` if it is clean; else `UserError` naming ``where`` and the reason.

    Refused: a lone UTF-16 surrogate (not Unicode; tokenizers raise on it), a NUL byte (a
    binary file or a C-string boundary, never text), and -- with ``require_visible`` -- text made
    only of whitespace and invisible characters.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: not valid Unicode (lone surrogate {text[e.start]!r} at character {e.start})") from None
    cut = text.find("\x00")
    if cut >= 0:
        raise UserError(f"{where}: contains a NUL byte (character {cut}); text fields must not hold binary data")
    if require_visible and not is_visible(text):
        raise UserError(f"{where} is empty (nothing but whitespace / invisible characters)")
    return text


def join_pair(prompt: str, response: str) -> str:
    """The response as it follows the prompt: with a space in front when the join needs one."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace() \
            and response[0] not in _ATTACHING:
        return " " + response
    return response


def is_messages(x: Any) -> bool:
    """True for a chat message dict or a non-empty list of them (verl/TRL conversational format)."""
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


def _tool_call_text(call: Any) -> str:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise UserError(f"a tool call must be an object with a function name, got {call!r:.80}")
    args = fn.get("arguments", "")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, sort_keys=True)
    return f"call {fn['name']}({args})"


def message_text(m: Any) -> tuple[str, str]:
    """(role, text) of one message: its content, then its tool calls as ``call name(args)`` lines."""
    if isinstance(m, str):
        return "user", m
    if not isinstance(m, dict):
        raise UserError(f"chat message must be an object with 'role' and 'content', got {type(m).__name__}")
    role = m.get("role")
    role = "user" if role is None else role
    if not isinstance(role, str) or (role not in ROLES and role not in DROPPED_ROLES):
        raise UserError(f"chat message role {role!r} is unknown; expected one of "
                        f"{', '.join(ROLES + DROPPED_ROLES)}")
    parts = [content_text(m.get("content"))]
    calls = m.get("tool_calls") or []
    if not isinstance(calls, (list, tuple)):
        raise UserError(f"chat message tool_calls must be a list, got {type(calls).__name__}")
    parts += [_tool_call_text(c) for c in calls]
    return role, "\n".join(p for p in parts if p)


def _turns(x: Any) -> list[tuple[str, str]]:
    """(role, text) of the kept messages: system/developer dropped, empty texts skipped."""
    items = [x] if isinstance(x, (dict, str)) else list(x)
    out = []
    for m in items:
        role, text = message_text(m)
        if role not in DROPPED_ROLES and text:
            out.append(("tool" if role in ("ipython", "function") else role, text))
    return out


def render_prompt(prompt: Any) -> str:
    """The prompt text: a string as is; messages -- one user turn -> its content, else
    ``"role: content"`` lines ending in ``"assistant: "``."""
    if isinstance(prompt, str):
        return prompt
    turns = _turns(prompt)
    if not turns:
        return ""
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "".join(f"{r}: {t}\n" for r, t in turns) + "assistant: "


def render_completion(completion: Any) -> str:
    """The response text of a completion: a string as is; messages -- assistant texts (tool calls
    included) as they are and other roles as ``"role: content"``, one message per line."""
    if isinstance(completion, str):
        return completion
    return "\n".join(t if r == "assistant" else f"{r}: {t}" for r, t in _turns(completion))


def render_pair(prompt: Any, response: Any) -> tuple[str, str]:
    """THE rule: (prompt text, response text) whose concatenation the reward model reads.

    Args:
        prompt: a string or chat messages (a list of ``{"role", "content"}``, or one such dict).
        response: a string or the completion's messages (TRL: ``[{"role": "assistant", ...}]``).

    Returns:
        ``(p, r)`` with `join_pair` applied to ``r`` (a leading space when the join needs one).
    """
    for x in (prompt, response):
        if not isinstance(x, (str, list, tuple, dict)):
            raise UserError(f"cannot read a prompt/completion of type {type(x).__name__}; expected text or chat "
                            f"messages")
    p = render_prompt(prompt)
    return p, join_pair(p, render_completion(response))
