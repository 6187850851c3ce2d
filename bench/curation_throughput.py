"""Curation throughput vs the tokenizer alone: what do cleaning, dedup and writing cost?

Curates the news corpus packaged with gensim (300 articles) several times with the stage's
default settings, and in the same run times the pieces on the same articles: the tokenizer's
batch encode (the floor: curation must tokenize everything), normalise+filter+scrub, MinHash
sketching with LSH lookup, and the tokenizer from a fresh start (its load, then its first
encode with a cold BPE cache), which every run pays before the rest can overlap it.

The token rate is compared like with like: the whole stage against the tokenizer from a fresh
start (both pay start-up), the stage once started against the warm tokenizer (neither does).
The whole stage against the warm tokenizer mixes the two; the tokenizer alone, run once from a
fresh start, reaches only encode/(load + first encode) of its warm rate on the same corpus,
which bounds that mixed ratio for any one-thread tokenization.

Uses the default base's tokenizer (`models/base`, or the copy `bench/_base.py` prepares on a
fresh clone), or `--tokenizer-dir`; a directory without a tokenizer falls back to byte level
(one token per byte, so token rates are byte rates).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from bench._base import REPO, default_base_dir
from millennial.base import byte_level_tokenizer
from millennial.cost.hardware import cpu_cores
from millennial.data import DataError, Record
from millennial.data.clean import FilterConfig, clean
from millennial.data.curate import CurateConfig, curate
from millennial.data.dedup import MinHashConfig, NearDuplicates, lsh_bands
from millennial.data.pack import encode_batch, load_encoder
from millennial.data.sources import PackageSource, package_file
from millennial.data.split import SplitFractions

NEWS = PackageSource("news", "gensim", "gensim/test/test_data/lee_background.cor", "line")
FILTER = FilterConfig(min_chars=200, max_chars=100_000, max_junk_ratio=0.3)
MINHASH = MinHashConfig(num_perm=128, threshold=0.8, shingle_size=5, near_duplicates="drop")


def config(tokenizer_dir: Path) -> CurateConfig:
    return CurateConfig(tokenizer_dir=tokenizer_dir, block_size=256, seed=0, on_error="fail",
                        filter=FILTER, minhash=MINHASH, split=SplitFractions(0.9, 0.05, 0.05),
                        sources=(NEWS,))


def timed(repeats: int, work: Callable[[], object]) -> tuple[float, float]:
    """Over `repeats` runs: the fastest wall time (the run least disturbed by other processes)
    and the median CPU seconds over all of this process's threads (the work a run does,
    however it is scheduled)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), statistics.median(cpus)


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """The fastest of `repeats` runs."""
    return timed(repeats, work)[0]


def fresh_start(tokenizer_dir: Path, lines: list[str]) -> tuple[float, float]:
    """Seconds of the tokenizer's load and of its first batch encode right after: its BPE cache
    is cold, as in a run (the warm figure re-encodes the same texts, whose words it has
    cached)."""
    start = time.perf_counter()
    tokenizer, _ = load_encoder(tokenizer_dir)
    loaded = time.perf_counter()
    encode_batch(lines, tokenizer)
    return loaded - start, time.perf_counter() - loaded


def lsh_bytes_per_document(texts: list[str]) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = NearDuplicates(MINHASH, seed=0)
    for text in texts:
        index.add(index.sketch(text), "train")
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(texts)


