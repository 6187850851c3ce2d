"""Packed training blocks and their deterministic, stateless order.

The order of rows is a pure function of (seed, step), so a resumed run needs nothing but the step
to continue exactly where it stopped, and N processes together see what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

IGNORE_INDEX = -100  # HF's label value for tokens the loss skips


@dataclass(frozen=True)
class PackedData:
    """Rows of fixed-length token blocks with a loss mask (1 = scored)."""

    input_ids: torch.Tensor  # (rows, block) int64
    loss_mask: torch.Tensor  # (rows, block) bool

    @classmethod
    def from_parquet(cls, path: str | Path, kind: str | None = None) -> PackedData:
        """Load packed blocks; `kind` ("text" or "task") keeps only blocks of that kind."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: packed data not found; run the curate stage first")
        table = pq.read_table(path, columns=["input_ids", "loss_mask", "kind"])
        if kind is not None:
            table = table.filter(pc.equal(table.column("kind"), kind))
        if table.num_rows == 0:
            raise ValueError(f"{path}: no rows" + (f" of kind {kind!r}" if kind else ""))
        ids = torch.tensor(table.column("input_ids").to_pylist(), dtype=torch.long)
        mask = torch.tensor(table.column("loss_mask").to_pylist(), dtype=torch.bool)
        return cls(ids, mask)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    def scored_tokens(self, indices: list[int]) -> int:
        """Tokens the loss scores in these rows (labels shift by one: position 0 never is)."""
        return int(self.loss_mask[indices][:, 1:].sum())

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = self.input_ids[indices]
        labels = ids.masked_fill(~self.loss_mask[indices], IGNORE_INDEX)
        return {"input_ids": ids, "labels": labels}


def global_batch_indices(rows: int, global_batch: int, step: int, seed: int) -> list[int]:
    """Row indices of optimizer step `step`: a fresh seeded permutation every epoch."""
    orders: dict[int, torch.Tensor] = {}
    indices = []
    for sample in range(step * global_batch, (step + 1) * global_batch):
        epoch, position = divmod(sample, rows)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            orders[epoch] = torch.randperm(rows, generator=generator)
        indices.append(int(orders[epoch][position]))
    return indices


def micro_batches(indices: list[int], per_process: int, world: int, rank: int) -> list[list[int]]:
    """This process's share of each micro-step: micro m, rank r gets the r-th slice of micro m."""
    micro = per_process * world
    return [
        indices[start + rank * per_process : start + (rank + 1) * per_process]
        for start in range(0, len(indices), micro)
    ]
