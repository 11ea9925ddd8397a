"""OpenAI wire format: request parsing with one clear error per bad field, and response bodies.

Parsing is pure (dict in, `GenerationRequest` or `ApiError` out): checks that need the model
(model id, prompt length, drafter names) live in the service. Unknown fields are ignored, as
OpenAI clients send many optional ones; the extra fields `strategy`, `drafters` and `top_k` are
ours.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from taps_ray.data.records import Message

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4  # OpenAI's limit on stop sequences
GREEDY_BELOW = 1e-5  # smaller temperatures decode greedily (vLLM's _SAMPLING_EPS)

_ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 500: "server_error"}


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


@dataclass(frozen=True)
class GenerationRequest:
    """One validated chat or completion request (prompt still text: the service tokenizes)."""

    kind: Literal["chat", "completion"]
    model: str | None  # None: the served model
    messages: tuple[Message, ...] = ()  # chat only
    prompt: str | tuple[int, ...] = ""  # completion only: text or token ids
    max_tokens: int | None = None  # None: the server's default
    temperature: float = 1.0  # OpenAI's default; 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # extra field (vLLM's); 0 = off
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a final chunk with usage
    strategy: str | None = None  # extra field; None: the server's default
    drafters: tuple[str, ...] | None = None  # extra field: subset of the loaded drafters


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("body", "request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad("body", "request body must be a JSON object")
    return body


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    max_tokens = _opt_int(body, "max_completion_tokens")
    return GenerationRequest(
        "chat",
        messages=_messages(body.get("messages")),
        max_tokens=_opt_int(body, "max_tokens") if max_tokens is None else max_tokens,
        **_common(body),
    )


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        "completion", prompt=_prompt(body), max_tokens=_opt_int(body, "max_tokens"),
        **_common(body)
    )


def _common(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("n", 1) != 1:
        raise bad("n", "only n = 1 is supported; send several requests instead")
    stream = _bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", "stream_options must be an object")
    return dict(
        model=_opt_str(body, "model"),
        temperature=_temperature(body),
        top_p=_top_p(body),
        top_k=_opt_int(body, "top_k", low=0) or 0,
        seed=_seed(body),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=stream and bool(options.get("include_usage", False)),
        strategy=_opt_str(body, "strategy"),
        drafters=_names(body.get("drafters")),
    )


def _messages(value: Any) -> tuple[Message, ...]:
    if value is None:
        raise bad("messages", "'messages' is required: a list of {role, content} objects",
                  "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    return tuple(_message(i, m) for i, m in enumerate(value))


def _message(i: int, m: Any) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad(where, f"{where} must be an object with role and content")
    if m.get("role") not in ROLES:
        raise bad(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}")
    return Message(m["role"], _content(m.get("content"), f"{where}.content"))


def _content(value: Any, where: str) -> str:
    """A string, or a list of {type: text, text} parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise bad(where, f"{where} must be a string or a list of text parts")


def _prompt(body: dict[str, Any]) -> str | tuple[int, ...]:
    value = body.get("prompt")
    if value is None:
        raise bad("prompt", "'prompt' is required: a string", "missing_required_parameter")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise bad("prompt", "'prompt' is empty; send at least one character")
        return value
    if isinstance(value, list) and value and all(_is_int(t) and t >= 0 for t in value):
        return tuple(value)
    raise bad("prompt", "'prompt' must be a string, a list of one string, or a list of token ids")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"'stop' takes at most {MAX_STOPS} sequences, got {len(stops)}")
    return tuple(stops)


def _names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise bad("drafters", "'drafters' must be a non-empty list of drafter names")
    return tuple(dict.fromkeys(value))  # drop repeats, keep order


def _seed(body: dict[str, Any]) -> int | None:
    seed = _opt_int(body, "seed", low=0)
    if seed is not None and seed >= 2**63:
        raise bad("seed", f"'seed' must be < 2**63, got {seed}")
    return seed


def _top_p(body: dict[str, Any]) -> float:
    top_p = _number(body, "top_p", 1.0, low=0.0)
    if not 0 < top_p <= 1:
        raise bad("top_p", f"top_p must be in (0, 1] (1 = off), got {top_p}")
    return top_p


def _temperature(body: dict[str, Any]) -> float:
    """Below GREEDY_BELOW a temperature is greedy (as vLLM does): logits / 1e-45 overflow to
    inf and the sampling distribution would be NaN."""
    value = _number(body, "temperature", 1.0, low=0.0)
    return 0.0 if value < GREEDY_BELOW else value


def _number(body: dict[str, Any], key: str, default: float, low: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(key, f"'{key}' must be a finite number, got {value!r}")
    if value < low:
        raise bad(key, f"'{key}' must be >= {low}, got {value}")
    return float(value)


def _opt_int(body: dict[str, Any], key: str, low: int | None = 1) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise bad(key, f"'{key}' must be an integer, got {value!r}")
    if low is not None and value < low:
        raise bad(key, f"'{key}' must be >= {low}, got {value}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad(key, f"'{key}' must be true or false, got {value!r}")
    return value


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad(key, f"'{key}' must be a string, got {value!r}")
    return value


# ---- responses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseHead:
    """What every body and chunk of one response repeats."""

    id: str
    created: int
    model: str
    kind: Literal["chat", "completion"]

    @classmethod
    def new(cls, model: str, kind: Literal["chat", "completion"]) -> ResponseHead:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, kind)

    def _base(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model}

    def body(self, text: str, finish_reason: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish_reason, "logprobs": None}
            return {**self._base("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**self._base("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None,
              first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                      "logprobs": None}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason,
                  "logprobs": None}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._base(name), "choices": [], "usage": usage}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` (or the literal `[DONE]`), blank line."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")
