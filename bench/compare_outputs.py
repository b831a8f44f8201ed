"""Compare two output trees (e.g. ``make demo`` before and after a change) file by file.

Files must be byte-identical, except for what differs between two runs of the same code:
the run's generation id (in backends, sidecars and reports), ``written`` timestamps and durations in
JSON sidecars, the modification times of regenerated inputs in a report's ``input_files``, the hashes of backend files recorded in provenance, and Parquet footers
(compared as schema, metadata and data instead). Exit status 1 names every other difference.

    python bench/compare_outputs.py BEFORE_DIR AFTER_DIR
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

_VOLATILE_KEYS = frozenset({"written", "seconds", "started", "finished", "elapsed", "duration", "recorded_ns",
                            "generation"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _generations(root: str) -> set[bytes]:
    return {Path(root, rel).read_bytes().strip() for rel in _files(root) if rel.endswith(".generation")}


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("files"), dict) and "recorded_ns" in obj:  # a report's input_files
        return {**obj, "recorded_ns": "<volatile>",
                "files": {k: [v[0], "<mtime>", *v[2:]] if isinstance(v, list) and len(v) == 3 else v
                          for k, v in obj["files"].items()}}  # the inputs' mtimes: when the demo wrote them
    if isinstance(obj, dict):
        return {k: "<volatile>" if k in _VOLATILE_KEYS or (
            k.endswith((".sqlite", ".parquet")) and isinstance(v, str) and _HEX64.match(v)) else _scrub(v)
            for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def _masked(path: str, generations: set[bytes]) -> bytes:
    def mask(data: bytes) -> bytes:
        for g in generations:
            data = data.replace(g, b"G" * len(g))
        return data

    if path.endswith(".parquet"):
        f = pq.ParquetFile(path)
        meta = sorted((k, mask(v)) for k, v in (f.schema_arrow.metadata or {}).items())
        table = f.read().replace_schema_metadata(None)
        return repr((f.metadata.num_row_groups, meta, table.schema.to_string(), table.to_pydict())).encode()
    data = mask(Path(path).read_bytes())
    if path.endswith(".json"):
        try:
            return json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
        except ValueError:  # not JSON: compared as bytes
            return data
    return data


def compare(before: str, after: str) -> list[str]:
    """Paths that differ (or exist on one side only) beyond run-to-run noise."""
    a, b = _files(before), _files(after)
    bad = sorted(set(a) ^ set(b))
    ga, gb = _generations(before), _generations(after)
    for rel in sorted(set(a) & set(b)):
        pa, pb = os.path.join(before, rel), os.path.join(after, rel)
        if Path(pa).read_bytes() != Path(pb).read_bytes() and _masked(pa, ga) != _masked(pb, gb):
            bad.append(rel)
    return bad


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    bad = compare(*argv)
    n = len(_files(argv[0]))
    print(f"{n} files compared; {len(bad)} different")
    for rel in bad:
        print(f"DIFF {rel}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
