"""The curate stage's bytes are pinned: speed work on curation must not change a single output.

Two varied configs are curated and every output file's sha256 is compared with golden digests.
The digests are the outputs of the curation code as it was before it was optimised for
throughput (issue 17): the same params must give the same data, so that DVC's cache, the
manifest's identity and every downstream result stay valid. If a digest changes, the change is
a change of the data, not an optimisation: it needs its own issue and a deliberate re-record.

Everything the outputs record is made fixed here: the test runs in a temporary working directory
with relative paths (the manifest and card record paths), builds its text sources from a seeded
generator plus the gensim news corpus copied into a plain file (so no package version is
recorded), and uses the byte-level test tokenizer; the SmolLM2 tokenizer (the bench's) is used
too when a prepared copy is on this machine. The digests also pin the Parquet writer (pyarrow's
version is in each file's footer): upgrading pyarrow may require re-recording them.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from millennial.base import byte_level_tokenizer
from millennial.data.curate import curate, parse_config
from millennial.data.sources import PackageSource, package_file

REPO = Path(__file__).resolve().parents[1]
NEWS = PackageSource("news", "gensim", "gensim/test/test_data/lee_background.cor", "line")
SMOLLM2_TOKENIZER_SHA256 = "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4"
SMOLLM2_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

WORDS = ("river", "council", "library", "school", "market", "bridge", "winter", "garden", "report",
         "storm", "road", "hill", "train", "village", "museum", "harbour", "festival", "budget",
         "election", "forest")
PII = ("Contact jane.doe@example.org or j_smith+news@mail.example.co.uk today.",
       "Call +61 2 9374 4000, (02) 9374 4000 or 555-123-4567 after nine.",
       "The server at 192.168.10.254 and 2001:db8::8a2e:370:7334 went down; so did fe80::1.",
       "Not personal: 3.14159, version 1.2.3.4.5, the year 2024 and 12:30:45.")
ODD = ("Cafe\u0301 cre\u0300me\u200b bru\u0302le\u0301e\ufeff and na\u0131ve \u00a0spaces\t\there.",
       "Line one\r\nLine two\rLine three\n\n\n\n\nLine after blanks\x07\x1b.",
       "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u65e5\u672c\u8a9e text with "
       "\U0001f600 emoji and \u2060joiners\u2060 mixed in.",
       "   Leading and trailing spaces \t \n \t and a tab-only line\n\t\n.   ")


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        for _ in range(sentences))


def text_rows(rng: random.Random) -> list[Any]:
    """Documents with PII, odd Unicode and whitespace, exact and near duplicates, and records
    each filter drops; plus one malformed line (skipped under on_error: skip)."""
    rows: list[Any] = []
    for i in range(160):
        parts = [prose(rng, rng.randint(2, 6))]
        if i % 3 == 0:
            parts.append(PII[i % len(PII)])
        if i % 4 == 1:
            parts.append(ODD[i % len(ODD)])
        rows.append({"text": "\n".join(parts)})
    for i in range(0, 40, 4):  # exact duplicates up to case and whitespace
        rows.append({"text": "  " + rows[i]["text"].upper().replace(" ", "   ") + "\n"})
    for i in range(1, 60, 6):  # near duplicates: one word changed near the end
        rows.append({"text": rows[i]["text"] + " Reported by desk 7."})
    rows += [{"text": "too short"}, {"text": "|| -- ** ## " * 30 + "a"},
             {"text": prose(rng, 400)}, {"text": 42}, {"title": "no text"}]
    return rows


def task_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows = [{"question": f"What is {a} plus {b}? Mail a@b.io.", "answer": a + b}
            for a, b in ((rng.randint(0, 999), rng.randint(0, 999)) for _ in range(60))]
    return [*rows, rows[0], {"question": "   ", "answer": "1"}, {"question": "Q?", "answer": ""}]


def write_sources(root: Path) -> None:
    rng = random.Random(17)
    sources = root / "data/sources"
    sources.mkdir(parents=True)
    lines = [json.dumps(row) for row in text_rows(rng)]
    lines.insert(5, "{not json")
    (sources / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (sources / "qa.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in task_rows(rng)), encoding="utf-8")
    news = package_file(NEWS)[0].read_text(encoding="utf-8")
    (sources / "news.txt").write_text(news, encoding="utf-8")
    (sources / "essays").mkdir()
    for i in range(3):
        (sources / "essays" / f"{i}.txt").write_text(prose(rng, 30 + 10 * i), encoding="utf-8")


SOURCES = [
    {"name": "news", "kind": "text", "paths": "data/sources/news.txt", "unit": "line"},
    {"name": "mixed", "kind": "jsonl", "paths": "data/sources/mixed.jsonl", "text_field": "text"},
    {"name": "essays", "kind": "text", "paths": "data/sources/essays/*.txt", "unit": "file"},
    {"name": "qa", "kind": "jsonl", "paths": "data/sources/qa.jsonl", "prompt_field": "question",
     "answer_field": "answer", "task": "arithmetic_qa"},
    {"name": "chase", "kind": "generator", "task": "pointer_chase", "count": 300,
     "difficulty": [1, 3], "ood_count": 40, "ood_difficulty": [5, 6]},
    {"name": "sum", "kind": "generator", "task": "addition", "count": 200, "difficulty": [2, 4],
     "ood_count": 30, "ood_difficulty": [6, 8]},
    {"name": "sudoku", "kind": "generator", "task": "sudoku4", "count": 80, "difficulty": [2, 5],
     "ood_count": 20, "ood_difficulty": [8, 9]},
]
CONFIGS: dict[str, dict[str, Any]] = {
    "mixture-drop": {
        "block_size": 64, "seed": 11, "on_error": "skip",
        "filter": {"min_chars": 40, "max_chars": 6000, "max_junk_ratio": 0.3},
        "minhash": {"num_perm": 64, "threshold": 0.7, "shingle_size": 3,
                    "near_duplicates": "drop"},
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "sources": SOURCES,
        "mixture": {"news": 0.3, "mixed": 0.2, "essays": 0.05, "qa": 0.05, "chase": 0.2,
                    "sum": 0.15, "sudoku": 0.05},
    },
    "natural-same-split": {
        "block_size": 256, "seed": 3, "on_error": "skip",
        "filter": {"min_chars": 100, "max_chars": 20000, "max_junk_ratio": 0.25},
        "minhash": {"num_perm": 128, "threshold": 0.5, "shingle_size": 5,
                    "near_duplicates": "same_split"},
        "split": {"train": 0.7, "val": 0.2, "test": 0.1},
        "sources": SOURCES,
        "mixture": None,
    },
}
OUTPUTS = ("data/curated/documents/train.parquet", "data/curated/documents/val.parquet",
           "data/curated/documents/test.parquet", "data/curated/documents/test_ood.parquet",
           "data/curated/packed/train.parquet", "data/curated/manifest.json",
           "metrics/data.json", "reports/data_card.md")

# Today's outputs (recorded from the code before the throughput work); see the module docstring.
GOLDEN: dict[tuple[str, str], dict[str, str]] = {
    ("byte-level", "mixture-drop"): {
        "data/curated/documents/train.parquet":
            "6b9106d849f71dc5408d799a50aac454ed16e9e3444562855cf7c4678660fae2",
        "data/curated/documents/val.parquet":
            "9c6d61d9d3f85c5b3faa192002c83302050fe8cbfae30407cd0360aeef3b7fb5",
        "data/curated/documents/test.parquet":
            "7d58f6062d0dab999d95fb559644575e929f891a61abd6fe0733620e53d92858",
        "data/curated/documents/test_ood.parquet":
            "09331132bd11579fba807e3eab15892726451145759c858651e1b34af86f2fc7",
        "data/curated/packed/train.parquet":
            "08e93f230ca0545b17349a655e26244b98e92916d26d471d08661e3249ea77a7",
        "data/curated/manifest.json":
            "4704c3050c6f44122fb91d36b26872a4465eba499afb065088a3105844be5362",
        "metrics/data.json": "52d75c4306cab8aa0ad959551e2d79056cde20bbc1eb1dae5689849aaa4d96bf",
        "reports/data_card.md":
            "e473c35754bf5c57ae7996dc1d71c71642a49218358c5dcede377bee818341d2",
    },
    ("byte-level", "natural-same-split"): {
        "data/curated/documents/train.parquet":
            "0627c1ca34fef67d2eca4e6d921b9ce587440dc95a91295b6d21888cd8f6e428",
        "data/curated/documents/val.parquet":
            "a4866c2b762bd655a25292e7edba0860342f7c15d7598f9e0d30afd0a975f0de",
        "data/curated/documents/test.parquet":
            "74d545f7d0365c4add4d8dd90405ba6353e945aee9db99980a14bd9f72cdf1cc",
        "data/curated/documents/test_ood.parquet":
            "8d422c594e8f9188aaa75b7b389b194cafe2c7bcc443d3b75665a08dd21d0241",
        "data/curated/packed/train.parquet":
            "bb07ae711014e0fcf4aacf7fbb221b665cef3b1f6af9014186ac7ef1347e0257",
        "data/curated/manifest.json":
            "296b785c2d4f1b2c1568f5aeee7ac4fce2e45e70588435e9d175aff25d52e2df",
        "metrics/data.json": "d9df477e6019d088f3780df72e9d062c1aef27489defb4b6ca65bf976b34f03c",
        "reports/data_card.md":
            "55e4bd650c31cbbbc2f46d3abcbb021741927aa4d16ad747481ef70446c6f586",
    },
    ("smollm2", "mixture-drop"): {
        "data/curated/documents/train.parquet":
            "44cd6875ef0ff217af36136ab6e29aeb132619217ba56eb4a93514543ce1a109",
        "data/curated/documents/val.parquet":
            "79ed1ca3a3f80c783c776f12d40cfefc65eb2f094e0063607528f315093b8056",
        "data/curated/documents/test.parquet":
            "88e24e6cbe664664815b136d06149d6c0d7782166234de957a324fa30bc8fd94",
        "data/curated/documents/test_ood.parquet":
            "a750a32b65666b918962f0a1cf1620b10c62bbb9e8bbbfb6dee716902c82e88a",
        "data/curated/packed/train.parquet":
            "24043e09b2f10287f9b6547fdefa03367dbac186dbdd450f9294fc6d2ccc99e9",
        "data/curated/manifest.json":
            "3c302f983b6e62b6db2e8afc9b3a4db2ce74ff8b5df4b4fc4500ebe1d266eaa4",
        "metrics/data.json": "e4104524460fcca3ee5eeaeccc6c1c9853bd29e412b0ee7ac2688d44fe611b3b",
        "reports/data_card.md":
            "637509d4ce4b974214a1d5fc1683e942ea71ca821c8d20fe729e7ff2993fa23e",
    },
    ("smollm2", "natural-same-split"): {
        "data/curated/documents/train.parquet":
            "aa50ad377a00c6aeb6047975388c7c3a6eed501c0fa04b930e7b9c5c2a9e4173",
        "data/curated/documents/val.parquet":
            "f77c8a54ee29547b66528549f82f405c5b6289bfe3c1054c48423aa05185c283",
        "data/curated/documents/test.parquet":
            "e463e9f4c8060194ad8276c8cd00ec49ac56af93b08a453c644924e7b097e414",
        "data/curated/documents/test_ood.parquet":
            "f233ef69926f77b0ad8fd3a6cf8c4326fc505fb9a1b1edd67ecb031b42325772",
        "data/curated/packed/train.parquet":
            "02e4e3468e4843b2f7f78374566285d00a8ed8b82267bc806d821f863170a966",
        "data/curated/manifest.json":
            "4b729f204da414d143a6772962157716bae2e06a09a4ed0338d41ddcba30d719",
        "metrics/data.json": "822e076ddb2e470f4c8955113b56f128e29254853f62b89dcf874f961bcf27fc",
        "reports/data_card.md":
            "7a14b0e78d849d328b8413a2bf8669404a12b606ca26c1637b06b1e3253fa328",
    },
}


def byte_level(directory: Path) -> None:
    byte_level_tokenizer(512).save_pretrained(directory)


def smollm2(directory: Path) -> None:
    for base in (REPO / "models/base", REPO / "bench/.cache/base"):
        tokenizer_json = base / "tokenizer.json"
        if (tokenizer_json.is_file() and hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
                == SMOLLM2_TOKENIZER_SHA256):
            directory.mkdir()
            for name in SMOLLM2_FILES:
                if (base / name).is_file():
                    shutil.copy(base / name, directory / name)
            return
    pytest.skip("no prepared SmolLM2 tokenizer (models/base or bench/.cache/base)")


TOKENIZERS = {"byte-level": byte_level, "smollm2": smollm2}


def curated_digests(root: Path, tokenizer: str, name: str) -> dict[str, str]:
    write_sources(root)
    TOKENIZERS[tokenizer](root / "tokenizer")
    config = parse_config({"tokenizer_dir": "tokenizer", **CONFIGS[name]})
    curate(config, "data/curated", "metrics/data.json", "reports/data_card.md")
    written = sorted(str(path.relative_to(root)) for top in ("data/curated", "metrics", "reports")
                     for path in (root / top).rglob("*") if path.is_file())
    assert written == sorted(OUTPUTS)
    return {path: hashlib.sha256((root / path).read_bytes()).hexdigest() for path in OUTPUTS}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("tokenizer", sorted(TOKENIZERS))
def test_outputs_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    tokenizer: str, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    digests = curated_digests(tmp_path, tokenizer, name)
    assert digests == GOLDEN[(tokenizer, name)]
