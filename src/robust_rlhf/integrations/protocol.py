"""The reward server's request contract: settings and limits (`ServerConfig`), JSON errors
(`ApiError`), and validation of request fields, OpenRLHF's ``query`` format included.

No aiohttp here: `robust_rlhf.integrations.server` reads the body and calls these. The HTTP
contract is documented in docs/serving.md.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Sequence

from robust_rlhf.data.text import check_text
from robust_rlhf.errors import UserError

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
    allow_clients: tuple[str, ...] = ()
    """Client addresses/networks (``10.0.0.0/8``, ``127.0.0.1``) allowed to connect; empty = any.
    For clients that cannot send a header (OpenRLHF): restricts who may call without a secret in the URL."""

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
        if self.token is not None:
            if not self.token.strip():
                raise UserError("the bearer token is empty (--token or ROBUST_RLHF_TOKEN): give a non-empty token, "
                                "or unset ROBUST_RLHF_TOKEN and drop --token to serve without one")
            if self.token != self.token.strip() or any(not (32 < ord(c) < 127) for c in self.token):
                raise UserError("the bearer token must be printable ASCII without spaces (it travels in an "
                                "HTTP header)")
        parse_networks(self.allow_clients)


def parse_networks(specs: Sequence[str]) -> list:
    """`ipaddress` networks of ``--allow-client`` entries (an address is a /32 or /128 network)."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise UserError(f"--allow-client {spec!r}: not an IP address or network (e.g. 10.0.0.0/8, "
                            f"127.0.0.1, ::1)") from None
    return nets


def client_allowed(remote: str | None, networks: Sequence) -> bool:
    """True when ``networks`` is empty or the peer address ``remote`` lies in one of them."""
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if getattr(addr, "ipv4_mapped", None) is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- errors and request fields


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use null or a number)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` refusing an object that names a key twice (one value would silently win)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def _string_list(data: dict, name: str, config: ServerConfig, required: bool = True,
                 visible: bool = False) -> list[str] | None:
    """The field as a list of clean strings (`check_text`; ``visible``: a non-empty item must hold a
    visible character), else `ApiError` naming the field and item."""
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
            check_text(item, f"field '{name}' item {i}", require_visible=visible and bool(item))
        except UserError as e:
            raise ApiError(400, str(e)) from None
    return value


def _same_length(a: str, la: int, b: str, lb: int) -> None:
    if la != lb:
        raise ApiError(400, f"fields '{a}' ({la} items) and '{b}' ({lb} items) must have the same length")


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """OpenRLHF sends ``query`` = prompt + response text; split it with the request's prompt.

    If the query does not start with the prompt (the client cut the prompt from the left, or
    re-decoded it differently), the whole query is returned as the response with an empty prompt
    (then `openrlhf_pairs` finds the response as the query's last assistant turn, if templated).
    """
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt):]
    return "", query


def prompt_was_cut(query: str, prompt: str | None) -> bool:
    """True when the client cut ``prompt`` from the left before generating (OpenRLHF truncates a
    prompt over ``prompt_max_len`` tokens from the left): the query does not start with the prompt
    but holds a non-empty tail of it."""
    if not prompt or query.startswith(prompt):
        return False
    # a proper suffix of the prompt, 8+ characters long, starts the query
    head = query[:8]
    if len(head) < 8:
        return False
    at = prompt.find(head, 1)
    while 0 < at <= len(prompt) - 8:
        if query.startswith(prompt[at:]):
            return True
        at = prompt.find(head, at + 1)
    return False


def openrlhf_pairs(queries: Sequence[str], prompts: Sequence[str] | None) -> tuple[list[str], list[str], int, list[bool]]:
    """Plain (prompts, responses) of OpenRLHF's ``query``/``prompts``, how many were templated, and
    per query whether the client had cut its prompt (`prompt_was_cut`: such a query is scored as
    it came, without the prompt's head).

    The query is split with its prompt (`split_query`); chat-templated text (special tokens and
    role markers, e.g. SmolLM2's ChatML) becomes the plain prompt and response the reward model
    was trained on (`robust_rlhf.integrations.chat.untemplate`), so that truncation can keep the
    response and a templated query scores like its plain twin.
    """
    from robust_rlhf.integrations.chat import untemplate_many

    pairs = [split_query(q, prompts[i] if prompts is not None else None) for i, q in enumerate(queries)]
    cut = [prompts is not None and prompt_was_cut(q, prompts[i]) for i, q in enumerate(queries)]
    return (*untemplate_many([p for p, _ in pairs], [r for _, r in pairs]), cut)
