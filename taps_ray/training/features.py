"""Target features for drafter training: a sharded on-disk cache, or computed online.

The cache lives at `cache_dir()/features/<key>/`, key = sha256 of (target name, target config +
dtype hash, tokenizer fingerprint, data spec, feature dtype, EAGLE-3 aux layers if any)[:16].
Rows are [T, d] final features, or [T, 4d] = [final | aux_1 | aux_2 | aux_3] for EAGLE-3.
Conversation i is stored in shard i // shard_size. Finished shards are skipped when a build is
rerun; shards are written under a temp name and renamed; `manifest.json` is written last and
marks a complete cache.

Both sources below give the trainer the same interface (`FeatureSource`): `lengths()`,
`fetch(indices)`, `token_arrays()`, `hidden_size` and `aux_layers`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from taps_ray.data.render import RenderedExample
from taps_ray.errors import TapsError
from taps_ray.training.examples import DataSpec, require_assistant_tokens
from taps_ray.training.extract import ConversationFeatures, iter_conversation_features
from taps_ray.training.shards import (
    ShardReader,
    read_manifest,
    remove_stale_temps,
    shard_is_complete,
    shard_name,
    write_manifest,
    write_shard,
)

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
FORMAT_VERSION = 1
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")


class FeatureSource(Protocol):
    """What the trainer reads: conversations by index, with their lengths known up front."""

    hidden_size: int  # d of the target (rows are d or 4d wide)
    aux_layers: tuple[int, ...]  # EAGLE-3 hidden-state indices after the final columns; ()

    def __len__(self) -> int: ...

    def lengths(self) -> list[int]: ...

    def fetch(self, indices: Sequence[int]) -> list[ConversationFeatures]: ...

    def token_arrays(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides the cached features; its hash names the cache folder."""

    target: str  # target alias / id / path as given
    target_hash: str  # sha256[:16] of the target config and compute dtype
    tokenizer: str  # tokenizer fingerprint ("" for pre-tokenised examples without one)
    data: DataSpec
    dtype: str  # storage type of the features: fp16 | fp32
    aux_layers: tuple[int, ...] = ()  # EAGLE-3 hidden-state indices stored after the final

    @classmethod
    def for_target(
        cls, target: object, data: DataSpec, dtype: str, aux_layers: tuple[int, ...] = ()
    ) -> FeatureSpec:
        from taps_ray.models.drafter import tokenizer_fingerprint

        if dtype not in DTYPES:
            raise TapsError(f"training.feature_dtype '{dtype}' is invalid; use fp16 or fp32")
        tokenizer = getattr(target, "tokenizer", None)
        fingerprint = tokenizer_fingerprint(tokenizer) if tokenizer is not None else ""
        aux = tuple(int(i) for i in aux_layers)
        return cls(str(target.name), target_hash(target), fingerprint, data, dtype, aux)

    def as_dict(self) -> dict:
        blob = {**asdict(self), "data": self.data.as_dict()}  # the data spec drops unused keys
        if not self.aux_layers:
            del blob["aux_layers"]  # keeps the keys of EAGLE-2 / HASS caches built before it
        else:
            blob["aux_layers"] = list(self.aux_layers)
        return blob

    def key(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def target_hash(target: object) -> str:
    """Hash of the target's architecture config and compute dtype (both change the features)."""
    config = target.model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    blob = json.dumps(config, sort_keys=True, default=str) + str(target.dtype)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def features_root() -> Path:
    from taps_ray.models.target import cache_dir

    return cache_dir() / "features"


class FeatureCache:
    """A finished on-disk feature cache (see the module docstring for the layout)."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self.hidden_size = int(manifest["hidden_size"])
        self.aux_layers = tuple(manifest["spec"].get("aux_layers", ()))
        self.shard_size = int(manifest["shard_size"])
        self._lengths = [int(n) for n in manifest["lengths"]]
        self._readers: dict[int, ShardReader] = {}

    @classmethod
    def folder_for(cls, spec: FeatureSpec, root: Path | None = None) -> Path:
        return Path(root or features_root()) / spec.key()

    @classmethod
    def find(cls, spec: FeatureSpec, root: Path | None = None) -> FeatureCache | None:
        """The complete cache for `spec`, or None when it has not been built (or finished)."""
        folder = cls.folder_for(spec, root)
        if not (folder / "manifest.json").is_file():
            return None
        cache = cls.open(folder)
        cache.check_spec(spec)
        return cache

    @classmethod
    def open(cls, path: str | Path, target: object | None = None) -> FeatureCache:
        """Open a finished cache; with `target`, refuse one built for another target."""
        manifest = read_manifest(Path(path))
        if manifest.get("version") != FORMAT_VERSION:
            raise TapsError(
                f"feature cache '{path}' has format version {manifest.get('version')}, "
                f"expected {FORMAT_VERSION}; delete it and rebuild"
            )
        cache = cls(Path(path), manifest)
        if target is not None:
            cache.check_target(target)
        return cache

    @classmethod
    def build(
        cls,
        target: object,
        examples: Sequence[RenderedExample],
        spec: FeatureSpec,
        *,
        root: Path | None = None,
        shard_size: int = 256,
        max_batch_tokens: int | None = None,
        progress: bool = True,
        extra: dict | None = None,
    ) -> FeatureCache:
        """Run the target over `examples` once and store the features (resumable, atomic)."""
        found = cls.find(spec, root)
        if found is not None:
            return found
        require_assistant_tokens(examples, spec.data)
        folder = cls.folder_for(spec, root)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
        hidden = int(target.model.config.hidden_size)
        _announce(folder, examples, hidden * (1 + len(spec.aux_layers)), spec.dtype, progress)
        builder = _ShardBuilder(target, examples, spec, folder, shard_size, max_batch_tokens)
        shards, rate = builder.run(progress)
        manifest = _manifest(spec, examples, hidden, shard_size, shards, rate, extra or {})
        write_manifest(folder, manifest)
        if progress:
            print(f"feature cache ready: {folder} ({rate:,.0f} tokens/s)", file=sys.stderr)
        return cls(folder, manifest)

    def check_spec(self, spec: FeatureSpec) -> None:
        if self.manifest.get("key") != spec.key():
            raise TapsError(
                f"feature cache '{self.folder}' holds key {self.manifest.get('key')}, not "
                f"{spec.key()}; delete the folder and rebuild"
            )

    def check_target(self, target: object) -> None:
        built = self.manifest["spec"]
        if built["target"] != str(target.name) or built["target_hash"] != target_hash(target):
            raise TapsError(
                f"feature cache '{self.folder}' was built for target '{built['target']}', not "
                f"'{target.name}'; build a cache for this target"
            )

    @property
    def extract_tokens_per_s(self) -> float:
        return float(self.manifest.get("extract_tokens_per_s", 0.0))

    def __len__(self) -> int:
        return len(self._lengths)

    def lengths(self) -> list[int]:
        return list(self._lengths)

    def __getitem__(self, i: int) -> ConversationFeatures:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = i // self.shard_size
        return self._reader(k).get(i - k * self.shard_size)

    def fetch(self, indices: Sequence[int]) -> list[ConversationFeatures]:
        return [self[i] for i in indices]

    def __iter__(self) -> Iterator[ConversationFeatures]:
        return (self[i] for i in range(len(self)))

    def token_arrays(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input_ids, loss_mask) of each shard, concatenated over its conversations."""
        for k in range(len(self.manifest["shards"])):
            yield self._reader(k).tokens()

    def _reader(self, k: int) -> ShardReader:
        if k not in self._readers:
            self._readers[k] = ShardReader(self.folder / self.manifest["shards"][k]["file"])
        return self._readers[k]


class OnlineFeatures:
    """The same conversations as a cache would hold, computed by the target on every fetch."""

    def __init__(
        self,
        target: object,
        examples: Sequence[RenderedExample],
        dtype: str = "fp32",
        max_batch_tokens: int | None = None,
        aux_layers: tuple[int, ...] = (),  # EAGLE-3: rows [final | aux...]
    ):
        self.target = target
        self.aux_layers = tuple(aux_layers)
        self.examples = list(examples)
        self.store_dtype = DTYPES[dtype]
        self.max_batch_tokens = max_batch_tokens
        self.hidden_size = int(target.model.config.hidden_size)

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> list[int]:
        return [len(ex.input_ids) for ex in self.examples]

    def fetch(self, indices: Sequence[int]) -> list[ConversationFeatures]:
        chosen = [self.examples[i] for i in indices]
        got = dict(iter_conversation_features(self.target, chosen, self.store_dtype,
                                              self.max_batch_tokens, self.aux_layers))
        return [got[j] for j in range(len(chosen))]

    def __iter__(self) -> Iterator[ConversationFeatures]:
        for start in range(0, len(self), 256):
            yield from self.fetch(range(start, min(start + 256, len(self))))

    def token_arrays(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for ex in self.examples:
            yield torch.tensor(ex.input_ids), torch.tensor(ex.loss_mask)


class _ShardBuilder:
    """Fills the missing shards of one cache folder.

    Shard k+1 is computed while a background thread writes shard k, so disk writes overlap
    the target's forwards; at most one finished shard waits in memory.
    """

    def __init__(self, target, examples, spec: FeatureSpec, folder: Path, size: int, budget):
        self.target, self.examples, self.folder = target, examples, folder
        self.size, self.budget, self.store_dtype = size, budget, DTYPES[spec.dtype]
        self.aux_layers = spec.aux_layers

    def run(self, progress: bool) -> tuple[list[dict], float]:
        """Write every missing shard; returns (shard entries, tokens/s of the extraction)."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        n = len(self.examples)
        bar = tqdm(total=sum(len(ex.input_ids) for ex in self.examples), unit="tok",
                   unit_scale=True, desc="target features", disable=not progress)
        entries, done_tokens, pending = [], 0, None
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as writer:
            for k, start in enumerate(range(0, n, self.size)):
                index = list(range(start, min(start + self.size, n)))
                path = self.folder / shard_name(k)
                chosen = [self.examples[i] for i in index]
                tokens = sum(len(ex.input_ids) for ex in chosen)
                if not shard_is_complete(path, [ex.input_ids for ex in chosen]):
                    items = self._extract(chosen)
                    if pending is not None:
                        pending.result()  # one shard in flight at most; raises its errors
                    pending = writer.submit(write_shard, path, index, items)
                    done_tokens += tokens
                bar.update(tokens)
                entries.append(_shard_entry(path.name, chosen))
            if pending is not None:
                pending.result()
        bar.close()
        seconds = time.perf_counter() - began
        return entries, done_tokens / seconds if done_tokens else 0.0

    def _extract(self, chosen: list[RenderedExample]) -> list[ConversationFeatures]:
        got = dict(iter_conversation_features(self.target, chosen, self.store_dtype, self.budget,
                                              self.aux_layers))
        return [got[j] for j in range(len(chosen))]


def _shard_entry(name: str, examples: Sequence[RenderedExample]) -> dict:
    return {
        "file": name,
        "conversations": len(examples),
        "tokens": sum(len(ex.input_ids) for ex in examples),
        "assistant_tokens": sum(ex.num_masked for ex in examples),
    }


def _manifest(spec, examples, hidden, shard_size, shards, rate, extra) -> dict:
    return {
        "version": FORMAT_VERSION,
        "key": spec.key(),
        "spec": spec.as_dict(),
        "hidden_size": hidden,
        "shard_size": shard_size,
        "num_conversations": len(examples),
        "tokens": sum(s["tokens"] for s in shards),
        "assistant_tokens": sum(s["assistant_tokens"] for s in shards),
        "lengths": [len(ex.input_ids) for ex in examples],
        "shards": shards,
        "extract_tokens_per_s": round(rate, 1),
        "extra": extra,
    }


def _announce(folder: Path, examples, hidden: int, dtype: str, progress: bool) -> None:
    """Print the disk estimate (tokens x row width x bytes); refuse when the disk is too small."""
    tokens = sum(len(ex.input_ids) for ex in examples)
    need = tokens * hidden * DTYPES[dtype].itemsize + tokens * 5  # + ids (4 B) and mask (1 B)
    done = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))  # resumed build
    free = shutil.disk_usage(folder).free
    if progress:
        print(
            f"feature cache: {len(examples)} conversations, {tokens:,} tokens x {hidden} x "
            f"{DTYPES[dtype].itemsize} B = {need / 2**30:.2f} GiB in {folder} "
            f"({free / 2**30:.1f} GiB free)",
            file=sys.stderr,
        )
    if need - done > free:
        raise TapsError(
            f"the feature cache needs {need / 2**30:.1f} GiB but {folder} has "
            f"{free / 2**30:.1f} GiB free; point TAPS_CACHE_DIR at a larger disk or train online"
        )
