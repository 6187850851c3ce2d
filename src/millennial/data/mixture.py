"""The training mixture: what share of the loss each source carries.

Left alone, a source's share of the gradient is its share of the scored tokens: a news article
scores hundreds of tokens, a pointer-chasing answer two, so the tasks would be a few percent of
what training optimises, by accident. `curate.mixture` sets each source's share instead; every
scored token of source s then weighs `share_s * S / S_s` (S_s its scored training tokens, S
their total), so the shares hold in expectation and the mean weight per scored token stays 1
(losses keep their scale). A share of 0 keeps a source as context only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from millennial.data import DataError
from millennial.params import Options

SHARE_TOLERANCE = 1e-6


def parse_mixture(options: Options, sources: Sequence[str]) -> dict[str, float] | None:
    """`curate.mixture`: null (natural shares) or a share in [0, 1] for every source, sum 1."""
    raw = options.raw.get("mixture")
    if raw is None:
        return None
    mixture = options.child("mixture")
    mixture.only(*sources)
    missing = [name for name in sources if name not in raw]
    if missing:
        raise mixture.error(missing[0], f"is missing: the mixture must give every source a "
                                        f"share (missing: {', '.join(missing)})")
    shares = {name: mixture.number(name) for name in sources}
    total = sum(shares.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise options.error("mixture", f"shares must sum to 1, got {total:g}")
    return shares


@dataclass(frozen=True)
class MixtureRow:
    """One source's place in the training loss (data card, manifest, metrics)."""

    source: str
    scored_tokens: int  # loss-scored tokens of the source in the training split
    natural_share: float  # its share of the loss with every token weighing the same
    share: float  # its share of the loss under the mixture
    loss_weight: float  # what each of its scored tokens weighs


def mixture_rows(shares: Mapping[str, float] | None,
                 scored_tokens: Mapping[str, int]) -> list[MixtureRow]:
    """Each source's loss weight; a source asked for a share but scoring nothing is an error.

    An empty training split gets weights of 0 here; the validation gate refuses it.
    """
    total = sum(scored_tokens.values())
    rows = []
    for source, count in scored_tokens.items():
        natural = count / total if total else 0.0
        share = natural if shares is None else shares[source]
        if count == 0 and share > 0:
            raise DataError(f"curate.mixture gives source '{source}' a share of {share:g}, but "
                            "it has no scored tokens in the training split")
        weight = share * total / count if count else 0.0
        rows.append(MixtureRow(source, count, natural, share, weight))
    return rows
