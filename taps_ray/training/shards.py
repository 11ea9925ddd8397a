"""On-disk shards of the feature cache: one safetensors file per ~256 conversations.

A shard holds flat concatenations plus offsets, so one conversation is a slice:

    input_ids [N] int32 | loss_mask [N] uint8 | features [N, d] | offsets [n + 1] int64
    index [n] int64 (global conversation index of each of the n conversations)
    metadata ids_digest: hash of the token ids, so a rerun reuses a shard only for the same data

Shards are written to `<name>.tmp-<pid>` and renamed into place, so a killed writer never leaves
a file under the final name (and two processes building the same cache never share a temp file);
reads go through `safe_open`, which maps the file and reads only the slices asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import torch

from taps_ray.errors import TapsError
from taps_ray.models.target import pid_alive
from taps_ray.training.extract import ConversationFeatures

MANIFEST = "manifest.json"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def ids_digest(id_lists: Sequence[Sequence[int]]) -> str:
    """Hash of a shard's token ids: a finished shard is reused only for the same conversations."""
    digest = hashlib.sha256()
    for ids in id_lists:
        digest.update(array("q", [len(ids), *ids]).tobytes())
    return digest.hexdigest()[:16]


def write_shard(path: Path, index: Sequence[int], items: Sequence[ConversationFeatures]) -> None:
    """Write conversations `index` (global ids, same order as `items`) atomically to `path`."""
    from safetensors.torch import save_file

    lengths = torch.tensor([len(item) for item in items], dtype=torch.int64)
    offsets = torch.zeros(len(items) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    tensors = {
        "input_ids": torch.cat([item.input_ids for item in items]),
        "loss_mask": torch.cat([item.loss_mask for item in items]),
        "features": torch.cat([item.features for item in items]).contiguous(),
        "offsets": offsets,
        "index": torch.as_tensor(list(index), dtype=torch.int64),
    }
    digest = ids_digest([item.input_ids.tolist() for item in items])
    tmp = _tmp_path(path)
    save_file(tensors, str(tmp), metadata={"ids_digest": digest})
    os.replace(tmp, path)


class ShardReader:
    """Random access to the conversations of one shard file."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            self._file = safe_open(str(path), framework="pt")
            self.offsets = self._file.get_tensor("offsets").tolist()
            self.index = self._file.get_tensor("index").tolist()
            self.ids_digest = (self._file.metadata() or {}).get("ids_digest", "")
        except (SafetensorError, OSError, KeyError) as err:
            raise TapsError(
                f"feature shard '{path}' is unreadable ({err}); delete it and rebuild the cache"
            ) from None
        self.path = path

    def __len__(self) -> int:
        return len(self.index)

    def get(self, k: int) -> ConversationFeatures:
        """The k-th conversation stored in this shard."""
        start, end = self.offsets[k], self.offsets[k + 1]
        return ConversationFeatures(
            input_ids=self._file.get_slice("input_ids")[start:end],
            loss_mask=self._file.get_slice("loss_mask")[start:end],
            features=self._file.get_slice("features")[start:end],
        )

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [N] int32, loss_mask [N] uint8) of the whole shard, without features."""
        return self._file.get_tensor("input_ids"), self._file.get_tensor("loss_mask")


def shard_is_complete(path: Path, id_lists: Sequence[Sequence[int]]) -> bool:
    """A shard under its final name that opens and holds exactly these conversations."""
    if not path.is_file():
        return False
    try:
        reader = ShardReader(path)
    except TapsError:
        return False
    return len(reader) == len(id_lists) and reader.ids_digest == ids_digest(id_lists)


def write_manifest(folder: Path, manifest: dict) -> None:
    tmp = _tmp_path(folder / MANIFEST)
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / MANIFEST)


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files left by writers that are no longer running (killed builds)."""
    for tmp in folder.glob("*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise TapsError(
            f"feature cache '{folder}' has no {MANIFEST} (unfinished build); rerun the same "
            "command to finish it"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TapsError(f"'{path}' is not valid JSON ({err}); delete the cache folder") from None
