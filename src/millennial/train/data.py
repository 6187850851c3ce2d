"""Packed training blocks and their deterministic, stateless order.

The order of rows is a pure function of (seed, step), so a resumed run needs nothing but the step
to continue exactly where it stopped, and N processes together see what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch


@dataclass(frozen=True)
class PackedData:
    """Rows of fixed-length token blocks with each token's loss weight (0 = not scored)."""

    input_ids: torch.Tensor  # (rows, block) int64
    loss_weight: torch.Tensor  # (rows, block) float32: the source's mixture weight where scored

    @classmethod
    def from_parquet(cls, path: str | Path) -> PackedData:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: packed data not found; run the curate stage first")
        table = pq.read_table(path, columns=["input_ids", "loss_mask", "loss_weight"])
        if table.num_rows == 0:
            raise ValueError(f"{path}: no rows")
        ids = torch.tensor(table.column("input_ids").to_pylist(), dtype=torch.long)
        mask = torch.tensor(table.column("loss_mask").to_pylist(), dtype=torch.bool)
        weight = torch.tensor(table.column("loss_weight").to_pylist(), dtype=torch.float32)
        if bool(((weight != 0) & ~mask).any()) or bool((weight < 0).any()):
            raise ValueError(f"{path}: loss_weight must be >= 0, and 0 wherever loss_mask is 0 "
                             "(a curated file is; re-run curate)")
        return cls(ids, weight)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    def scored_weight(self, indices: list[int]) -> float:
        """Total loss weight of these rows' targets (labels shift by one: position 0 never is):
        the normaliser of a global batch's loss."""
        return float(self.loss_weight[indices][:, 1:].double().sum())

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[indices], "loss_weight": self.loss_weight[indices]}


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
