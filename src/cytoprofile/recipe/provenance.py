"""Provenance of recipe outputs: sidecars, checksums, freshness, and the step runner that skips current outputs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__, io
from ..config import Recipe
from ..digest import file_digest
from ..errors import ConfigError, CytoprofileError, InputError
from ..layout import Layout
from ..vocabulary import is_any_metadata, non_metadata_columns

__all__ = ["Made", "RunResult", "Steps", "is_fresh", "record_provenance", "sidecar_path",
           "write_output", "write_step_provenance"]

log = logging.getLogger("cytoprofile.pipeline")


def write_output(frame: pd.DataFrame, path: str, *, float_format: str | None = None) -> None:
    """A step's table as CSV(.gz) or Parquet (by its name), or AnnData (``.h5ad``: text columns in ``obs``)."""
    if not path.endswith(".h5ad"):
        io.write_table(frame, path, float_format=float_format)
        return
    try:
        import anndata
    except ImportError as exc:
        raise ConfigError("options.output_format: anndata needs the anndata package "
                          "(pip install 'cytoprofile[anndata]')") from exc

    features = [c for c in frame.columns if not is_any_metadata(c) and pd.api.types.is_numeric_dtype(frame[c])
                and not pd.api.types.is_bool_dtype(frame[c])]
    obs = frame[[c for c in frame.columns if c not in set(features)]].reset_index(drop=True)
    text = [c for c in obs.columns if pd.api.types.is_string_dtype(obs[c]) or obs[c].dtype == object]
    obs = obs.astype({c: object for c in text})  # plain text (not categories): read back as it was written
    obs.index = pd.Index([str(i) for i in range(len(obs))], dtype=object)
    var = pd.DataFrame(index=pd.Index([str(c) for c in features], dtype=object))
    adata = anndata.AnnData(X=frame[features].to_numpy(np.float64), obs=obs, var=var)
    with io.atomic_path(path) as tmp:
        adata.write_h5ad(tmp, convert_strings_to_categoricals=False)


@dataclass
class RunResult:
    """Steps run and skipped, every output written, and the products to show the user.

    ``products`` are (label, path relative to the outputs' root) pairs: each plate's
    final profiles, the GCT files and each batch's QC report, written now or current;
    ``qc`` says whether quality control ran; ``root`` is where the outputs are.
    """

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    products: list[tuple[str, str]] = field(default_factory=list)
    qc: str = ""
    root: str = ""


_WHOLE_FILE_LIMIT = 64 << 20


def write_step_provenance(output: str, step: str, inputs: list[str], account: Any, *,
                          wells: dict[str, Any] | None = None) -> None:
    """``OUTPUT.provenance.json`` of one step run on its own: the step, its inputs and
    features in → out, each dropped one with why (``account``: the step's ``FeatureAccount``);
    ``wells``: rows in and out and the wells dropped, as the recipe records them for annotate."""
    record = {"step": step, "output": os.path.basename(output), "cytoprofile_version": __version__,
              "inputs": inputs, "features": {"in": len(account.features_in), "out": len(account.features_out),
                                             "dropped": dict(account.dropped)},
              **({"wells": wells} if wells is not None else {})}
    io.write_json(record, sidecar_path(output))


def _sha256(path: str) -> str:
    """Checksum of an input: the whole file, or for a large backend its size, time and first/last MiB."""
    size = os.path.getsize(path)
    if size <= _WHOLE_FILE_LIMIT:
        return file_digest(path, algorithm="sha256")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(size - (1 << 20))
        digest.update(fh.read(1 << 20))
    # a rewritten backend (collate --overwrite) has a new modification time even at the same size
    return f"size={size};mtime_ns={os.stat(path).st_mtime_ns};head-tail-sha256={digest.hexdigest()}"


def _settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def sidecar_path(output: str) -> str:
    return output + ".provenance.json"


def _input_checksums(inputs: Sequence[str], root: str) -> dict[str, str]:
    """Checksums keyed by path relative to the layout root (stable across scratch copies)."""
    return {os.path.relpath(p, root): _sha256(p) for p in inputs}


