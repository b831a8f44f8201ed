"""Realistic synthetic workspaces in the handbook layout, for the demo, tests and benchmarks.

Cells carry CellProfiler column names and links (``Parent_*``), every site has its
own ImageNumber, treatments shift a subset of features (replicates share the
shift; some treatments are inert), and a few features are constant or copies of
others, so feature selection has something to find.
"""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .checks import listed
from .errors import ConfigError
from .layout import Workspace
from .vocabulary import CANONICAL_COMPARTMENTS, PLATE_FORMATS, grid_to_well, well_to_grid

__all__ = ["SynthResult", "cellprofiler_column_name", "feature_names", "synth", "well_names", "write_export_database"]

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def well_names(n_wells: int) -> list[str]:
    """Well names of a 96-, 384- or 1536-well plate, row-major (A01, A02, …, AF48)."""
    shapes = {rows * cols: (rows, cols) for rows, cols in PLATE_FORMATS}
    if n_wells not in shapes:
        raise ConfigError(f"wells must be 96, 384 or 1536, not {n_wells}")
    rows, cols = shapes[n_wells]
    return [grid_to_well(r, c) for r in range(rows) for c in range(cols)]


def _feature_pool(compartment: str) -> list[str]:
    names = [
        "AreaShape_Area", "AreaShape_Compactness", "AreaShape_Eccentricity", "AreaShape_Extent",
        "AreaShape_FormFactor", "AreaShape_MajorAxisLength", "AreaShape_MinorAxisLength",
        "AreaShape_Perimeter", "AreaShape_Solidity", "AreaShape_EulerNumber",
    ]
    for ch in CHANNELS:
        names += [f"Intensity_{m}_{ch}" for m in ("IntegratedIntensity", "MeanIntensity", "StdIntensity", "MaxIntensity", "MedianIntensity")]
    if compartment == "Nuclei":
        names += [f"Correlation_Manders_{a}_{b}" for a in CHANNELS[:3] for b in CHANNELS[3:]]
        names += [f"Granularity_{g}_{ch}" for g in (14, 15, 16) for ch in CHANNELS[:2]]
    for ch in CHANNELS:
        names += [f"Granularity_{g}_{ch}" for g in range(1, 14)]
    for a in CHANNELS:
        for b in CHANNELS:
            if a < b:
                names.append(f"Correlation_Correlation_{a}_{b}")
    for ch in CHANNELS:
        for scale in (3, 5, 10):
            for stat in ("AngularSecondMoment", "Contrast", "Correlation", "Entropy", "InverseDifferenceMoment", "SumAverage", "Variance"):
                names += [f"Texture_{stat}_{ch}_{scale}_{d:02d}_256" for d in (0, 1, 2, 3)]
    for ch in CHANNELS:
        for ring in range(1, 5):
            names += [f"RadialDistribution_{m}_{ch}_{ring}of4" for m in ("FracAtD", "MeanFrac", "RadialCV")]
    for ch in CHANNELS:
        names += [f"Intensity_{m}_{ch}" for m in ("LowerQuartileIntensity", "UpperQuartileIntensity", "MADIntensity", "MinIntensity", "MassDisplacement")]
    return names


def feature_names(compartment: str, n: int) -> list[str]:
    """``n`` measurement names for a compartment (CellProfiler families; numbered beyond the pool)."""
    pool = _feature_pool(compartment)
    if n <= len(pool):
        return pool[:n]
    extra = [f"Texture_Extra_{i:05d}_DNA_3_00_256" for i in range(n - len(pool))]
    return pool + extra


@dataclass
class SynthResult:
    """What was generated."""

    workspace: str
    batch: str
    plates: list[str]
    wells: list[str]
    sites: int
    cells_written: int
    files: int


def _write_csv(table: pa.Table, path: str) -> None:
    # CellProfiler writes bare header names and values
    with open(path, "wb") as fh:
        fh.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(quoting_style="none", include_header=False))


