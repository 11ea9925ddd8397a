"""Chat-template rendering with a loss mask on exactly the assistant tokens.

The mask covers each assistant message's content tokens plus the single end-of-turn token
that closes it (`<|im_end|>` in ChatML/SmolLM2, `<|eot_id|>` in Llama-3): the drafter must
learn to predict where an answer stops. It never covers the role header / generation prompt
(the target is fed those, it does not generate them) nor the newline the template writes
after the end-of-turn token.

How spans are found: for assistant message i, the text rendered for messages[:i] with the
generation prompt must be a character prefix of the text for messages[:i+1], which must be a
prefix of the whole conversation's text. The assistant content sits between the two; token
offsets (`return_offsets_mapping`) turn those character spans into token positions.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taps_ray.data.records import Message
from taps_ray.errors import TapsError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

OPEN_MARK, CLOSE_MARK = "«", "»"  # wrap loss-masked text in format_masked


@dataclass(frozen=True)
class RenderedExample:
    input_ids: list[int]  # [seq] token ids of the templated conversation
    loss_mask: list[int]  # [seq] 1 on assistant content + its end-of-turn token, else 0

    @property
    def num_masked(self) -> int:
        return sum(self.loss_mask)


@dataclass(frozen=True)
class _Span:
    start: int  # first character of the assistant content
    content_end: int  # one past its last character; the end-of-turn token follows
    turn_end: int  # one past the template's text for this turn


def render_conversation(
    tokenizer: Tokenizer, messages: Sequence[Message], max_length: int | None = None
) -> RenderedExample:
    """Token ids and loss mask for a conversation, truncated to `max_length` tokens.

    A conversation without an assistant turn gets an all-zero mask (the caller decides
    whether to skip it).
    """
    if max_length is not None and max_length < 1:
        raise TapsError(f"max_length must be >= 1 (got {max_length}); pass a token budget or None")
    _require_template(tokenizer)
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = _template(tokenizer, chat)
    spans = [_assistant_span(tokenizer, chat, i, text)
             for i, m in enumerate(chat) if m["role"] == "assistant"]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    mask = _mask_from_spans(text, list(encoded["offset_mapping"]), spans)
    return RenderedExample(ids[:max_length], mask[:max_length])


def render_prompt(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of `messages` followed by the template's generation prompt (benchmarks)."""
    _require_template(tokenizer)
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = _template(tokenizer, chat, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def format_masked(tokenizer: Tokenizer, example: RenderedExample) -> str:
    """The decoded text with every loss-masked run wrapped in « »."""
    pieces = []
    for flag, ids in _runs(example.input_ids, example.loss_mask):
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        pieces.append(f"{OPEN_MARK}{text}{CLOSE_MARK}" if flag else text)
    return "".join(pieces)


def masked_texts(tokenizer: Tokenizer, example: RenderedExample) -> list[str]:
    """The decoded text of each loss-masked run, in order (one per assistant turn)."""
    return [
        tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for flag, ids in _runs(example.input_ids, example.loss_mask)
        if flag
    ]


def _runs(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    # Consecutive tokens with the same mask value, as (value, ids) pairs.
    runs: list[tuple[int, list[int]]] = []
    for token, flag in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == flag:
            runs[-1][1].append(token)
        else:
            runs.append((flag, [token]))
    return runs


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TapsError(
            f"tokenizer '{name}' has no chat template; use an instruct/chat model's tokenizer"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TapsError("the tokenizer must be a fast tokenizer (offsets are needed for the mask)")


def _template(tokenizer, chat: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as err:  # jinja errors, e.g. "roles must alternate"
        raise TapsError(f"the chat template rejected this conversation: {err}") from None


def _assistant_span(tokenizer, chat: list[dict], i: int, full: str) -> _Span:
    prefix = _template(tokenizer, chat[:i], add_generation_prompt=True)
    upto = _template(tokenizer, chat[: i + 1])
    if not (upto.startswith(prefix) and full.startswith(upto)):
        raise TapsError(
            f"the chat template does not render message {i} incrementally (its text for earlier "
            "messages is not a prefix of the full text); use a template without history rewriting"
        )
    body = chat[i]["content"].strip()
    at = upto.find(body, len(prefix)) if body else -1
    if at < 0:  # empty content, or the template rewrote it: mask the whole turn body
        end = len(prefix) if not body else len(upto.rstrip())
        return _Span(len(prefix), end, len(upto))
    return _Span(at, at + len(body), len(upto))


def _mask_from_spans(text: str, offsets: list, spans: list[_Span]) -> list[int]:
    # Offsets are non-decreasing, so each span's tokens are one bisected range.
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    mask = [0] * len(offsets)
    for span in spans:
        first = bisect_right(ends, span.start)  # first token ending inside the content
        after = bisect_left(starts, span.content_end)  # first token starting after it
        mask[first:after] = [1] * (after - first)
        closer = _end_of_turn_token(text, offsets, after, span.turn_end)
        if closer is not None:
            mask[closer] = 1
    return mask


def _end_of_turn_token(text: str, offsets: list, after: int, turn_end: int) -> int | None:
    # The first non-whitespace token after the content, inside the turn: the template's
    # end-of-turn marker (a single added token in every mainstream template).
    for k in range(after, len(offsets)):
        start, end = offsets[k]
        if start >= turn_end:
            return None
        if text[start:end].strip():
            return k
    return None
