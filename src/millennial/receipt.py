"""The validation receipt: the gate's pass, and the hashes of exactly the data it passed.

`validate` writes it only on success; every training stage checks it against the data it is
about to read (`require_validated`), so data that failed, or changed after it passed, never
trains, however the stage was started (`dvc repro --single-item`, `python -m stages...`).
"""

from __future__ import annotations

import json
from pathlib import Path

from millennial.atomic import write_json
from millennial.data import DataError
from millennial.fingerprint import tree_sha256

RECEIPT = Path("data/validated/receipt.json")


def write_receipt(path: str | Path, documents_sha256: str, packed_dir: str | Path,
                  checks: int) -> None:
    write_json(path, {"success": True, "data_sha256": documents_sha256,
                      "packed_sha256": tree_sha256(packed_dir), "checks": checks})


def require_validated(receipt: str | Path, documents_dir: str | Path,
                      packed_dir: str | Path) -> None:
    """Raise a DataError unless `receipt` records a pass for these documents and packed blocks."""
    receipt = Path(receipt)
    if not receipt.is_file():
        raise DataError(f"{receipt}: no validation receipt: the data in {documents_dir} has not "
                        "passed the gate (run `dvc repro validate`)")
    try:
        record = json.loads(receipt.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{receipt}: unreadable validation receipt: {err}") from err
    if not isinstance(record, dict) or record.get("success") is not True:
        raise DataError(f"{receipt}: the receipt does not record a passing validation")
    for key, directory in (("data_sha256", documents_dir), ("packed_sha256", packed_dir)):
        if record.get(key) != tree_sha256(directory):
            raise DataError(f"{receipt}: '{key}' does not match {directory}: the data changed "
                            "after it was validated (run `dvc repro validate`)")
