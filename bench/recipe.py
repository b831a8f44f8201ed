"""Benchmark of the profiling recipe: cytoprofile ``run`` against the same steps called through pycytominer.

What: a synthetic batch of per-well profiles (by default 20 plates × 384 wells ×
3,000 features, 1,000 per compartment, CellProfiler-like names) with a plate map
(~16% negative-control wells) and a barcode map, in the handbook layout
(``profiles/BATCH/PLATE/PLATE.csv.gz``, ``metadata/platemaps/BATCH/...``). Both
contenders run annotate → normalize (mad_robustize on all wells) → normalize_negcon
(mad_robustize fitted on the negative controls) → feature select at batch level
(frequency, correlation, NaN and blocklist filters) on both normalizations → GCT,
writing gzip CSVs with ``%.5g``:

* cytoprofile: ``cytoprofile run config.yml`` with a config from
  ``cytoprofile config-template`` (aggregation and QC off, ``gct: true``);
* pycytominer: the same calls the recipe makes (``annotate``, ``normalize`` twice,
  ``feature_select`` on the concatenated batch, split back per plate,
  ``write_gct``). pycytominer ≥ 1.7 calls the recipe's ``variance_threshold``
  (the freq_cut/unique_cut filter) ``frequency_threshold``, so that name is
  passed to it: the same filter on both sides.

Why: the target is ≥ 5× faster than pycytominer with a peak memory no larger.
Each contender runs in its own process (wall time, peak RSS from ``wait4``),
interleaved and repeated, best time kept. The ``recipe`` section of
``bench/RESULTS.md`` is rewritten.

Usage::

    python bench/recipe.py              # 10 plates × 384 wells × 3,000 features
    python bench/recipe.py --plates 20  # the target size (about 40 minutes)
    python bench/recipe.py --quick    # 3 plates × 384 wells × 300 features
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    Contender,
    cytoprofile_bin,
    machine,
    mb,
    measure,
    write_section,
)

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
BATCH = "BATCH1"
PLATEMAP = "PM-01"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
FLOAT_FORMAT = "%.5g"
#: The recipe's operations, in the recipe's order (pycytominer spelling: see the module docstring).
OPERATIONS = ["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]


@dataclass(frozen=True)
class Sizes:
    """Batch shape of one mode."""

    plates: int
    wells: int
    features_per_compartment: int
    repeats: int


#: The target names 20 plates; a 20-plate run of both sides takes ~20 minutes per repeat on 2 cores,
#: so the default is 10 plates (same width and plate size); ``--plates 20`` runs the named size.
FULL = Sizes(plates=10, wells=384, features_per_compartment=1000, repeats=2)
TARGET_PLATES = 20
QUICK = Sizes(plates=3, wells=384, features_per_compartment=100, repeats=1)


# --------------------------------------------------------------------------- measuring


# --------------------------------------------------------------------------- data


def plate_names(n: int) -> list[str]:
    """Plate barcodes."""
    return [f"BR{i + 1:05d}" for i in range(n)]


def generate(ws: Path, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """Write the batch's per-well profiles and metadata unless a batch of this shape is there.

    Per plate: a low-rank signal (shared cell-state factors) plus noise, treatment
    shifts shared by replicate wells, a plate offset; a few low-cardinality,
    duplicated and partly missing features so that every filter has work.
    """
    import numpy as np
    import pandas as pd

    from cytoprofile.synth import feature_names, well_names

    params = {"plates": sizes.plates, "wells": sizes.wells, "features_per_compartment": sizes.features_per_compartment,
              "seed": seed}
    stamp = ws / "generated.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        return json.loads(stamp.read_text())
    shutil.rmtree(ws, ignore_errors=True)
    rng = np.random.default_rng(seed)
    wells = well_names(sizes.wells)
    features = [f"{c}_{n}" for c in COMPARTMENTS for n in feature_names(c, sizes.features_per_compartment)]
    p = len(features)
    negcon = [i % 6 == 0 for i in range(len(wells))]  # 64 of 384 wells, ~16.7%
    treatments = [f"BRD-K{10000 + i:05d}-001-01-1" for i in range(len(wells) // 4)]
    sample = ["DMSO" if negcon[i] else treatments[i % len(treatments)] for i in range(len(wells))]

    meta = ws / "metadata" / "platemaps" / BATCH
    (meta / "platemap").mkdir(parents=True, exist_ok=True)
    plates = plate_names(sizes.plates)
    (meta / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\n" + "".join(f"{b},{PLATEMAP}\n" for b in plates))
    pm = pd.DataFrame({"plate_map_name": PLATEMAP, "well_position": wells, "broad_sample": sample,
                       "mg_per_ml": [0.0 if n else 3.1 for n in negcon], "control_type": ["negcon" if n else "trt" for n in negcon]})
    pm.to_csv(meta / "platemap" / f"{PLATEMAP}.txt", sep="\t", index=False)

    k = 40
    loadings = np.zeros((k, p))
    owner = rng.integers(0, k, size=p)
    loadings[owner, np.arange(p)] = rng.normal(1.0, 0.3, size=p)
    loadings += rng.normal(0, 0.15, size=(k, p))
    noise_sd = rng.uniform(0.15, 2.0, size=p)
    scale = np.exp(rng.normal(2, 1.5, size=p))
    effect = {t: rng.normal(0, 0.8, size=k) * (rng.random(k) < 0.3) for t in treatments}
    special = rng.permutation(p)
    low_card = special[: p // 100]  # few distinct values: frequency filter
    gappy = special[p // 100 : p // 50]  # 10% missing: NaN filter
    copies = special[p // 50 : p // 50 + p // 20]  # near-copies of other features: correlation filter
    originals = rng.choice(special[p // 50 + p // 20 :], size=len(copies), replace=False)
    for plate in plates:
        z = rng.normal(0, 1, size=(len(wells), k))
        for i, s in enumerate(sample):
            if s != "DMSO":
                z[i] += effect[s]
        x = z @ loadings + rng.normal(0, 1, size=(len(wells), p)) * noise_sd + rng.normal(0, 0.3)
        x = scale * (1 + 0.1 * x)
        x[:, low_card] = rng.choice([1.0, 2.0], p=[0.99, 0.01], size=(len(wells), len(low_card)))
        x[:, copies] = x[:, originals] * 2.0 + rng.normal(0, 1e-3, size=(len(wells), len(copies)))
        holes = rng.random((len(wells), len(gappy))) < 0.1
        block = x[:, gappy]
        block[holes] = np.nan
        x[:, gappy] = block
        cells = rng.poisson(2000, size=len(wells))
        df = pd.concat([
            pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": wells, "Metadata_Site_Count": 9,
                          "Metadata_Count_Cells": cells, "Metadata_Object_Count": cells}),
            pd.DataFrame(x, columns=features),
        ], axis=1)
        out = ws / "profiles" / BATCH / plate
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / f"{plate}.csv.gz", index=False, float_format=FLOAT_FORMAT, compression={"method": "gzip", "mtime": 0})
    info = {"params": params, "plates": plates, "features": p, "wells": len(wells), "negcon_wells": int(sum(negcon)),
            "input_bytes": sum((ws / "profiles" / BATCH / b / f"{b}.csv.gz").stat().st_size for b in plates)}
    stamp.write_text(json.dumps(info, indent=1))
    return info


def clean_outputs(root: Path, plates: Sequence[str]) -> None:
    """Remove everything a contender wrote under ``root``, keeping the inputs."""
    for plate in plates:
        folder = root / "profiles" / BATCH / plate
        if folder.exists():
            for f in folder.iterdir():
                if f.name != f"{plate}.csv.gz":
                    f.unlink()
    shutil.rmtree(root / "gct", ignore_errors=True)


# --------------------------------------------------------------------------- cytoprofile


def write_config(ws: Path, plates: Sequence[str], path: Path) -> None:
    """``cytoprofile config-template`` for this batch, edited: no aggregation, no QC, GCT on."""
    import yaml

    text = subprocess.run([cytoprofile_bin(), "config-template", "--workspace", str(ws), "--batch", BATCH,
                           "--plate", ",".join(plates)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    settings = next(d for d in docs if "pipeline" in d)
    settings["aggregate"]["perform"] = False
    settings["quality_control"]["perform"] = False
    for key in ("feature_select", "feature_select_negcon"):
        settings[key]["gct"] = True
        settings[key]["level"] = "batch"
    settings["options"]["float_format"] = FLOAT_FORMAT
    settings["options"]["compression"] = "gzip"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def recipe_settings(path: Path) -> dict[str, Any]:
    """The settings document of a config, for the pycytominer side to follow."""
    import yaml

    return next(d for d in yaml.safe_load_all(path.read_text()) if d and "pipeline" in d)


# --------------------------------------------------------------------------- pycytominer


def _pycytominer(ws: str, out_root: str, config: str) -> None:
    """The recipe's steps through pycytominer, following the same config settings."""
    import warnings

    warnings.simplefilter("ignore")
    import pandas as pd
    from pycytominer import annotate, feature_select, normalize
    from pycytominer.cyto_utils import output, write_gct

    s = recipe_settings(Path(config))
    plates = list(pd.read_csv(Path(ws, "metadata", "platemaps", BATCH, "barcode_platemap.csv"))["Assay_Plate_Barcode"].astype(str))
    barcode = pd.read_csv(Path(ws, "metadata", "platemaps", BATCH, "barcode_platemap.csv"), dtype=str)
    compression = {"method": "gzip", "mtime": 1}
    ff = s["options"]["float_format"]

    def plate_file(plate: str, stem: str) -> str:
        return str(Path(out_root, "profiles", BATCH, plate, f"{plate}{stem}.csv.gz"))

    for plate in plates:
        Path(out_root, "profiles", BATCH, plate).mkdir(parents=True, exist_ok=True)
        name = barcode.loc[barcode["Assay_Plate_Barcode"] == plate, "Plate_Map_Name"].iloc[0]
        platemap = pd.read_csv(Path(ws, "metadata", "platemaps", BATCH, "platemap", f"{name}.txt"), sep="\t")
        source = str(Path(ws, "profiles", BATCH, plate, f"{plate}.csv.gz"))
        annotate(profiles=source, platemap=platemap, join_on=[s["platemap_well_column"], s["annotate"]["well_column"]],
                 output_file=plate_file(plate, "_augmented"), compression_options=compression, float_format=ff)
        for key, stem in (("normalize", "_normalized"), ("normalize_negcon", "_normalized_negcon")):
            block = s[key]
            normalize(profiles=plate_file(plate, "_augmented"), features=block["features"], image_features=block["image_features"],
                      samples=block["samples"], method=block["method"], mad_robustize_epsilon=block["mad_robustize_fudge_factor"],
                      output_file=plate_file(plate, stem), compression_options=compression, float_format=ff)
    for key, tag in (("feature_select", ""), ("feature_select_negcon", "_negcon")):
        block = s[key]
        level = block["level"]
        frames = [pd.read_csv(plate_file(p, f"_normalized{tag}")).assign(Metadata_batch=BATCH) for p in plates]
        df = pd.concat(frames, ignore_index=True)
        params = block.get("parameters", {})
        selected = feature_select(profiles=df, features=block["features"], image_features=block["image_features"],
                                  operation=OPERATIONS, na_cutoff=params.get("na_cutoff", 0.05),
                                  corr_threshold=params.get("corr_threshold", 0.9), corr_method=params.get("corr_method", "pearson"),
                                  freq_cut=params.get("freq_cut", 0.05), unique_cut=params.get("unique_cut", 0.01))
        for plate in plates:
            part = selected.query("Metadata_Plate == @plate").drop(columns=["Metadata_batch"])
            output(part, plate_file(plate, f"_normalized_feature_select{tag}_{level}"), compression_options=compression, float_format=ff)
        if block["gct"]:
            gct_dir = Path(out_root, "gct", BATCH)
            gct_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{BATCH}_normalized_feature_select{tag}_{level}"
            output(selected, str(gct_dir / f"{stem}.csv.gz"), compression_options=compression, float_format=ff)
            write_gct(profiles=selected, output_file=str(gct_dir / f"{stem}.gct"))


