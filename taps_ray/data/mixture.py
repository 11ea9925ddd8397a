"""Training-data mixtures ("math=0.5,chat=0.5") and seeded benchmark subsets.

Everything here is deterministic for a seed: each source is sampled with its own
`random.Random(f"{seed}/{name}")` (string seeds hash the same in every process), and the
concatenation is shuffled with `random.Random(seed)`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from taps_ray.data.records import Record
from taps_ray.data.registry import dataset_names, get_spec, load_records
from taps_ray.errors import TapsError

DOMAIN_ALIASES = {"math": "mathinstruct", "chat": "sharegpt"}  # short names used in drafter names
RATIO_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Mixture:
    records: list[Record]  # shuffled, deterministic for (ratios, total, seed)
    counts: dict[str, int]  # records drawn per source; sums to the requested total
    ratios: dict[str, float]  # source name -> share, sums to 1
    seed: int


def valid_domains() -> list[str]:
    return [*DOMAIN_ALIASES, *dataset_names("source")]


def parse_mixture(spec: str) -> dict[str, float]:
    """"math=0.5,chat=0.5" -> {"mathinstruct": 0.5, "sharegpt": 0.5}."""
    pairs = [_parse_item(item, spec) for item in spec.split(",") if item.strip()]
    if not pairs:
        raise TapsError(f"mixture '{spec}' is empty; write it like 'math=0.5,chat=0.5'")
    return _ratios_from_pairs(pairs)


def _ratios_from_pairs(pairs: list[tuple[str, float]]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for domain, ratio in pairs:
        name = _canonical(domain)
        if name in ratios:
            raise TapsError(f"mixture names '{name}' twice (aliases count); give each domain once")
        ratios[name] = ratio
    return _checked_ratios(ratios)


def _parse_item(item: str, spec: str) -> tuple[str, float]:
    domain, sep, value = item.partition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not sep or not domain.strip() or not math.isfinite(ratio):
        raise TapsError(
            f"mixture item '{item.strip()}' in '{spec}' is malformed; write DOMAIN=RATIO pairs "
            "separated by commas, like 'math=0.5,chat=0.5'"
        )
    return domain.strip(), ratio


def _canonical(domain: str) -> str:
    name = DOMAIN_ALIASES.get(domain, domain)
    if name not in dataset_names("source"):
        raise TapsError(f"unknown mixture domain '{domain}'; valid: {', '.join(valid_domains())}")
    return name


def _checked_ratios(ratios: dict[str, float]) -> dict[str, float]:
    for name, ratio in ratios.items():
        if not math.isfinite(ratio) or ratio < 0:
            raise TapsError(f"mixture ratio for '{name}' is {ratio}; use a share between 0 and 1")
    total = sum(ratios.values())
    if abs(total - 1.0) > RATIO_TOLERANCE:
        raise TapsError(f"mixture ratios sum to {total:g}, not 1; adjust them so they add up to 1")
    return ratios


def largest_remainder(ratios: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to `ratios` that sum exactly to `total`."""
    quotas = {name: ratio * total for name, ratio in ratios.items()}
    counts = {name: math.floor(q) for name, q in quotas.items()}
    # Hand the leftover units to the largest fractional parts (name breaks ties).
    order = sorted(quotas, key=lambda name: (-(quotas[name] - counts[name]), name))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def build_mixture(spec: dict[str, float] | str, total: int, seed: int) -> Mixture:
    """`total` records drawn from the sources in proportion `spec`, shuffled by `seed`."""
    if isinstance(spec, str):
        ratios = parse_mixture(spec)
    else:
        ratios = _ratios_from_pairs([(name, float(ratio)) for name, ratio in spec.items()])
    if total < 0:
        raise TapsError(f"mixture total must be >= 0 (got {total}); pass a record count")
    counts = largest_remainder(ratios, total)
    records = [rec for name in sorted(counts) for rec in _draw(name, counts[name], seed)]
    random.Random(seed).shuffle(records)
    return Mixture(records, counts, ratios, seed)


def _draw(name: str, count: int, seed: int) -> list[Record]:
    if count == 0:
        return []  # a zero share never loads (or needs) the source
    available = load_records(name)
    if count > len(available):
        raise TapsError(
            f"mixture asks for {count} records from '{name}' but only {len(available)} are "
            "available; lower the total or that source's ratio"
        )
    return random.Random(f"{seed}/{name}").sample(available, count)


def benchmark_subset(name: str, n: int | None, seed: int) -> list[Record]:
    """`n` prompts of benchmark `name` drawn by `seed` (None = all), in source order."""
    spec = get_spec(name)
    if spec.kind != "benchmark":
        raise TapsError(
            f"'{name}' is a training source, not a benchmark; valid benchmarks: "
            f"{', '.join(dataset_names('benchmark'))}"
        )
    records = load_records(name)
    if n is None:
        return records
    if not 0 <= n <= len(records):
        raise TapsError(
            f"benchmark '{name}' has {len(records)} prompts but {n} were requested; "
            f"pass a number from 0 to {len(records)}"
        )
    picked = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in picked]