@dataclass(frozen=True)
class _Design:
    """What every site of the workspace draws from: feature names, scales, constant columns,
    treatment effects and the Image columns."""

    features: int
    names: dict[str, list[str]]
    scales: dict[str, np.ndarray]
    constant: dict[str, set[int]]
    effects: dict[str, dict[str, np.ndarray]]
    image_names: list[str]
    image_intensity: list[str]


def _treatments(all_wells: Sequence[str], negcon_wells: set[str], treatments: int) -> tuple[list[str], dict[str, str]]:
    """Treatment names and the treatment of each non-control well, in turn."""
    treat_names = [f"BRD-K{1000 + t:05d}-001-01-1" for t in range(treatments)]
    treatment_of = {}
    ti = 0
    for well in all_wells:
        if well in negcon_wells:
            continue
        treatment_of[well] = treat_names[ti % treatments]
        ti += 1
    return treat_names, treatment_of


def _design(rng: np.random.Generator, treat_names: Sequence[str], n_strong: int, features: int) -> _Design:
    names = {c: feature_names(c, features) for c in CANONICAL_COMPARTMENTS}
    effects = {}
    for t, name in enumerate(treat_names):
        vec = {}
        for c in CANONICAL_COMPARTMENTS:
            e = np.zeros(features)
            if t < n_strong:
                hit = rng.choice(features, size=max(1, features // 4), replace=False)
                e[hit] = rng.normal(0, 1.5, size=len(hit))
            vec[c] = e
        effects[name] = vec
    # feature scales: realistic magnitudes; a few constant and duplicated columns
    scales = {c: np.exp(rng.normal(2, 1.5, features)) for c in CANONICAL_COMPARTMENTS}
    constant = {c: set(rng.choice(features, size=max(1, features // 20), replace=False).tolist()) for c in CANONICAL_COMPARTMENTS}
    image_names = (
        ["Count_Cells", "Count_Cytoplasm", "Count_Nuclei"]
        + [f"Granularity_{g}_{ch}" for ch in CHANNELS for g in (1, 2, 3)]
        + [f"ImageQuality_{m}_{ch}" for ch in CHANNELS for m in ("FocusScore", "PowerLogLogSlope", "PercentMaximal")]
        + [f"Texture_Contrast_{ch}_5_00_256" for ch in CHANNELS]
        + [f"Threshold_{m}_{c}" for c in ("Cells", "Nuclei") for m in ("FinalThreshold", "OrigThreshold")]
        + [f"ExecutionTime_{i:02d}Module" for i in range(1, 4)]
    )
    # MeasureImageIntensity's Image.csv columns (what the config template's ``Intensity``
    # category takes), from their own generator so every other value stays as before
    image_intensity = [f"Intensity_{m}_{ch}" for ch in CHANNELS for m in ("TotalIntensity", "MeanIntensity", "MedianIntensity")]
    return _Design(features, names, scales, constant, effects, image_names, image_intensity)


def _object_table(rng: np.random.Generator, design: _Design, c: str, n: int, image_number: int,
                  plate_effect: float, position: float, base: np.ndarray, treat: str | None) -> pa.Table:
    """One compartment's objects of one site."""
    features, names, scales, constant, effects = design.features, design.names, design.scales, design.constant, design.effects
    x = rng.normal(0, 1, size=(n, features)) + plate_effect + position
    x[:, : max(2, features // 10)] += base * 1.5
    if treat is not None:
        x += effects[treat][c]
    values = scales[c] * (1 + 0.25 * x)
    for k in constant[c]:
        values[:, k] = 1.0
    if features >= 4:
        values[:, 3] = values[:, 2] * 2.0 + 0.01  # an exact linear copy
    cols: dict[str, object] = {
        "ImageNumber": np.full(n, image_number, dtype=np.int64),
        "ObjectNumber": np.arange(1, n + 1, dtype=np.int64),
    }
    for j, name in enumerate(names[c]):
        cols[name] = values[:, j]
    cols["Location_Center_X"] = rng.uniform(0, 1080, n)
    cols["Location_Center_Y"] = rng.uniform(0, 1080, n)
    cols["Number_Object_Number"] = np.arange(1, n + 1, dtype=np.int64)
    if c == "Cells":
        cols["Parent_Nuclei"] = np.arange(1, n + 1, dtype=np.int64)
        cols["Children_Cytoplasm_Count"] = np.ones(n, dtype=np.int64)
    elif c == "Cytoplasm":
        cols["Parent_Cells"] = np.arange(1, n + 1, dtype=np.int64)
        cols["Parent_Nuclei"] = np.arange(1, n + 1, dtype=np.int64)
    else:
        cols["Children_Cells_Count"] = np.ones(n, dtype=np.int64)
    order = ["ImageNumber", "ObjectNumber", *sorted(k for k in cols if k not in ("ImageNumber", "ObjectNumber"))]
    return pa.table({k: cols[k] for k in order})


def _image_row(rng: np.random.Generator, intensity_rng: np.random.Generator, design: _Design, *, n: int,
               image_number: int, batch: str, plate: str, well: str, site: int, row_letter_index: int) -> dict[str, list[Any]]:
    """The Image.csv row of one site."""
    image_names, image_intensity = design.image_names, design.image_intensity
    image: dict[str, list[Any]] = {name: [float(rng.gamma(5, 2))] for name in image_names}
    image |= {name: [float(intensity_rng.gamma(5, 2))] for name in image_intensity}
    image["Count_Cells"] = [float(n)]
    image["Count_Cytoplasm"] = [float(n)]
    image["Count_Nuclei"] = [float(n)]
    image["ImageNumber"] = [image_number]
    image["Metadata_Plate"] = [plate]
    image["Metadata_Well"] = [well]
    image["Metadata_Site"] = [site]
    image["Metadata_Row"] = [row_letter_index + 1]
    image["Metadata_Col"] = [int(well.lstrip(string.ascii_uppercase))]
    for ch in CHANNELS:
        image[f"FileName_Orig{ch}"] = [f"r{row_letter_index + 1:02d}c{image['Metadata_Col'][0]:02d}f{site:02d}p01-ch{CHANNELS.index(ch) + 1}sk1fk1fl1.tiff"]
        image[f"PathName_Orig{ch}"] = [f"/images/{batch}/{plate}/Images"]
    return image


def _write_site(site_dir: Path, image: Mapping[str, list[Any]], tables: Mapping[str, pa.Table], *,
                object_metadata: bool) -> None:
    """A site folder: Image.csv and one CSV per compartment (carrying the image's columns when asked)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(pa.table({k: image[k] for k in sorted(image)}), str(site_dir / "Image.csv"))
    for c, table in tables.items():
        _write_csv(_with_image_columns(table, image) if object_metadata else table, str(site_dir / f"{c}.csv"))


def _with_image_columns(table: pa.Table, image: Mapping[str, list[Any]]) -> pa.Table:
    """An object table with the image's metadata and file and folder names after its keys, as ExportToSpreadsheet
    writes them with its "add image metadata / file and folder names" options."""
    names = [k for k in sorted(image) if k.startswith(("Metadata_", "FileName_", "PathName_"))]
    out = table.select(["ImageNumber", "ObjectNumber"])
    for k in names:
        value = image[k][0]
        out = out.append_column(k, pa.array([value] * table.num_rows))
    for k in table.column_names[2:]:
        out = out.append_column(k, table.column(k))
    return out


def _check_export(export: str, *, faults: bool, layout: str = "per_object_table") -> None:
    if export not in ("csv", "database"):
        raise ConfigError(f"export (--export) must be csv or database, not {export!r}")
    if layout not in ("per_object_table", "per_object"):
        raise ConfigError(f"export_layout (--export-layout) must be per_object_table or per_object, not {layout!r}")
    if export == "csv" and layout != "per_object_table":
        raise ConfigError("export_layout (--export-layout) shapes ExportToDatabase files: use it with --export database")
    if export == "database" and faults:
        raise ConfigError("faults are planted in site CSVs: use them with export='csv'")


def _check_counts(**counts: int | None) -> None:
    """Each count is a whole number: ``cells`` may be 0 (empty sites), the others at least 1."""
    for name, value in counts.items():
        least = 0 if name == "cells" else 1
        if value is None and name == "well_subset":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be a whole number, at least {least} (--{name.replace('_', '-')}), got {value!r}")


def _export_databases(root: str, batch: str, plates: Sequence[str], *, files: int, layout: str) -> None:
    """Each plate's site CSVs become ExportToDatabase SQLite files (the CSVs go)."""
    ws = Workspace(root)
    for plate in plates:
        write_export_database(root, ws.analysis_plate(batch, plate), batch=batch, plates=[plate], files=files, layout=layout)
        shutil.rmtree(ws.analysis(batch, plate))


def _load_row(plate: str, well: str, site: int, image: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The load_data.csv row of one site: its keys and image files."""
    return {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
            **{f"FileName_Orig{ch}": image[f"FileName_Orig{ch}"][0] for ch in CHANNELS},
            **{f"PathName_Orig{ch}": image[f"PathName_Orig{ch}"][0] for ch in CHANNELS}}


def synth(
    workspace: str | os.PathLike[str],
    *,
    batch: str = "BATCH1",
    plates: Sequence[str] = ("PLATE1",),
    wells: int = 96,
    sites: int = 4,
    cells: int = 40,
    features: int = 40,
    treatments: int = 8,
    negcon_fraction: float = 0.25,
    strong_fraction: float = 0.5,
    seed: int = 0,
    well_subset: int | None = None,
    faults: bool = False,
    export: str = "csv",
    export_files: int = 2,
    export_layout: str = "per_object_table",
    object_metadata: bool = False,
) -> SynthResult:
    """Write a synthetic workspace: CellProfiler CSVs, plate maps, external metadata, load_data.

    ``cells`` is the mean per site (Poisson); ``features`` per compartment;
    ``well_subset`` keeps only the first N wells of the plate (small tests, same
    plate geometry); ``faults`` plants one empty object file, one cut-off row and
    one header-only Image.csv in the first plate, as real transfers sometimes do.
    ``export="database"`` writes each plate's cells as CellProfiler ExportToDatabase
    SQLite files instead (``analysis/BATCH/PLATE/run<N>.sqlite``, ``export_files`` runs,
    ``export_layout`` as in :func:`write_export_database`), with no site CSVs.
    ``object_metadata`` repeats the image's ``Metadata_*``, ``FileName_*`` and ``PathName_*`` columns in every
    object CSV, as ExportToSpreadsheet's "add image metadata / file and folder names" options do (same cells).
    """
    _check_export(export, faults=faults, layout=export_layout)
    _check_counts(wells=wells, sites=sites, cells=cells, features=features, treatments=treatments,
                  well_subset=well_subset, export_files=export_files)
    rng = np.random.default_rng(seed)
    root = str(workspace)
    all_wells = well_names(wells)
    used = all_wells[:well_subset] if well_subset else all_wells
    n_negcon = max(1, int(round(len(all_wells) * negcon_fraction)))
    negcon_wells = set(all_wells[i] for i in np.linspace(0, len(all_wells) - 1, n_negcon).astype(int))
    treat_names, treatment_of = _treatments(all_wells, negcon_wells, treatments)
    n_strong = int(round(treatments * strong_fraction))
    design = _design(rng, treat_names, n_strong, features)
    intensity_rng = np.random.default_rng([seed, 1])
    cells_written = 0
    files = 0
    image_number = 0
    platemap_rows: list[dict[str, object]] = []
    for pi, plate in enumerate(plates):
        plate_map = f"PM-{pi % 2 + 1:02d}"
        plate_dir = Workspace(root).analysis(batch, plate)
        load_rows = []
        plate_effect = rng.normal(0, 0.2)
        for _wi, well in enumerate(used):
            treat = treatment_of.get(well)
            for site in range(1, sites + 1):
                image_number += 1
                n = int(rng.poisson(cells))
                base = rng.normal(0, 1, size=(n, 1))  # cell size factor, shared: correlated features
                row_letter_index = well_to_grid(well)[0]
                position = 0.05 * row_letter_index  # a gentle position effect
                tables = {c: _object_table(rng, design, c, n, image_number, plate_effect, position, base, treat)
                          for c in CANONICAL_COMPARTMENTS}
                image = _image_row(rng, intensity_rng, design, n=n, image_number=image_number, batch=batch,
                                   plate=plate, well=well, site=site, row_letter_index=row_letter_index)
                _write_site(Path(plate_dir, f"{plate}-{well}-{site}"), image, tables, object_metadata=object_metadata)
                files += 4
                cells_written += n
                load_rows.append(_load_row(plate, well, site, image))
        if faults and pi == 0 and len(used) >= 3:
            _plant_faults(plate_dir, plate, used, sites)
        load_dir = Path(Workspace(root).load_data(batch), plate)
        load_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(pa.Table.from_pylist(load_rows), str(load_dir / "load_data.csv"))
        platemap_rows.append({"Assay_Plate_Barcode": plate, "Plate_Map_Name": plate_map})
    _write_metadata(root, batch, platemap_rows, all_wells, negcon_wells, treatment_of, treat_names, n_strong)
    if export == "database":
        _export_databases(root, batch, plates, files=export_files, layout=export_layout)
    return SynthResult(root, batch, list(plates), used, sites, cells_written, files)


def _plant_faults(plate_dir: str, plate: str, wells: Sequence[str], sites: int) -> None:
    """One empty object file, one cut-off row, one header-only Image.csv."""
    empty = Path(plate_dir, f"{plate}-{wells[0]}-{sites}", "Nuclei.csv")
    empty.write_bytes(b"")
    cut = Path(plate_dir, f"{plate}-{wells[1]}-{sites}", "Cells.csv")
    lines = cut.read_text().splitlines()
    if len(lines) > 1:
        lines[1] = ",".join(lines[1].split(",")[:-3])
        cut.write_text("\n".join(lines) + "\n")
    header_only = Path(plate_dir, f"{plate}-{wells[2]}-{sites}", "Image.csv")
    header_only.write_text(header_only.read_text().splitlines()[0] + "\n")


def _write_metadata(
    root: str,
    batch: str,
    barcode_rows: list[dict[str, object]],
    wells: Sequence[str],
    negcon_wells: set[str],
    treatment_of: dict[str, str],
    treat_names: Sequence[str],
    n_strong: int,
) -> None:
    ws = Workspace(root)
    Path(ws.platemap(batch, "x")).parent.mkdir(parents=True, exist_ok=True)
    lines = ["Assay_Plate_Barcode,Plate_Map_Name"] + [f"{r['Assay_Plate_Barcode']},{r['Plate_Map_Name']}" for r in barcode_rows]
    Path(ws.barcode_platemap(batch)).write_text("\n".join(lines) + "\n")
    for name in sorted({str(r["Plate_Map_Name"]) for r in barcode_rows}):
        rows = ["plate_map_name\twell_position\tbroad_sample\tmg_per_ml\tmmoles_per_liter\tsolvent\tcontrol_type"]
        for well in wells:
            if well in negcon_wells:
                rows.append(f"{name}\t{well}\tDMSO\t0\t0\tDMSO\tnegcon")
            else:
                rows.append(f"{name}\t{well}\t{treatment_of[well]}\t3.1\t10\tDMSO\ttrt")
        Path(ws.platemap(batch, name)).write_text("\n".join(rows) + "\n")
    external = Path(ws.external_metadata("external_metadata", "external_metadata.tsv"))
    external.parent.mkdir(parents=True, exist_ok=True)
    rows = ["broad_sample\tpert_iname\tmoa"]
    rows.append("DMSO\tDMSO\tcontrol vehicle")
    for i, t in enumerate(treat_names):
        rows.append(f"{t}\tcompound-{i:03d}\t{'active' if i < n_strong else 'inert'}")
    external.write_text("\n".join(rows) + "\n")


def cellprofiler_column_name(name: str, *, max_length: int = 64) -> str:
    """A column name as CellProfiler's ExportToDatabase shortens it to ``max_length`` characters.

    Characters are dropped from the end back to the first underscore: lower-case vowels
    first, then other lower-case letters, then capitals, until the name fits.
    """
    if len(name) <= max_length:
        return name
    classes = ("aeiou", "bcdfghjklmnpqrstvwxyz", string.ascii_uppercase)
    for start in (name.find("_"), 0):
        if start < 0:
            continue
        chars = list(name)
        for letters in classes:
            index = len(chars) - 1
            while index >= start and len(chars) > max_length:
                if chars[index] in letters:
                    del chars[index]
                index -= 1
            if len(chars) <= max_length:
                return "".join(chars)
    return name[:max_length]


def _sql_type(typ: pa.DataType) -> str:
    if pa.types.is_integer(typ):
        return "INTEGER"
    if pa.types.is_floating(typ):
        return "FLOAT"
    return "TEXT"


def _export_site(site_dir: Path) -> tuple[pa.Table, dict[str, pa.Table]]:
    """One synthetic site's Image.csv and object CSVs, typed as the CSV reader infers them."""
    tables = {p.name[:-4]: _read_typed(p) for p in sorted(site_dir.glob("*.csv"))}
    return tables.pop("Image"), tables


def _read_typed(path: Path) -> pa.Table:
    """A CSV with dates and times left as the text written (SQLite has no such types)."""
    table = pacsv.read_csv(path)
    temporal = {f.name: pa.string() for f in table.schema if pa.types.is_temporal(f.type)}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=temporal)) if temporal else table


def _create(conn: Any, table: str, columns: list[tuple[str, str]], key: Sequence[str]) -> None:
    body = ", ".join(f'"{n}" {t}' for n, t in columns)
    pk = f", PRIMARY KEY ({', '.join(chr(34) + k + chr(34) for k in key)})" if key else ""
    conn.execute(f'CREATE TABLE "{table}" ({body}{pk})')


def _insert(conn: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)


def _object_columns(obj: str, table: pa.Table, max_length: int) -> list[tuple[str, str, str]]:
    """(CSV name, database name, SQL type) of an object's measurement columns, key first."""
    out = [("ObjectNumber", f"{obj}_Number_Object_Number", "INTEGER")]
    for f in table.schema:
        if f.name not in ("ImageNumber", "ObjectNumber", "Number_Object_Number"):
            out.append((f.name, cellprofiler_column_name(f"{obj}_{f.name}", max_length=max_length), _sql_type(f.type)))
    return out


def _write_one_database(path: str, sites: list[Path], *, layout: str, table_prefix: str, max_length: int) -> None:
    import sqlite3

    loaded = [_export_site(s) for s in sites]
    image0, objects0 = loaded[0]
    image_cols = [(f.name, cellprofiler_column_name(f"Image_{f.name}", max_length=max_length), _sql_type(f.type))
                  for f in image0.schema if f.name != "ImageNumber"]
    obj_cols = {o: _object_columns(o, t, max_length) for o, t in objects0.items()}
    conn = sqlite3.connect(path)
    try:
        _create(conn, f"{table_prefix}Per_Image", [("ImageNumber", "INTEGER")] + [(d, t) for _, d, t in image_cols], ["ImageNumber"])
        if layout == "per_object":
            columns = [("ImageNumber", "INTEGER"), ("ObjectNumber", "INTEGER")]
            columns += [(d, t) for o in obj_cols for _, d, t in obj_cols[o]]
            _create(conn, f"{table_prefix}Per_Object", columns, ["ImageNumber", "ObjectNumber"])
        else:
            for o, cols in obj_cols.items():
                _create(conn, f"{table_prefix}Per_{o}", [("ImageNumber", "INTEGER")] + [(d, t) for _, d, t in cols],
                        ["ImageNumber", cols[0][1]])
        for number, (image, objects) in enumerate(loaded, start=1):
            _insert(conn, f"{table_prefix}Per_Image", [(number, *(image.column(c)[0].as_py() for c, _, _ in image_cols))])
            by_object = {o: (t.to_pydict(), t.num_rows) for o, t in objects.items()}
            if layout == "per_object":
                _insert(conn, f"{table_prefix}Per_Object", _combined_rows(number, by_object, obj_cols))
            else:
                for o, (data, n) in by_object.items():
                    _insert(conn, f"{table_prefix}Per_{o}", [(number, *(data[c][i] for c, _, _ in obj_cols[o])) for i in range(n)])
        _write_experiment(conn, table_prefix)
        conn.commit()
    finally:
        conn.close()


def _combined_rows(number: int, by_object: dict[str, tuple[dict[str, list[Any]], int]],
                   obj_cols: dict[str, list[tuple[str, str, str]]]) -> list[tuple[Any, ...]]:
    """Rows of the single Per_Object table: the i-th object of every set on row i (NULL where a set has fewer)."""
    index = {o: {int(v): i for i, v in enumerate(data["ObjectNumber"])} for o, (data, _) in by_object.items()}
    top = max((max(ix) for ix in index.values() if ix), default=0)
    rows = []
    for obj_number in range(1, top + 1):
        row: list[Any] = [number, obj_number]
        for o, (data, _) in by_object.items():
            i = index[o].get(obj_number)
            row += [None if i is None else data[c][i] for c, _, _ in obj_cols[o]]
        rows.append(tuple(row))
    return rows


def _write_experiment(conn: Any, table_prefix: str) -> None:
    _create(conn, f"{table_prefix}Per_Experiment",
            [("CellProfiler_Version", "TEXT"), ("Run_Timestamp", "TEXT"), ("Pipeline_Pipeline", "TEXT")], [])
    _insert(conn, f"{table_prefix}Per_Experiment", [("4.2.6", "2026-01-01T00:00:00", "CellProfiler Pipeline: synthetic\n" * 50)])
    _create(conn, "Experiment", [("experiment_id", "INTEGER"), ("name", "TEXT"), ("time", "TEXT")], ["experiment_id"])
    _insert(conn, "Experiment", [(1, "synthetic", "2026-01-01T00:00:00")])
    _create(conn, "Experiment_Properties", [("experiment_id", "INTEGER"), ("object_name", "TEXT"), ("field", "TEXT"),
                                            ("value", "TEXT")], [])
    _insert(conn, "Experiment_Properties", [(1, "", "db_type", "sqlite"), (1, "", "image_table", f"{table_prefix}Per_Image")])


def write_export_database(
    workspace: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    batch: str = "BATCH1",
    plates: Sequence[str] = ("PLATE1",),
    files: int = 2,
    layout: str = "per_object_table",
    table_prefix: str = "MyExpt_",
    max_column_name: int = 64,
) -> list[str]:
    """Write the CSV sites ``synth`` made for ``plates`` again as CellProfiler ExportToDatabase SQLite files.

    The sites (every plate's, in name order) are split into ``files`` runs, each a file
    ``run<N>.sqlite`` whose ImageNumbers start at 1, as when a plate is analysed in
    several batches. ``layout`` is ``per_object_table`` (one ``Per_<Object>`` table per
    object set) or ``per_object`` (CellProfiler's default single ``Per_Object`` table);
    names longer than ``max_column_name`` are shortened as CellProfiler does.
    """
    if layout not in ("per_object_table", "per_object"):
        raise ConfigError(f"layout (--export-layout) must be per_object_table or per_object, not {layout!r}")
    sites = [p for plate in plates for p in sorted(Path(Workspace(str(workspace)).analysis(batch, plate)).iterdir())
             if p.is_dir()]
    if not sites:
        raise ConfigError(f"no synthetic sites for plates {listed(plates, last='and')} in {workspace}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for k, chunk in enumerate(np.array_split(np.arange(len(sites)), max(1, min(files, len(sites)))), start=1):
        path = os.path.join(str(out_dir), f"run{k}.sqlite")
        _write_one_database(path, [sites[i] for i in chunk], layout=layout, table_prefix=table_prefix,
                            max_length=max_column_name)
        written.append(path)
    return written
