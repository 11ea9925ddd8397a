"""Response regeneration (self-distillation): replace dataset answers with the target's own.

Drafters learn to predict the *target*, so training on the target's own greedy answers instead
of the dataset's raises acceptance (EAGLE/SpecForge users ask for it). Answers are generated
turn by turn (turn k sees the target's own earlier answers), batched with left padding, and
cached in shards under the cache dir: a finished shard is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from taps_ray.data.records import Message, Record, turn_messages, user_turns
from taps_ray.data.render import render_prompt


def regenerate_records(target, records: Sequence[Record], spec_key: dict, max_new_tokens: int,
                       batch_size: int = 32, shard_size: int = 64, progress: bool = True,
                       max_prompt_tokens: int = 0) -> list[Record]:
    """`records` with every assistant turn replaced by the target's greedy answer.

    `max_prompt_tokens` (the training max_length): a turn whose prompt is at least this long
    gets an empty answer instead, as training would cut it away whole (one pasted document
    would otherwise pad a whole batch to its length)."""
    folder = _folder(target, spec_key, max_new_tokens)
    shards = [records[i : i + shard_size] for i in range(0, len(records), shard_size)]
    out: list[Record] = []
    bar = _bar(len(records), progress)
    for index, shard in enumerate(shards):
        path = folder / f"shard-{index:05d}.jsonl"
        done = _read_shard(path, shard)
        if done is None:
            done = _generate_shard(target, shard, max_new_tokens, batch_size,
                                   max_prompt_tokens)
            _write_shard(path, done)
        out += done
        bar.update(len(shard))
    bar.close()
    return out


def cached_prefix(target, records: Sequence[Record], spec_key: dict, max_new_tokens: int,
                  shard_size: int = 64) -> list[Record]:
    """The leading `records` whose regenerated answers are already cached (finished shards of
    the run with this `spec_key`, up to the first missing one): a still-running regeneration
    can be trained on without waiting for it or generating anything."""
    folder = _folder(target, spec_key, max_new_tokens)
    out: list[Record] = []
    for index, start in enumerate(range(0, len(records), shard_size)):
        done = _read_shard(folder / f"shard-{index:05d}.jsonl", records[start:start + shard_size])
        if done is None:
            break
        out += done
    return out


def _generate_shard(target, shard: Sequence[Record], max_new: int, batch: int,
                    max_prompt: int = 0) -> list[Record]:
    answers: list[list[str]] = [[] for _ in shard]
    turns = max(len(user_turns(r)) for r in shard)
    for turn in range(turns):
        prompts = {i: render_prompt(target.tokenizer, turn_messages(r, turn, answers[i]))
                   for i, r in enumerate(shard) if len(user_turns(r)) > turn}
        too_long = {i for i, p in prompts.items() if max_prompt and len(p) >= max_prompt}
        todo = sorted(set(prompts) - too_long, key=lambda i: len(prompts[i]))  # less padding
        for i in too_long:
            answers[i].append("")
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            texts = greedy_batch(target, [prompts[i] for i in chunk], max_new)
            for i, text in zip(chunk, texts, strict=True):
                answers[i].append(text)
    return [_with_answers(r, a) for r, a in zip(shard, answers, strict=True)]


@torch.inference_mode()
def greedy_batch(target, prompts: list[list[int]], max_new: int) -> list[str]:
    """Greedy answers for a batch of prompt ids (left-padded), decoded without special tokens."""
    pad = target.tokenizer.pad_token_id
    pad = target.tokenizer.eos_token_id if pad is None else pad
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = target.model.generate(ids.to(target.device), attention_mask=mask.to(target.device),
                                max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    return [target.tokenizer.decode(row[width:], skip_special_tokens=True).strip()
            for row in out.tolist()]


def _with_answers(record: Record, answers: list[str]) -> Record:
    messages: list[Message] = []
    for question, answer in zip(user_turns(record), answers, strict=True):
        messages += [Message("user", question), Message("assistant", answer)]
    return Record(record.id, record.source, tuple(messages), record.category, record.reference)


def _folder(target, spec_key: dict, max_new: int) -> Path:
    from taps_ray.evaluation.replay import target_key
    from taps_ray.models.target import cache_dir

    blob = json.dumps({"spec": spec_key, "max_new": max_new}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return cache_dir() / "regenerated" / target_key(target) / key


def _read_shard(path: Path, shard: Sequence[Record]) -> list[Record] | None:
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if [r["id"] for r in rows] != [r.id for r in shard]:
        return None  # another draw landed here: regenerate
    by_id = {r.id: r for r in shard}
    return [_with_answers(by_id[row["id"]], row["answers"]) for row in rows]


def _write_shard(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": r.id, "answers": [m.content for m in r.messages
                                                 if m.role == "assistant"]}) for r in records]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="regenerate responses", unit="conv", disable=not enabled)
