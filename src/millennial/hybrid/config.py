"""`TRMConfig`: the shape of the injected Tiny Recursive Model blocks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TRMConfig:
    """What to inject and where.

    Each injection point gets a block: `x = down(norm(h))`, then `cycles` (T) latent recursions of
    `latent_steps` (n) updates `z <- f(x + y + z)` and one `y <- f(y + z)`, and the host layer's
    output becomes `h + up(y)`. Only the last `grad_cycles` recursions carry gradient.
    """

    injection_layers: tuple[int, ...] = (-1,)
    hidden_size: int = 128
    num_heads: int = 4
    num_layers: int = 2
    latent_steps: int = 6
    cycles: int = 3
    grad_cycles: int = 1
    ffn_size: int = 384
    dropout: float = 0.0
    share_across_layers: bool = False

    def __post_init__(self) -> None:
        layers = self.injection_layers
        if isinstance(layers, int) or not isinstance(layers, (list, tuple)):
            raise ValueError(f"injection_layers must be a list of ints, got {layers!r}")
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(
                f"injection_layers must be a non-empty list of ints, got {layers!r}"
            )
        object.__setattr__(self, "injection_layers", tuple(layers))
        counts = ("hidden_size", "num_heads", "num_layers", "latent_steps", "cycles",
                  "grad_cycles", "ffn_size")
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size / num_heads must be even for rotary positions, "
                f"got {self.hidden_size // self.num_heads}"
            )
        if self.grad_cycles > self.cycles:
            raise ValueError(f"grad_cycles ({self.grad_cycles}) must be <= cycles ({self.cycles})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not isinstance(self.share_across_layers, bool):
            raise ValueError(
                f"share_across_layers must be a bool, got {self.share_across_layers!r}"
            )

    @property
    def calls_per_cycle(self) -> int:
        """Calls of the core f in one latent recursion: n latent updates and one answer update."""
        return self.latent_steps + 1

    @property
    def total_calls(self) -> int:
        """Calls of f per token per block, with or without gradient."""
        return self.cycles * self.calls_per_cycle

    @property
    def grad_calls(self) -> int:
        """Calls of f per token per block that keep a graph for backward."""
        return self.grad_cycles * self.calls_per_cycle

    def resolve_layers(self, num_hidden_layers: int) -> tuple[int, ...]:
        """Injection indices as sorted non-negative positions in a stack of that depth."""
        resolved = []
        for index in self.injection_layers:
            position = index + num_hidden_layers if index < 0 else index
            if not 0 <= position < num_hidden_layers:
                raise ValueError(
                    f"injection_layers: index {index} is out of range for a base with "
                    f"{num_hidden_layers} layers"
                )
            resolved.append(position)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"injection_layers: {list(self.injection_layers)} name a layer twice")
        return tuple(sorted(resolved))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["injection_layers"] = list(self.injection_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TRMConfig:
        """Build from a mapping (params.yaml `trm:` or JSON); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TRMConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TRMConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TRMConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
