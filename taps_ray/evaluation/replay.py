"""Replay evaluation at T = 0: tau without live decoding.

Greedy output is fully determined by the target, so its continuation is generated once per
(target, benchmark, prompt, turn, max_new_tokens), cached on disk and shared by every drafter.
One teacher-forced target pass gives every feature; each drafter (or strategy) then walks the
sequence: draft a tree at the current position, accept the longest path that matches the
continuation, commit accepted + bonus, jump ahead. Per extra drafter only drafter work is paid.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Record, turn_messages, user_turns
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import default_stop_ids, generate_plain
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import Strategy
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, children_lists
from taps_ray.models.target import cache_dir


@dataclass(frozen=True)
class ReplayPrompt:
    """One (prompt, turn) with the target's cached greedy continuation."""

    benchmark: str
    prompt_id: str
    turn: int
    prompt_ids: list[int]
    continuation: list[int]  # greedy new tokens (ends with EOS or at max_new_tokens)


@dataclass
class ReplayResult:
    committed: list[int] = field(default_factory=list)  # tokens committed per step
    accepted: list[int] = field(default_factory=list)  # draft tokens matched per step
    routes: list[int | None] = field(default_factory=list)
    verify_tokens: list[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.committed)

    @property
    def tau(self) -> float:
        return sum(self.committed) / self.steps if self.steps else 0.0


def continuations(
    target, records: Sequence[Record], max_new_tokens: int, progress: bool = False
) -> list[ReplayPrompt]:
    """Greedy continuations for every user turn of `records`, cached on disk."""
    out: list[ReplayPrompt] = []
    folder = cache_dir() / "replay" / target_key(target)
    items = records
    if progress:
        from tqdm import tqdm

        items = tqdm(records, desc="greedy continuations", unit="prompt")
    for record in items:
        answers: list[str] = []
        for turn in range(len(user_turns(record))):
            item = _continuation(target, record, turn, answers, max_new_tokens, folder)
            answers.append(target.tokenizer.decode(item.continuation, skip_special_tokens=True))
            out.append(item)
    return out


def _continuation(target, record, turn, answers, max_new, folder: Path) -> ReplayPrompt:
    path = folder / record.source / f"{_safe(record.id)}.t{turn}.n{max_new}.json"
    prompt_ids = render_prompt(target.tokenizer, turn_messages(record, turn, answers))
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["prompt_ids"] == prompt_ids:
            return ReplayPrompt(record.source, record.id, turn, prompt_ids, cached["continuation"])
    tokens = generate_plain(target, prompt_ids, SamplingParams(), max_new).tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"prompt_ids": prompt_ids, "continuation": tokens}))
    tmp.replace(path)
    return ReplayPrompt(record.source, record.id, turn, prompt_ids, tokens)


def teacher_features(runner: TargetRunner, item: ReplayPrompt) -> torch.Tensor:
    """[L + N, d] target features of prompt + continuation from one teacher-forced pass."""
    ids = torch.tensor(item.prompt_ids + item.continuation, device=runner.device)
    return runner.prefill(ids)


def replay(
    sessions: list[DrafterSession],
    strategy: Strategy,
    item: ReplayPrompt,
    features: torch.Tensor,  # [L + N, d] from teacher_features
    tree: TreeConfig,
) -> ReplayResult:
    """Walk one continuation with `strategy` over `sessions`, as live T=0 decoding would."""
    seq = torch.tensor(item.prompt_ids + item.continuation, device=features.device)
    start, total = len(item.prompt_ids), len(item.continuation)
    for s in sessions:
        s.reset()
        s.extend(features[:start], seq[1 : start + 1])
    strategy.start()
    result, done = ReplayResult(), 1  # the prefill emitted continuation[0]
    while done < total:
        proposal = strategy.propose(sessions, tree)
        matched = match_length(proposal.tree, item.continuation[done:])
        strategy.observe(proposal, matched)
        committed = min(matched + 1, total - done)
        _record(result, proposal, matched, committed)
        pos = start + done - 1  # position of the root (last committed token)
        for s in sessions:
            s.extend(features[pos : pos + committed], seq[pos + 1 : pos + 1 + committed])
        done += committed
    return result


def match_length(tree: DraftTree, upcoming: Sequence[int]) -> int:
    """Length of the longest root-to-node path whose tokens equal `upcoming` (greedy acceptance)."""
    children = children_lists(tree)
    tokens = tree.tokens.tolist()
    node, matched = -1, 0
    while matched < len(upcoming):
        nxt = next((c for c in children[node + 1] if tokens[c] == upcoming[matched]), None)
        if nxt is None:
            break
        node, matched = nxt, matched + 1
    return matched


def target_key(target) -> str:
    """Cache key of a target: its name plus a hash of its config and stop tokens."""
    blob = target.model.config.to_json_string() + str(sorted(default_stop_ids(target)))
    return f"{_safe(str(target.name))}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _record(result: ReplayResult, proposal, matched: int, committed: int) -> None:
    result.committed.append(committed)
    result.accepted.append(matched)
    result.routes.append(proposal.route)
    result.verify_tokens.append(proposal.tree.tokens.numel() + 1)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
