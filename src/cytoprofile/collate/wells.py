"""The per-well buffer of the one pass: a well's cells are held until its last site is read, then aggregated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..aggregate import WellAggregator, compartment_tables
from ..backend import object_column_name
from ..ingest import IMAGE_TABLE, SiteTables, image_numeric
from ..vocabulary import compartment_features

__all__ = ["WellBuffer", "WellProfiles", "flush_well"]


class WellBuffer:
    """Cells of wells not yet complete; a well is released when its last site is read."""

    def __init__(self, remaining: dict[tuple[str, ...], int]) -> None:
        self.remaining = remaining
        self.images: dict[tuple[str, ...], list[Any]] = {}
        self.objects: dict[tuple[str, ...], dict[str, list[np.ndarray]]] = {}
        self.values: dict[tuple[str, ...], tuple[object, ...]] = {}

    def add(self, site: SiteTables, strata: Sequence[str], compartments: dict[str, list[int]]) -> None:
        image_keys = site.keys
        for key in set(image_keys):
            rows = [i for i, k in enumerate(image_keys) if k == key]
            self.images.setdefault(key, []).append(site.image.take(rows))
            if key not in self.values:
                self.values[key] = tuple(site.image.column(s)[rows[0]].as_py() for s in strata)
            per = self.objects.setdefault(key, {c: [] for c in compartments})
            for compartment, columns in compartments.items():
                array = site.objects[compartment]
                row_keys = site.row_keys[compartment]
                # a contiguous run of columns is a view, not a copy
                picked: Any = slice(columns[0], columns[-1] + 1) if columns and columns[-1] - columns[0] + 1 == len(columns) else columns
                if len(set(image_keys)) == 1:
                    selected = array[:, picked]
                else:
                    mask = np.array([k == key for k in row_keys], dtype=bool)
                    selected = array[mask][:, picked]
                per[compartment].append(selected)

    def done(self, keys: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
        finished = []
        for key in set(keys):
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                finished.append(key)
        return finished

    def pop(self, key: tuple[str, ...]) -> tuple[tuple[object, ...], list[Any], dict[str, list[np.ndarray]]] | None:
        if key not in self.images:
            return None
        return self.values.pop(key), self.images.pop(key), self.objects.pop(key)


def flush_well(agg: WellAggregator, popped: tuple[tuple[object, ...], list[Any], dict[str, list[np.ndarray]]],
                chosen: dict[str, str]) -> None:
    values, images, objects = popped
    counts = []
    feats = []
    n_images = 0
    for image in images:
        n_images += image.num_rows
        counts.append(image_numeric(image, agg.count_columns))
        feats.append(image_numeric(image, agg.image_feature_columns))
    arrays = {}
    for compartment, table in chosen.items():
        parts = objects[table]
        arrays[compartment] = np.concatenate(parts) if parts else np.empty((0, 0))
    agg.add(values, n_images=n_images, image_counts=np.vstack(counts), image_values=np.vstack(feats), objects=arrays)


@dataclass
class WellProfiles:
    """The pass's per-well aggregation: the object table chosen per compartment, the aggregator and the buffer."""

    chosen: dict[str, str]
    aggregator: WellAggregator
    buffer: WellBuffer
    strata: Sequence[str]
    #: per object table, the positions (in the site arrays) of its compartment's features
    positions: dict[str, list[int]]

    @classmethod
    def plan(cls, analysis_dir: str, scans: Sequence[Any], schema: Any, options: dict[str, Any]) -> WellProfiles:
        """Match each asked compartment to an object table (none: ``InputError``) and size the buffer."""
        # each compartment as its table is spelled: the profile columns are the backend's columns
        chosen = {t: t for t in _chosen_tables(analysis_dir, schema, options["compartments"]).values()}
        positions: dict[str, list[int]] = {}
        features: dict[str, list[str]] = {}
        for table in chosen:
            names = [object_column_name(table, c) for c in schema.tables[table]]
            features[table] = compartment_features(table, names)
            where = {n: i for i, n in enumerate(names)}
            positions[table] = [where[f] for f in features[table]]
        agg = WellAggregator(
            strata=list(options["strata"]),
            compartments=features,
            image_columns=[c for c in schema.tables[IMAGE_TABLE] if c not in ("TableNumber", "ImageNumber")],
            operation=options["operation"],
            image_features=options["image_features"],
            image_feature_categories=options["image_feature_categories"],
        )
        remaining: dict[tuple[str, ...], int] = {}
        for scan in scans:
            for key in set(scan.keys):
                remaining[key] = remaining.get(key, 0) + 1
        return cls(chosen, agg, WellBuffer(remaining), options["strata"], positions)

    def add(self, site: SiteTables) -> None:
        """Hold a read site's cells in its well(s)."""
        self.buffer.add(site, self.strata, self.positions)

    def site_done(self, keys: Sequence[tuple[str, ...]]) -> None:
        """A site (read or quarantined) is past: aggregate the wells it completes and drop their cells."""
        for key in self.buffer.done(keys):
            popped = self.buffer.pop(key)
            if popped is not None:
                flush_well(self.aggregator, popped, self.chosen)


def _chosen_tables(analysis_dir: str, schema: Any, compartments: Sequence[str]) -> dict[str, str]:
    return compartment_tables(compartments, schema.object_tables, missing=lambda compartment: (
        f"{analysis_dir}: no site has {compartment}.csv; object tables found: "
        f"{', '.join(schema.object_tables) or 'none'}; pick others with --compartments"))