# --------------------------------------------------------------------------- comparing outputs


def compare(ours: Path, theirs: Path, plates: Sequence[str]) -> str:
    """Features kept by each side's batch-level selection, and the largest difference of the normalized values."""
    import numpy as np
    import pandas as pd

    lines = []
    for tag in ("", "_negcon"):
        a = pd.read_csv(ours / "gct" / BATCH / f"{BATCH}_normalized_feature_select{tag}_batch.csv.gz", nrows=1)
        b = pd.read_csv(theirs / "gct" / BATCH / f"{BATCH}_normalized_feature_select{tag}_batch.csv.gz", nrows=1)
        fa = {c for c in a.columns if not c.startswith("Metadata_")}
        fb = {c for c in b.columns if not c.startswith("Metadata_")}
        lines.append(f"feature_select{tag}: cytoprofile keeps {len(fa)}, pycytominer {len(fb)}, in common {len(fa & fb)}")
    plate = plates[0]
    x = pd.read_csv(ours / "profiles" / BATCH / plate / f"{plate}_normalized.csv.gz")
    y = pd.read_csv(theirs / "profiles" / BATCH / plate / f"{plate}_normalized.csv.gz")
    cols = [c for c in x.columns if not c.startswith("Metadata_") and c in set(y.columns)]
    diff, same_nonfinite = float("nan"), False
    if len(x) == len(y):
        xv, yv = x[cols].to_numpy(float), y[cols].to_numpy(float)
        finite = np.isfinite(xv) & np.isfinite(yv)
        same_nonfinite = bool(np.array_equal(np.isfinite(xv), np.isfinite(yv)))
        diff = float(np.max(np.abs(xv[finite] - yv[finite]))) if finite.any() else 0.0
    lines.append(f"{plate}_normalized: {len(x)} vs {len(y)} rows, largest absolute difference {diff:.2g} "
                 f"(after %.5g rounding), non-finite cells {'identical' if same_nonfinite else 'DIFFER'}")
    return "; ".join(lines)


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, sizes: Sizes, info: dict[str, Any], ours: Contender, theirs: Contender, agreement: str,
           repeats: int) -> str:
    """The markdown section."""
    m = machine("cytoprofile", "pyarrow", "pandas", "pycytominer", "numpy", "scikit-learn")
    cmd = "python bench/recipe.py" + (" --quick" if args.quick else "") + (f" --plates {args.plates}" if args.plates else "")
    speed = theirs.best / ours.best
    mem = ours.peak / theirs.peak
    speed_v = (f"**met** ({speed:.1f}× ≥ 5×)" if speed >= 5 else f"**missed** ({speed:.1f}× < 5×; needs {5 / speed:.2f}× more speed)")
    mem_v = (f"**met** ({mem:.2f}× of pycytominer's)" if mem <= 1 else f"**missed** ({mem:.2f}× pycytominer's peak)")
    lines = [
        "## Recipe: annotate → normalize (both) → feature select (batch) → GCT",
        "",
        f"Run {m['date']} ({m['source']}) on {m['cores']} cores ({m['cpu']}), Python {m['python']}; cytoprofile {m['cytoprofile']}, "
        f"pycytominer {m['pycytominer']}, pandas {m['pandas']}, numpy {m['numpy']}, scikit-learn {m['scikit-learn']}, "
        f"pyarrow {m['pyarrow']}." + (" **Quick mode: small sizes, not the benchmark.**" if args.quick else ""),
        "",
        f"Reproduce: `{cmd}` (from the repository root, with the project's venv).",
        "",
        (f"**Size reduced**: {len(info['plates'])} plates instead of the target's {TARGET_PLATES}, so that a run with "
         f"repeats stays near 20 minutes on this machine; `--plates {TARGET_PLATES}` runs the full size. "
         if len(info["plates"]) < TARGET_PLATES and not args.quick else "")
        + f"Batch: {len(info['plates'])} plates × {info['wells']} wells × {info['features']:,} features "
        f"({info['features'] // 3:,} per compartment), {info['negcon_wells']} negcon wells per plate, "
        f"{mb(info['input_bytes'])} of gzip CSV input. Both sides: annotate, mad_robustize on all wells and on negcon "
        "wells, batch-level feature selection (frequency, correlation 0.9, NaN 0.05, blocklist) of both, per-plate "
        "outputs, batch CSV and GCT; gzip, `%.5g`. cytoprofile runs `cytoprofile run config.yml` (one plate at a time, "
        "`executor.jobs: 1`); pycytominer's calls run in one process as the recipe makes them, with "
        "`frequency_threshold` for the recipe's `variance_threshold` (same filter). "
        f"Each side {repeats} time(s), interleaved; best time, largest peak RSS.",
        "",
        "| contender | best s | runs (s) | peak RSS |",
        "| --- | ---: | --- | ---: |",
        f"| cytoprofile run | {ours.best:.1f} | {', '.join(f'{r.seconds:.1f}' for r in ours.runs)} | {mb(ours.peak)} |",
        f"| pycytominer calls | {theirs.best:.1f} | {', '.join(f'{r.seconds:.1f}' for r in theirs.runs)} | {mb(theirs.peak)} |",
        "",
        "| ratio | value | target |",
        "| --- | ---: | --- |",
        f"| pycytominer / cytoprofile time | {speed:.1f}× | ≥ 5×: {speed_v} |",
        f"| cytoprofile / pycytominer peak RSS | {mem:.2f}× | ≤ 1×: {mem_v} |",
        "",
        f"Outputs: {agreement}.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 plates × 300 features, one repeat: a smoke run")
    parser.add_argument("--plates", type=int, help="plates in the batch (default 10, 3 with --quick; the target names 20)")
    parser.add_argument("--features", type=int, help="features per compartment (default 1000, 100 with --quick)")
    parser.add_argument("--repeats", type=int, help="runs per contender (best is kept); default 2, 1 with --quick")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(plates=args.plates or base.plates, wells=base.wells,
                  features_per_compartment=args.features or base.features_per_compartment, repeats=args.repeats or base.repeats)
    root = WORK / ("recipe-quick" if args.quick else "recipe")
    ws = root / "ws"
    theirs_root = root / "pycytominer"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    log.write_text("")

    print(f"generating {ws} …", flush=True)
    info = generate(ws, sizes)
    plates = info["plates"]
    config = root / "config.yml"
    write_config(ws, plates, config)
    ours, theirs = Contender("cytoprofile"), Contender("pycytominer")
    for rep in range(sizes.repeats):
        for contender in (theirs, ours):
            if contender is ours:
                clean_outputs(ws, plates)
                cmd: list[str | Path] = [cytoprofile_bin(), "run", config, "--quiet", "--force"]
            else:
                clean_outputs(theirs_root, plates)
                cmd = [sys.executable, __file__, "_pycytominer", ws, theirs_root, config]
            print(f"  run {rep + 1}/{sizes.repeats}: {contender.name} …", end=" ", flush=True)
            run = measure(cmd, log)
            contender.runs.append(run)
            print(f"{run.seconds:.1f} s, {mb(run.max_rss)}", flush=True)
    agreement = compare(ws, theirs_root, plates)
    body = report(args, sizes, info, ours, theirs, agreement, sizes.repeats)
    print(body)
    if not args.no_write:
        write_section("recipe", body)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_pycytominer":
        _pycytominer(*sys.argv[2:5])
    else:
        sys.exit(main())
