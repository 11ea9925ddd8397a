"""Training examples: the data spec that decides the token stream, and records -> token ids.

A training example is a `RenderedExample` (token ids + assistant loss mask). Tests build them
by hand from token ids, so nothing below the rendering step needs a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from taps_ray.data.records import Record
from taps_ray.data.render import RenderedExample
from taps_ray.errors import TapsError


@dataclass(frozen=True)
class DataSpec:
    """What decides the conversations and their rendering (part of the feature-cache key)."""

    mixture: str  # ratio spec, e.g. "math=0.5,chat=0.5" (or a free label for synthetic data)
    total: int  # conversations drawn
    seed: int  # drives which conversations are drawn
    max_length: int  # tokens per rendered conversation (longer ones are truncated)
    regenerate: bool = False  # responses replaced by the target's own
    regenerate_max_new_tokens: int = 0  # length cap of regenerated answers (0 when off)
    max_turns: int = 0  # user turns kept per conversation (0: all)

    @classmethod
    def from_config(cls, data: object) -> DataSpec:
        """From a `DataConfig` (duck-typed to keep this module free of config imports)."""
        cap = data.regenerate_max_new_tokens if data.regenerate else 0
        return cls(data.mixture, data.total, data.seed, data.max_length, data.regenerate, cap,
                   data.max_turns)

    def as_dict(self) -> dict:
        blob = asdict(self)
        if not self.regenerate:
            del blob["regenerate_max_new_tokens"]  # keeps keys of caches built before the field
        if not self.max_turns:
            del blob["max_turns"]  # likewise
        return blob

    def draw(self) -> tuple[list[Record], dict]:
        """The conversations this spec draws (cut to `max_turns`) and their counts per source."""
        from taps_ray.data.mixture import build_mixture
        from taps_ray.data.records import first_turns

        mixture = build_mixture(self.mixture, self.total, self.seed)
        records = list(mixture.records)
        if self.max_turns:
            records = [first_turns(r, self.max_turns) for r in records]
        return records, dict(mixture.counts)


def render_examples(
    tokenizer: object, records: Sequence[Record], max_length: int, progress: bool = False
) -> tuple[list[RenderedExample], int]:
    """Render records with the chat template; drop those with no assistant token left.

    Returns (examples, skipped): `skipped` counts conversations whose loss mask is empty after
    truncation to `max_length` (nothing to learn from them).
    """
    from taps_ray.data.render import render_conversation

    items = records
    if progress:
        from tqdm import tqdm

        items = tqdm(records, desc="render conversations", unit="conv")
    examples, skipped = [], 0
    for record in items:
        example = render_conversation(tokenizer, record.messages, max_length)
        if example.num_masked == 0:
            skipped += 1
            continue
        examples.append(example)
    return examples, skipped


def require_assistant_tokens(examples: Sequence[RenderedExample], spec: DataSpec) -> None:
    """A data spec whose conversations hold no assistant token cannot train a drafter."""
    if not any(example.num_masked for example in examples):
        raise TapsError(
            f"data spec (mixture '{spec.mixture}', total {spec.total}, max_length "
            f"{spec.max_length}) yields zero assistant tokens; raise data.total or "
            "data.max_length"
        )
