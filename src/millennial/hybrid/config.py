"""`TRMConfig`: the shape of the injected Tiny Recursive Model blocks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

CORE_INITS = ("random", "pretrained")
# What f's attention reads keys and values from: every call's own states (the cache grows with
# T*(n+1) per layer of f), or the block input x, once per forward (the cache holds one set per
# layer of f, whatever T and n).
ATTENTION_SOURCES = ("recurrent", "input")
# Core widths a pretrained core takes from the base (null in params.yaml: "the base's").
BASE_WIDTH_FIELDS = ("hidden_size", "num_heads", "num_kv_heads", "ffn_size")


@dataclass(frozen=True)
class BaseDims:
    """What a pretrained core copies: the widths of one base decoder layer."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TRMConfig:
    """What to inject and where.

    Each injection point gets a block that runs `cycles` (T) latent recursions of `latent_steps`
    (n) updates `z <- f(x + y + z)` and one `y <- f(y + z)`; only the last `grad_cycles`
    recursions carry gradient. Two cores f:

    - `core_init: random` (TRM's own): a narrow transformer of width `hidden_size` between
      `x = down(norm(h))` and the output `h + up(y)`, `up` zero-initialised.
    - `core_init: pretrained` (LLaMA Pro's initialisation): f is a copy of the `num_layers` base
      layers ending at the host, at the base's width, with their attention and MLP output
      projections zeroed; f returns what those layers add to the residual stream, `x = h`, `y`
      starts at `x`, and the output is `h + y`. Width fields may be null (the base's).

    `attention: input` makes every call of f attend over keys and values computed once from the
    block input x (per layer of f) instead of each call's own states: the recursion still
    updates y and z through f's queries and MLP, but a decoding cache holds `num_layers` key/value
    sets per block instead of `cycles * (latent_steps + 1) * num_layers`.

    `halting` adds TRM's halting head (one linear on y per block): trained to predict whether
    the next-token prediction is right, it stops a token's recursion at evaluation once its
    probability exceeds `halt_threshold` (TRM halts at logit 0, i.e. 0.5).
    """

    injection_layers: tuple[int, ...] = (-1,)
    hidden_size: int | None = 128
    num_heads: int | None = 4
    num_layers: int = 2
    latent_steps: int = 6
    cycles: int = 3
    grad_cycles: int = 1
    ffn_size: int | None = 384
    dropout: float = 0.0
    share_across_layers: bool = False
    core_init: str = "random"
    num_kv_heads: int | None = None  # key/value heads of f (grouped-query); None = num_heads
    halting: bool = False
    halt_threshold: float = 0.5
    attention: str = "recurrent"

    def __post_init__(self) -> None:
        layers = self.injection_layers
        if isinstance(layers, int) or not isinstance(layers, (list, tuple)):
            raise ValueError(f"injection_layers must be a list of ints, got {layers!r}")
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(
                f"injection_layers must be a non-empty list of ints, got {layers!r}"
            )
        object.__setattr__(self, "injection_layers", tuple(layers))
        if self.core_init not in CORE_INITS:
            raise ValueError(f"core_init must be one of {', '.join(CORE_INITS)}, "
                             f"got {self.core_init!r}")
        pretrained = self.core_init == "pretrained"
        for name in ("num_layers", "latent_steps", "cycles", "grad_cycles", *BASE_WIDTH_FIELDS):
            value = getattr(self, name)
            if value is None and (name == "num_kv_heads" or (pretrained and name in
                                                             BASE_WIDTH_FIELDS)):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size is not None and self.num_heads is not None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                                 f"num_heads ({self.num_heads})")
            if (self.hidden_size // self.num_heads) % 2:
                raise ValueError(f"hidden_size / num_heads must be even for rotary positions, "
                                 f"got {self.hidden_size // self.num_heads}")
        if (self.num_heads is not None and self.num_kv_heads is not None
                and self.num_heads % self.num_kv_heads):
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.grad_cycles > self.cycles:
            raise ValueError(f"grad_cycles ({self.grad_cycles}) must be <= cycles ({self.cycles})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not isinstance(self.share_across_layers, bool):
            raise ValueError(
                f"share_across_layers must be a bool, got {self.share_across_layers!r}"
            )
        if self.attention not in ATTENTION_SOURCES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_SOURCES)}, "
                             f"got {self.attention!r}")
        if not isinstance(self.halting, bool):
            raise ValueError(f"halting must be a bool, got {self.halting!r}")
        threshold = self.halt_threshold
        if (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                or not 0.0 < threshold < 1.0):
            raise ValueError(f"halt_threshold must be a probability in (0, 1), got {threshold!r}")
        if pretrained and self.share_across_layers:
            raise ValueError("share_across_layers needs core_init: random (a pretrained core is "
                             "a copy of its own host's layers)")

    @property
    def pretrained(self) -> bool:
        return self.core_init == "pretrained"

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

    @property
    def cached_slots(self) -> int:
        """Key/value sets a decoding cache keeps per token per block."""
        calls = 1 if self.attention == "input" else self.total_calls
        return calls * self.num_layers

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.width("num_heads")

    def width(self, name: str) -> int:
        """A width field that must be known by now (a pretrained core resolves it first)."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{name} is null: resolve a pretrained core against its base first")
        return int(value)

    def resolve(self, base: BaseDims, num_hidden_layers: int) -> TRMConfig:
        """The config with every width known: a pretrained core takes the base's.

        A width set explicitly for a pretrained core must equal the base's; every injection
        point must have `num_layers` base layers at or below it to copy.
        """
        self.resolve_layers(num_hidden_layers)
        if not self.pretrained:
            return self
        wanted = {"hidden_size": base.hidden_size, "num_heads": base.num_heads,
                  "num_kv_heads": base.num_kv_heads, "ffn_size": base.intermediate_size}
        for name, value in wanted.items():
            if getattr(self, name) not in (None, value):
                raise ValueError(f"{name} is {getattr(self, name)} but core_init: pretrained "
                                 f"copies base layers of {name} {value} (set it to null)")
        lowest = self.resolve_layers(num_hidden_layers)[0]
        if self.num_layers > lowest + 1:
            raise ValueError(f"num_layers {self.num_layers}: a pretrained core copies the layers "
                             f"ending at its host, but layer {lowest} has only {lowest + 1}")
        return replace(self, **wanted)

    def core_parameter_count(self) -> int:
        """Exact parameters of one core f (resolved config): per layer q/k/v/o, SwiGLU and two
        norms; a random core adds a final norm."""
        d, ffn = self.width("hidden_size"), self.width("ffn_size")
        kv = self.kv_heads * (d // self.width("num_heads"))
        core = self.num_layers * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d)
        return core if self.pretrained else core + d

    def parameter_count(self, base_width: int, num_points: int) -> int:
        """Exact parameters of `num_points` blocks on a base of `base_width` (resolved config)."""
        own = self.width("hidden_size") + 1 if self.halting else 0  # the halting head
        if not self.pretrained:  # a pretrained core has no projections: the host's own width
            own += base_width + 2 * base_width * self.width("hidden_size")  # norm, down, up
        cores = 1 if self.share_across_layers else num_points
        return num_points * own + cores * self.core_parameter_count()

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
