"""Loss masks on SmolLM2's real tokenizer (ChatML) and on a Llama-3 template."""

from __future__ import annotations

import copy

import pytest

from taps_ray.data.records import Message
from taps_ray.data.render import (
    format_masked,
    masked_texts,
    render_conversation,
    render_prompt,
)
from taps_ray.errors import TapsError

TWO_TURNS = (
    Message("user", "What is 2 + 2?"),
    Message("assistant", "2 + 2 = 4."),
    Message("user", "And times 3?"),
    Message("assistant", "That makes 12, since 4 × 3 = 12.\n\nAnything else?"),
)
ASSISTANT = [m.content for m in TWO_TURNS if m.role == "assistant"]

TEMPLATES = [("smollm2_tokenizer", "<|im_end|>"), ("llama3_tokenizer", "<|eot_id|>")]


@pytest.mark.parametrize(("fixture", "end_of_turn"), TEMPLATES)
def test_mask_is_assistant_content_plus_end_of_turn(request, fixture, end_of_turn):
    tokenizer = request.getfixturevalue(fixture)
    example = render_conversation(tokenizer, TWO_TURNS)
    assert len(example.input_ids) == len(example.loss_mask)
    assert masked_texts(tokenizer, example) == [text + end_of_turn for text in ASSISTANT]


@pytest.mark.parametrize(("fixture", "end_of_turn"), TEMPLATES)
def test_mask_excludes_headers_and_trailing_newline(request, fixture, end_of_turn):
    tokenizer = request.getfixturevalue(fixture)
    example = render_conversation(tokenizer, TWO_TURNS)
    shown = format_masked(tokenizer, example)
    assert shown.count("«") == 2 and shown.count("»") == 2
    assert f"«{ASSISTANT[0]}{end_of_turn}»" in shown
    assert "assistant\n«" in shown or "assistant<|end_header_id|>\n\n«" in shown
    # the tokens around each masked run are unmasked: header before, newline / next turn after
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    closers = [k for k, t in enumerate(example.input_ids) if t == end_id and example.loss_mask[k]]
    assert len(closers) == 2
    assert all(k + 1 == len(example.loss_mask) or not example.loss_mask[k + 1] for k in closers)


def test_masked_tokens_equal_standalone_tokenization(smollm2_tokenizer):
    # The masked ids are the content's own tokens: no merge across the template boundary.
    example = render_conversation(smollm2_tokenizer, TWO_TURNS[:2])
    masked = [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m]
    own = smollm2_tokenizer(ASSISTANT[0] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert masked == own


def test_truncation(smollm2_tokenizer):
    full = render_conversation(smollm2_tokenizer, TWO_TURNS)
    cut = render_conversation(smollm2_tokenizer, TWO_TURNS, max_length=40)
    assert cut.input_ids == full.input_ids[:40] and cut.loss_mask == full.loss_mask[:40]


def test_no_assistant_turn_gives_zero_mask(smollm2_tokenizer):
    example = render_conversation(smollm2_tokenizer, TWO_TURNS[:1])
    assert example.input_ids and example.num_masked == 0


def test_system_message_is_never_masked(smollm2_tokenizer):
    convo = (Message("system", "Be brief."), *TWO_TURNS[:2])
    assert masked_texts(smollm2_tokenizer, render_conversation(smollm2_tokenizer, convo)) == [
        ASSISTANT[0] + "<|im_end|>"]


@pytest.mark.parametrize(
    ("fixture", "suffix"),
    [("smollm2_tokenizer", "<|im_start|>assistant\n"),
     ("llama3_tokenizer", "<|start_header_id|>assistant<|end_header_id|>\n\n")],
)
def test_render_prompt_ends_with_generation_prompt(request, fixture, suffix):
    tokenizer = request.getfixturevalue(fixture)
    ids = render_prompt(tokenizer, TWO_TURNS[:1])
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text.endswith(TWO_TURNS[0].content + ("<|im_end|>\n" if "im" in suffix else
                                                 "<|eot_id|>") + suffix)


def test_tokenizer_without_template_is_a_user_error(smollm2_tokenizer):
    bare = copy.deepcopy(smollm2_tokenizer)
    bare.chat_template = None
    with pytest.raises(TapsError, match="has no chat template"):
        render_conversation(bare, TWO_TURNS)
    with pytest.raises(TapsError, match="has no chat template"):
        render_prompt(bare, TWO_TURNS[:1])


def test_llama3_template_trims_content(llama3_tokenizer):
    convo = (Message("user", "hi"), Message("assistant", "  padded answer \n"))
    example = render_conversation(llama3_tokenizer, convo)
    assert masked_texts(llama3_tokenizer, example) == ["padded answer<|eot_id|>"]


def test_empty_assistant_content_masks_only_end_of_turn(smollm2_tokenizer):
    convo = (Message("user", "hi"), Message("assistant", ""))
    example = render_conversation(smollm2_tokenizer, convo)
    assert masked_texts(smollm2_tokenizer, example) == ["<|im_end|>"]


def test_history_rewriting_template_is_a_user_error(smollm2_tokenizer):
    counting = copy.deepcopy(smollm2_tokenizer)
    counting.chat_template = "{{ messages | length }}" + smollm2_tokenizer.chat_template
    with pytest.raises(TapsError, match="does not render message 1 incrementally"):
        render_conversation(counting, TWO_TURNS)
