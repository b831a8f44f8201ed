"""The recipe's steps over the selected plates: feature selection at its level (with GCT), the processing chain (``processing:``) and quality control."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from .. import io
from ..config import Recipe
from ..errors import InputError
from ..layout import NEGCON, Layout
from ..recipe_options import feature_select_options, processing_options, quality_control_options
from ..vocabulary import metadata_columns, non_metadata_columns
from .features import compartment_prefixes, feature_columns, features_for
from .plate import plate_report
from .provenance import Made, RunResult, Steps, is_fresh, record_provenance

log = logging.getLogger("cytoprofile.pipeline")

__all__ = ["batch_steps", "processing_file"]


def _selection(df: pd.DataFrame, block: Any, prefixes: Sequence[str], where: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """``df`` without the features the block's operations drop (one ``feature_select`` call),
    and each dropped feature with the operation that dropped it, in the operations' order.

    ``min_cells`` other than 1 computes the statistics on wells with at least that many
    objects (all wells are kept).
    """
    from ..feature_select import feature_select
    from ..step_data import FeatureAccount

    accounts: list[FeatureAccount] = []
    operations = list(block.operations)
    selected = feature_select(df, features=features_for(df, block, prefixes, where), operations=operations,
                              on_account=accounts.append, **feature_select_options(block))
    by_operation = sorted(accounts[0].dropped.items(), key=lambda item: operations.index(item[1]))
    return selected, {c: f"feature_select: {op}" for c, op in by_operation}


class _Level:
    """Feature selection of one block (main or negcon) at its level, with GCT."""

    def __init__(self, layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, negcon: bool,
                 steps: Steps, prefixes: Sequence[str]) -> None:
        s = recipe.settings
        self.layout, self.recipe, self.plates, self.steps, self.prefixes = layout, recipe, plates, steps, prefixes
        self.block = s.feature_select_negcon if negcon else s.feature_select
        self.negcon = negcon
        self.level = self.block.level
        self.settings = self.block.model_dump(mode="json")
        self.name = "feature_select" + (f"_{NEGCON}" if negcon else "")

    def source(self, batch: str, plate: str) -> str:
        return self.layout.plate_file(batch, plate, Layout.normalized_stem(negcon=self.negcon))

    def output(self, batch: str, plate: str) -> str:
        return self.layout.plate_file(batch, plate, Layout.selected_stem(self.level, negcon=self.negcon))

    def load(self, batch: str, plate: str, with_batch: bool) -> pd.DataFrame:
        path = self.source(batch, plate)
        df = io.load_profiles(path)
        if "Metadata_Plate" not in df.columns:
            raise InputError(f"{path}: no Metadata_Plate column; feature selection over plates needs it")
        extra = {"Metadata_Plate": df["Metadata_Plate"].astype(str)}
        if with_batch:
            extra["Metadata_batch"] = pd.Series(batch, index=df.index)
        return pd.concat([df.drop(columns=["Metadata_Plate"]), pd.DataFrame(extra)], axis=1)[
            [*df.columns, *(["Metadata_batch"] if with_batch else [])]]

    def stack(self, frames: list[pd.DataFrame], where: str) -> tuple[pd.DataFrame, dict[str, str]]:
        """The plates together (metadata and features); the columns left out, with why."""
        df = pd.concat(frames, ignore_index=True)
        meta = metadata_columns(df.columns)
        features = feature_columns(df, self.prefixes, image_features=self.block.image_features, where=where)
        keep = set(meta) | set(features)
        why = f"feature_select level {self.level}: plates stacked with metadata and features only"
        return df[meta + features], {
            c: why + (" (image_features: false)" if c.startswith("Image") else "") for c in df.columns if c not in keep}

    def _all(self) -> Iterator[tuple[str, str]]:
        return ((b, p) for b, names in self.plates.items() for p in names)

    def plate_level(self) -> None:
        for batch, plate in list(self._all()):
            def _selected(b: str = batch, p: str = plate) -> Made:
                df = self.load(b, p, False)
                selected, dropped = _selection(df, self.block, self.prefixes, self.source(b, p))
                return Made(selected, before=list(df.columns), dropped=dropped)

            self.steps.run(self.name, [self.source(batch, plate)], {self.output(batch, plate): _selected}, self.settings)

    def grouped(self) -> None:
        """Levels batch and all: select on the plates together, then split back per plate."""
        groups = [(b, [b]) for b in self.plates] if self.level == "batch" else [("all", list(self.plates))]
        for _label, batches in groups:
            pairs = [(b, p) for b in batches for p in self.plates[b]]
            inputs = [self.source(b, p) for b, p in pairs]
            outs = [self.output(b, p) for b, p in pairs]
            if not self.steps.force and is_fresh(outs, inputs, self.settings, self.layout.root):
                self.steps.result.skipped.append(f"{self.name}: {len(outs)} plate(s) at level {self.level}")
                if not self.block.gct:
                    continue
            loaded = {pair: self.load(*pair, True) for pair in pairs}
            stacked, left_out = self.stack(list(loaded.values()), inputs[0])
            selected, dropped = _selection(stacked, self.block, self.prefixes, inputs[0])
            self.steps.run(self.name, inputs, {
                self.output(b, p): Made(self._split(selected, p), before=list(loaded[(b, p)].columns),
                                         dropped=left_out | dropped) for b, p in pairs}, self.settings)
            for b in batches:
                frame = selected if self.level == "batch" else selected.loc[selected["Metadata_batch"] == b].reset_index(drop=True)
                self.gct(b, frame)

    @staticmethod
    def _split(selected: pd.DataFrame, plate: str) -> pd.DataFrame:
        part = selected.loc[selected["Metadata_Plate"] == str(plate)].reset_index(drop=True)
        return part.drop(columns=["Metadata_batch"], errors="ignore")

    def gct(self, batch: str, frame: pd.DataFrame) -> None:
        """``gct/BATCH/BATCH{stem}.{csv.gz,gct}``, each with its provenance sidecar."""
        if not self.block.gct:
            return
        stem = Layout.selected_stem(self.level, negcon=self.negcon)
        csv_path = self.layout.gct_file(batch, stem, self.layout.suffix)
        gct_path = self.layout.gct_file(batch, stem, ".gct")
        inputs = [self.source(batch, p) for p in self.plates[batch]]
        ran = self.steps.run(self.name + "_gct", inputs, {csv_path: frame}, self.settings)
        if not ran and not self.steps.force and is_fresh([gct_path], inputs, self.settings, self.layout.root):
            return
        meta = metadata_columns(frame.columns)
        features = feature_columns(frame, self.prefixes, image_features=False, where=csv_path)
        io.write_gct(frame, gct_path, features=features, meta_features=meta)
        left_out = len(feature_columns(frame, self.prefixes, image_features=True, where=csv_path)) - len(features)
        log.info("%s %s: %d features written%s", self.name + "_gct", os.path.basename(gct_path), len(features),
                 f" ({left_out} Image_ features left out; they are in {os.path.basename(csv_path)})" if left_out else "")
        why = f"write_gct: Image_ columns are not written to GCT (they are in {os.path.basename(csv_path)})"
        made = Made(frame[meta + features], before=list(frame.columns), dropped=dict.fromkeys(frame.columns, why))
        record_provenance(gct_path, step=self.name + "_gct", inputs=inputs, settings=self.settings, config_path=self.recipe.path,
                root=self.layout.root, pipeline=self.recipe.settings.pipeline, account=made.account())
        self.steps.result.outputs.append(gct_path)


def _feature_select_level(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, negcon: bool,
                          steps: Steps, prefixes: Sequence[str]) -> None:
    """Feature selection at the block's level; batch and all fit on the plates together, then split."""
    level = _Level(layout, recipe, plates, negcon=negcon, steps=steps, prefixes=prefixes)
    if level.level == "plate":
        level.plate_level()
    else:
        level.grouped()


def batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool, result: RunResult) -> None:
    """feature_select, feature_select_negcon (with GCT), then quality control, on a local layout."""
    s = recipe.settings
    steps = Steps(layout, recipe, force=force, result=result)
    prefixes = compartment_prefixes(recipe)
    for batch, names in plates.items():
        for plate in names:
            report = plate_report(layout, batch, plate)
            prefixes += tuple(p for p in compartment_prefixes(recipe, report) if p not in prefixes)
    if s.feature_select.perform:
        _feature_select_level(layout, recipe, plates, negcon=False, steps=steps, prefixes=prefixes)
    if s.feature_select_negcon.perform:
        _feature_select_level(layout, recipe, plates, negcon=True, steps=steps, prefixes=prefixes)
    chain, chain_options = s.processing, s.processing_options
    if chain is not None:
        _Chain(layout, plates, chain, chain_options or {}, steps=steps, prefixes=prefixes).run()
    result.qc = "QC: not run (quality_control.perform: false)"
    if s.quality_control.perform:
        from ..processing import parse_chain
        from ..qc import quality_control

        level = s.feature_select.level if s.feature_select.perform else (
            s.feature_select_negcon.level if s.feature_select_negcon.perform else None)
        for batch, names in plates.items():
            log.info("quality control: %s, %d plate(s) (summary, figures, report)…", batch, len(names))
            began = time.perf_counter()
            done = quality_control(
                layout.root, batch, names, level=level,
                profiles_dir=os.path.abspath(layout.profiles_root()),
                load_data_dir=os.path.abspath(layout.load_data_root(batch)),
                backend_dir=os.path.abspath(layout.handbook.backend_root()),
                map_profiles=processing_file(layout, parse_chain(chain)) if chain is not None else None,
                **quality_control_options(s.quality_control),
            )
            log.info("quality control %s done in %.1fs", batch, time.perf_counter() - began)
            result.ran.append(f"quality_control: {batch}")
            result.outputs += done.files()
            if done.report_path:
                result.products.append((f"QC report {batch}", os.path.relpath(done.report_path, layout.root)))
        result.qc = f"QC: ran for {', '.join(plates)}"