def is_fresh(outputs: Sequence[str], inputs: Sequence[str], settings: Any, root: str) -> bool:
    """True when every output exists and its sidecar matches these settings and inputs."""
    for out in outputs:
        side = sidecar_path(out)
        if not (Path(out).exists() and Path(side).exists()):
            return False
        try:
            record = json.loads(Path(side).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if record.get("settings_hash") != _settings_hash(settings):
            return False
        if record.get("inputs") != _input_checksums(inputs, root):
            return False
    return True


def record_provenance(output: str, *, step: str, inputs: Sequence[str], settings: Any, config_path: str | None,
            root: str, pipeline: str | None = None, account: Mapping[str, Any] | None = None) -> None:
    record: dict[str, Any] = {
        "step": step,
        "output": os.path.basename(output),
        "cytoprofile_version": __version__,
        "pipeline": pipeline,
        "config": config_path,
        "settings": settings,
        "settings_hash": _settings_hash(settings),
        "inputs": _input_checksums(inputs, root),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if account is not None:
        record |= dict(account)
    io.write_json(record, sidecar_path(output))




@dataclass
class Made:
    """A step's output table and its account: features in -> out, each dropped feature's
    operation, and anything else the sidecar should say (e.g. wells dropped)."""

    frame: pd.DataFrame
    before: Sequence[str] | None = None
    dropped: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def account(self) -> dict[str, Any]:
        """``features: {in, out, dropped: {feature: operation}}`` plus ``extra``."""
        after = non_metadata_columns(self.frame.columns)
        out: dict[str, Any] = {"features": {"in": None, "out": len(after), "dropped": {}}}
        if self.before is not None:
            before = non_metadata_columns(self.before)
            kept = set(after)
            out["features"] = {
                "in": len(before),
                "out": len(after),
                "dropped": {c: self.dropped.get(c, "unexplained") for c in before if c not in kept},
            }
        return out | dict(self.extra)


def _summary(account: Mapping[str, Any]) -> str:
    """``features 120 -> 87 (correlation_threshold: 30, blocklist: 3)`` for the log."""
    feats = account["features"]
    if feats["in"] is None:
        return f"{feats['out']} features"
    ops: dict[str, int] = {}
    for op in feats["dropped"].values():
        op = str(op).split(": ", 1)[-1]  # "feature_select: variance_threshold": the step is named already
        ops[op] = ops.get(op, 0) + 1
    detail = ", ".join(f"{op}: {n}" for op, n in ops.items())
    return f"features {feats['in']} → {feats['out']}" + (f" ({detail})" if detail else "")


class Steps:
    """Runs one step at a time with skip/resume and provenance."""

    def __init__(self, layout: Layout, recipe: Recipe, *, force: bool, result: RunResult) -> None:
        self.layout = layout
        self.recipe = recipe
        self.force = force
        self.result = result
        self.float_format = recipe.settings.options.float_format

    def run(self, name: str, inputs: Sequence[str], outputs: Mapping[str, Callable[[], pd.DataFrame | Made] | pd.DataFrame | Made],
            settings: Any) -> bool:
        """Write each output (a frame, or a thunk making it, with its account) unless all are
        fresh; True if it ran."""
        paths = list(outputs)
        for p in inputs:
            if not Path(p).exists():
                raise InputError(f"{p}: input of step {name} not found; run the earlier steps (or collate) first")
        if not self.force and is_fresh(paths, inputs, settings, self.layout.root):
            self.result.skipped.append(f"{name}: {', '.join(os.path.basename(p) for p in paths)}")
            return False
        start = time.perf_counter()
        for path, make in outputs.items():
            try:
                made = make() if callable(make) else make
            except CytoprofileError as exc:
                if any(os.path.basename(p) in str(exc) for p in inputs):
                    raise
                raise type(exc)(f"step {name} on {inputs[0]}: {exc}") from exc
            made = made if isinstance(made, Made) else Made(made)
            account = made.account()
            write_output(made.frame, path, float_format=self.float_format)
            record_provenance(path, step=name, inputs=inputs, settings=settings, config_path=self.recipe.path,
                    root=self.layout.root, pipeline=self.recipe.settings.pipeline, account=account)
            log.info("%s %s: %s", name, os.path.basename(path), _summary(account))
            self.result.outputs.append(path)
        self.result.ran.append(f"{name}: {', '.join(os.path.basename(p) for p in paths)}")
        log.info("%s → %s (%.2fs)", name, ", ".join(os.path.basename(p) for p in paths), time.perf_counter() - start)
        return True