def run(repeats: int = 5, tokenizer_dir: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as scratch:
        root = Path(scratch)
        chosen = Path(tokenizer_dir) if tokenizer_dir else default_base_dir()
        label = f"`{chosen.relative_to(REPO) if chosen.is_relative_to(REPO) else chosen}`"
        if not (chosen / "tokenizer.json").is_file():
            label = f"byte-level fallback (no tokenizer in {chosen})"
            chosen = root / "tokenizer"
            byte_level_tokenizer(4096).save_pretrained(chosen)
        try:
            tokenizer, info = load_encoder(chosen)
            lines = package_file(NEWS)[0].read_text(encoding="utf-8").splitlines()
            result = curate(config(chosen), root / "curated", root / "data.json", root / "card.md")
            whole, work = timed(repeats, lambda: curate(config(chosen), root / "curated",
                                                        root / "data.json", root / "card.md"))
        except DataError as err:  # reported by bench/__main__ as a failed measurement
            raise RuntimeError(f"curation failed: {err}") from err
        documents = result.metrics["documents"]["total"]
        tokens = result.metrics["tokens"]["total"]
        raw_tokens = sum(len(ids) for ids in encode_batch(lines, tokenizer))
        encode = best_of(repeats, lambda: encode_batch(lines, tokenizer))
        starts = [fresh_start(chosen, lines) for _ in range(repeats)]
        load, cold = min(load for load, _ in starts), min(cold for _, cold in starts)
        fresh = min(load + cold for load, cold in starts)
        records = [Record("news", str(i), "text", line) for i, line in enumerate(lines)]
        cleaning = best_of(repeats, lambda: [clean(record, FILTER) for record in records])

        def near_dedup() -> None:
            index = NearDuplicates(MINHASH, seed=0)
            for line in lines:
                sketch = index.sketch(line)
                if index.split_of_twin(sketch) is None:
                    index.add(sketch, "train")

        dedup = best_of(repeats, near_dedup)
        startup = best_of(repeats, lambda: (load_encoder(chosen),
                                            NearDuplicates(MINHASH, seed=0)))
        bands = best_of(1, lambda: lsh_bands.__wrapped__(MINHASH.threshold, MINHASH.num_perm))
        lsh_bytes = lsh_bytes_per_document(lines)
    cores = cpu_cores()
    rows = [
        ("whole curation (read, clean, dedup, split, tokenize, pack, write)", documents, tokens,
         whole),
        ("... less its fixed start-up (tokenizer load, MinHash set-up)", documents, tokens,
         whole - startup),
        ("tokenizer from a fresh start (load + first, cold-cache encode)", len(lines),
         raw_tokens, fresh),
        ("tokenizer batch encode alone (warm)", len(lines), raw_tokens, encode),
        ("normalise + filter + scrub alone", len(lines), raw_tokens, cleaning),
        ("MinHash sketch + LSH query/insert alone", len(lines), raw_tokens, dedup),
    ]

    def vs(seconds: float, baseline: float) -> float:
        """Curation's token rate over `seconds` relative to the tokenizer's over `baseline`."""
        return (tokens / seconds) / (raw_tokens / baseline)

    out = [
        "## Curation throughput",
        "",
        f"Token rate of the whole stage vs the tokenizer alone, like with like: "
        f"**{vs(whole, fresh):.2f}** with start-up on both sides (the stage vs the tokenizer "
        f"from a fresh start), **{vs(whole - startup, encode):.2f}** with start-up on neither "
        f"(the stage once started vs the warm tokenizer). The whole stage against the warm "
        f"tokenizer is {vs(whole, encode):.2f}; the tokenizer itself, from a fresh start, "
        f"reaches {encode / fresh:.2f} of its warm rate on this corpus, the most any stage that "
        "encodes in one thread can reach on that measure.",
        "",
        f"gensim news corpus ({len(lines)} articles, {sum(map(len, lines)):,} characters), "
        f"tokenizer {label} ({info.vocab_size} tokens), block 256, MinHash "
        f"{MINHASH.num_perm} permutations; best of {repeats} runs each.",
        "",
        "| what | seconds | documents/s | tokens/s | time vs warm tokenizer |",
        "|---|---|---|---|---|",
    ]
    for name, docs, toks, seconds in rows:
        out.append(f"| {name} | {seconds:.3f} | {docs / seconds:,.0f} | {toks / seconds:,.0f} "
                   f"| {seconds / encode:.1f}x |")
    out += [
        "",
        f"Curation keeps {documents} of {len(lines)} articles. "
        f"Fixed start-up: {startup:.2f} s per run, plus {bands:.2f} s once per process for "
        f"datasketch's LSH band choice (numerical integration). Near-dedup state: "
        f"~{lsh_bytes / 1024:.1f} KiB per document (LSH band hashes, each bucket keeping its "
        f"first document), ~{lsh_bytes * 1e6 / 2**30:.1f} GiB per million documents.",
        "",
        f"A run loads the tokenizer ({load:.3f} s, holding the GIL) before it can encode, and "
        f"its first encode of these articles, with a cold BPE cache, takes {cold:.3f} s: "
        f"together {fresh / encode:.1f}x the warm encode, which cleaning, dedup and writing "
        "can overlap but not shorten.",
        "",
        f"A run does {work:.3f} CPU-seconds of work (median, all threads): "
        f"{work / encode:.1f}x the warm encode. Spread perfectly over this machine's {cores} "
        f"cores it could not take less than {work / cores:.3f} s, "
        f"{vs(work / cores, encode):.2f} of the warm tokenizer's rate.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizer-dir", default=None)
    args = parser.parse_args()
    print(run(args.repeats, args.tokenizer_dir))