def processing_file(layout: Layout, steps: Sequence[str]) -> str:
    """``OUTPUT_DIR/processing/profiles_<steps>.parquet``: the chain's output after ``steps``."""
    return layout.processing_file(steps)


class _Chain:
    """The processing chain over every selected plate together, one intermediate per step.

    Starts from each plate's annotated profiles (or the ``input`` option's), metadata
    and features only, with ``Metadata_Batch`` (the batch's name) added when absent.
    Each step's output is a Parquet table with a sidecar; a step whose output is current
    for its input and its options is skipped, so a run killed mid-chain resumes there.
    """

    def __init__(self, layout: Layout, plates: dict[str, list[str]], chain: str | list[str],
                 options: Mapping[str, Any], *, steps: Steps, prefixes: Sequence[str]) -> None:
        from ..processing import parse_chain

        self.layout, self.plates, self.steps, self.prefixes = layout, plates, steps, prefixes
        self.chain = parse_chain(chain)
        self.options = processing_options(options)
        self.stem = Layout.input_stem(str(options.get("input", "augmented")))
        self.frame: pd.DataFrame | None = None

    def _stacked(self, inputs: Sequence[str]) -> Made:
        frames: list[pd.DataFrame] = []
        left_out: dict[str, str] = {}
        before: list[str] = []
        for path in inputs:
            batch = os.path.basename(os.path.dirname(os.path.dirname(path)))
            df = io.read_table(path)
            features = feature_columns(df, self.prefixes, image_features=False, where=path)
            meta = metadata_columns(df.columns)
            if "Metadata_Batch" not in df.columns:
                df["Metadata_Batch"] = batch
                meta.append("Metadata_Batch")
            before += [c for c in df.columns if c not in before]
            left_out |= {c: "processing: only Metadata_ columns and features are processed"
                         for c in df.columns if c not in set(meta) | set(features)}
            frames.append(df[meta + features])
        return Made(pd.concat(frames, ignore_index=True), before=before, dropped=left_out)

    def _input(self, inputs: Sequence[str], first: bool) -> Made:
        if self.frame is not None:
            return Made(self.frame)
        return self._stacked(inputs) if first else Made(io.read_table(inputs[0]))

    def _settings(self, step: str, done: Sequence[str]) -> dict[str, Any]:
        from ..processing import CHAIN_OPTIONS

        used = {k: v for k, v in self.options.items() if step in CHAIN_OPTIONS[k]}
        return {"step": step, "after": list(done), "input": self.stem.lstrip("_"), "options": used}

    def _step(self, step: str, inputs: Sequence[str], first: bool) -> Made:
        from ..processing import run_chain

        start = self._input(inputs, first)
        frame = start.frame
        features = non_metadata_columns(frame.columns)
        report: list[dict[str, Any]] = []
        out = run_chain(frame, [step], features=features, report=report, **self.options)
        self.frame = out
        entry = report[0]
        why = f"processing: {step}" + (" (replaced by principal components)" if step == "pca" else "")
        before = list(start.before) if start.before is not None else list(frame.columns)
        dropped = dict(start.dropped) | {c: why for c in frame.columns if c not in set(out.columns)}
        extra = {"processing": {k: entry[k] for k in ("step", "rows_in", "rows_out", "features_in", "features_out",
                                                        "dropped_plates", "seconds")}}
        if "sphering" in out.attrs:
            extra["processing"]["sphering"] = out.attrs["sphering"]
        return Made(out, before=before, dropped=dropped, extra=extra)

    def run(self) -> None:
        inputs = [self.layout.plate_file(b, p, self.stem) for b, names in self.plates.items() for p in names]
        for i, step in enumerate(self.chain):
            output = processing_file(self.layout, self.chain[: i + 1])
            first = i == 0

            def make(step: str = step, inputs: Sequence[str] = inputs, first: bool = first) -> Made:
                return self._step(step, inputs, first)

            if not self.steps.run(f"processing {step}", inputs, {output: make}, self._settings(step, self.chain[:i])):
                self.frame = None  # current on disk: the next step that runs reads it
            inputs = [output]
