"""OpenAI request parsing and stop-string handling: pure functions, no model."""

from __future__ import annotations

import json

import pytest

from taps_ray.serving.protocol import (
    ApiError,
    ResponseHead,
    parse_chat,
    parse_completion,
    parse_json,
    sse,
)
from taps_ray.serving.text import StopText, held_back

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_chat_defaults_and_extras():
    req = parse_chat({**CHAT, "max_tokens": 5, "temperature": 0, "stop": "\n",
                      "strategy": "merged", "drafters": ["a", "b", "a"], "seed": 3})
    assert req.kind == "chat" and req.messages[0].content == "hi"
    assert (req.max_tokens, req.temperature, req.stop, req.seed) == (5, 0.0, ("\n",), 3)
    assert req.strategy == "merged" and req.drafters == ("a", "b")
    assert parse_chat(CHAT).temperature == 1.0  # OpenAI's default
    # logits / 1e-45 overflow: temperatures that small decode greedily instead of failing
    assert parse_chat({**CHAT, "temperature": 1e-45}).temperature == 0.0
    assert parse_chat({**CHAT, "temperature": 1e-3}).temperature == 1e-3


def test_content_parts_and_max_completion_tokens():
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "b"}]}],
            "max_completion_tokens": 7}
    req = parse_chat(body)
    assert req.messages[0].content == "ab" and req.max_tokens == 7 and req.model is None


def test_completion_prompt_forms():
    assert parse_completion({"prompt": "x"}).prompt == "x"
    assert parse_completion({"prompt": ["x"]}).prompt == "x"
    assert parse_completion({"prompt": [1, 2]}).prompt == (1, 2)


def test_stream_usage_only_when_streaming():
    options = {"stream_options": {"include_usage": True}}
    assert parse_chat({**CHAT, "stream": True, **options}).include_usage
    assert not parse_chat({**CHAT, **options}).include_usage


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"n": 2}, "n"),
        ({"model": 7}, "model"),
        ({"strategy": 1}, "strategy"),
        ({"drafters": []}, "drafters"),
        ({"drafters": [1]}, "drafters"),
    ],
)
def test_bad_chat_fields_name_the_param(patch, param):
    with pytest.raises(ApiError) as err:
        parse_chat({**CHAT, **patch})
    assert err.value.status == 400 and err.value.param == param
    body = err.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]


@pytest.mark.parametrize("prompt", [None, "", [], ["a", "b"], [1, -2], {"a": 1}, 5])
def test_bad_prompts(prompt):
    with pytest.raises(ApiError) as err:
        parse_completion({} if prompt is None else {"prompt": prompt})
    assert err.value.param == "prompt"


@pytest.mark.parametrize("raw", [b"{", b"", b"[]", b"null", b"\xff\xfe"])
def test_bad_json(raw):
    with pytest.raises(ApiError) as err:
        parse_json(raw)
    assert err.value.status == 400 and err.value.param == "body"


def test_response_shapes():
    head = ResponseHead.new("m", "chat")
    body = head.body("hi", "stop", {"prompt_tokens": 1})
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    first = head.chunk(None, first=True)["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": ""}
    assert head.usage_chunk({"x": 1})["choices"] == []
    text = ResponseHead.new("m", "completion").chunk("a", "length")
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "a"
    assert sse({"a": 1}) == b'data: {"a": 1}\n\n'
    assert json.loads(sse(body).decode()[len("data: "):]) == body


def test_stop_text_holds_back_possible_stop_prefix():
    stream = StopText(("END",))
    assert stream.feed("hello E") == ("hello ", False)  # "E" may start END
    assert stream.feed("hello EN") == ("", False)
    assert stream.feed("hello ENx") == ("ENx", False)  # not a stop after all
    assert stream.feed("hello ENx and END more") == (" and ", True)


def test_stop_text_final_and_replacement_char():
    stream = StopText(())
    assert stream.feed("caf\ufffd") == ("caf", False)  # half a UTF-8 character
    assert stream.feed("café") == ("é", False)
    assert StopText(("xy",)).feed("abx", final=True) == ("abx", False)
    assert held_back("abc", ("cd", "bcx")) == 2


def test_stop_text_picks_earliest_stop():
    assert StopText(("b", "a")).feed("xxab") == ("xx", True)
