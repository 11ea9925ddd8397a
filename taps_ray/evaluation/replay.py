"""Replay evaluation at T = 0: tau without live decoding.

Greedy output is fully determined by the target, so its continuation is generated once per
(target, benchmark, prompt, turn, max_new_tokens), cached on disk and shared by every drafter.
One teacher-forced target pass gives every feature; each drafter (or strategy) then walks the
sequence: draft a tree at the current position, accept the longest path that matches the
continuation, commit accepted + bonus, jump ahead. Per extra drafter only drafter work is paid.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Record, turn_messages, user_turns
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import default_stop_ids, generate_plain
from taps_ray.decoding.kv import causal_mask
from taps_ray.decoding.positions import draft_at_positions
from taps_ray.decoding.proposer import DrafterSession, Session
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import Strategy
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, children_lists
from taps_ray.evaluation.report import write_atomic
from taps_ray.models.target import cache_dir


@dataclass(frozen=True)
class ReplayPrompt:
    """One (prompt, turn) with the target's cached greedy continuation."""

    benchmark: str
    prompt_id: str
    turn: int
    prompt_ids: list[int]
    continuation: list[int]  # greedy new tokens (ends with EOS or at max_new_tokens)
    features_path: str | None = None  # where teacher_features caches this item's features


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
    features = str(path.with_suffix(".pt"))
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["prompt_ids"] == prompt_ids:
            return ReplayPrompt(record.source, record.id, turn, prompt_ids,
                                cached["continuation"], features)
    tokens = generate_plain(target, prompt_ids, SamplingParams(), max_new).tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"prompt_ids": prompt_ids, "continuation": tokens}).encode())
    return ReplayPrompt(record.source, record.id, turn, prompt_ids, tokens, features)


def teacher_features(runner: TargetRunner, item: ReplayPrompt) -> torch.Tensor:
    """[L + N, d] target features of prompt + continuation from one teacher-forced pass
    ([L + N, 4d] when the runner returns EAGLE-3 aux layers).

    Cached at `item.features_path` (beside the continuation) when set, so every later drafter,
    epoch evaluation or sweep trial on the same prompts pays no target work at all; features
    with aux layers are cached under a name that carries them (`features_file`).
    """
    ids = item_ids(item, runner.device)
    path = features_file(item.features_path, runner.aux_layers) if item.features_path else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if torch.equal(cached["ids"], ids.cpu()):
                return cached["features"].to(runner.device)
        except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError):
            pass  # a damaged cache file is recomputed below
    features = runner.prefill(ids)
    if path is not None:
        blob = io.BytesIO()
        torch.save({"ids": ids.cpu(), "features": features.cpu()}, blob)
        write_atomic(path, blob.getvalue())
    return features


def features_file(path: str | Path, aux_layers: Sequence[int]) -> Path:
    """Where features of `aux_layers` are cached: `path` itself without aux layers (so caches
    written before EAGLE-3 stay valid), else e.g. x.aux0-1-2.pt beside it."""
    path = Path(path)
    if not aux_layers:
        return path
    return path.with_name(f"{path.stem}.aux{'-'.join(str(i) for i in aux_layers)}{path.suffix}")


def replay(
    sessions: Sequence[Session],
    strategy: Strategy,
    item: ReplayPrompt,
    features: torch.Tensor,  # [L + N, d or 4d] from teacher_features
    tree: TreeConfig,
    block: int = 32,
) -> ReplayResult:
    """Walk one continuation with `strategy` over `sessions`, as live T=0 decoding would.

    block > 0 drafts an EAGLE head's trees `block` positions per batched pass (`known_trees`;
    pass `KnownTrees` of this item to share drafted trees between strategies over the same
    drafters); block = 0 drafts step by step through the sessions, as the live engine does.
    """
    seq = item_ids(item, features.device)
    start, total = len(item.prompt_ids), len(item.continuation)
    if block:
        sessions = [known_trees(s, features, seq, block) for s in sessions]
    for s in sessions:
        s.reset(int(seq[0]))
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


def known_trees(session: Session, features: torch.Tensor, seq: torch.Tensor,
                block: int = 32) -> Session:
    """What replay drafts through: an EAGLE head's trees `block` positions at a time
    (`KnownTrees`); other sessions as they are (prompt lookup: its tree at committed length S
    reads tokens 0..S-1 only, cheaply, so stepping it along the teacher tokens is exact)."""
    if isinstance(session, DrafterSession):
        return KnownTrees(session, features, seq, block)
    return session


class KnownTrees:
    """A drafter's trees over one known sequence, drafted `block` positions at a time.

    At T = 0 the committed tokens are the target's continuation whatever was accepted before,
    so the drafter's state at committed length S is always the teacher pairs 0..S-2: a tree
    depends on S only. The live engine pays `depth + 1` small drafter calls per step, whose
    fixed cost dominates on CPU; here one call per round serves `block` positions, drafted on
    first use (a drafter that sits out, as under prompt routing, drafts nothing more).
    Stands in for a `DrafterSession` in `replay` and strategies (`reset`, `extend` and `draft`
    only track the position; drafted trees are kept across resets, so strategies over the same
    drafter share them).
    """

    def __init__(self, session: DrafterSession, features: torch.Tensor, seq: torch.Tensor,
                 block: int = 32):
        self.session, self.features, self.seq, self.block = session, features, seq, block
        self.length = 0  # committed pairs, as in DrafterSession: the next tree is at S = length + 1
        self.trees: dict[int, DraftTree] = {}
        self.cache = None  # the drafter's cache over every teacher pair
        self.hidden: torch.Tensor | None = None  # [pairs, d] its output at each pair

    @property
    def drafter(self) -> object:
        """The head drafting these trees (its metadata, e.g. the confidence calibration, is
        what strategies read from any session)."""
        return self.session.drafter

    @property
    def last_hidden(self) -> torch.Tensor | None:
        """The head's output at the newest committed pair (as `DrafterSession.last_hidden`:
        what a context calibration reads after `draft`)."""
        if self.hidden is None or self.length < 1:
            return None
        return self.hidden[self.length - 1]

    def reset(self, first_token: int | None = None) -> None:
        self.length = 0

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.length += next_tokens.numel()  # the pairs are the teacher's: nothing to run

    def draft(self, tree: TreeConfig) -> DraftTree:
        committed = self.length + 1
        if committed not in self.trees:
            if self.cache is None:
                self._run_teacher_pairs()
            lengths = range(committed, min(committed + self.block, self.seq.numel()))
            trees = draft_at_positions(self.session, self.cache, self.hidden, lengths, tree)
            self.trees.update(zip(lengths, trees, strict=True))
        return self.trees[committed]

    def _run_teacher_pairs(self) -> None:
        """Pairs (f_t, x_{t+1}) for t = 0..n-1, n = len(seq) - 2: all a last tree needs."""
        s, n = self.session, self.seq.numel() - 2
        self.cache = s.new_cache()
        with torch.inference_mode():
            self.hidden = s.run_pairs(
                s.pair_inputs(self.features[:n]), self.seq[1 : n + 1],
                torch.arange(n, device=s.device), causal_mask(0, n, s.dtype, s.device),
                self.cache,
            )


def item_ids(item: ReplayPrompt, device: torch.device | str = "cpu") -> torch.Tensor:
    """[L + N] prompt + continuation ids: the teacher sequence replay walks."""
    return torch.tensor(item.prompt_ids + item.continuation, device=device)


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
