"""Benchmark of today's profile processing and its yardstick: var → mad → int → featselect → harmony → mAP.

What: synthetic per-well profiles (``tests/planted.py``) with planted plate,
well-position, batch and cell-count effects and planted active compounds (each on
5 plates spread over 2 batches, 64 negative controls per plate), float32 features.
Two contenders, each in its own process (wall time per step, peak RSS from
``wait4``):

* cytoprofile: ``processing.select_variant_features``, ``mad_normalize``,
  ``rank_int``, ``feature_select`` (frequency, correlation, blocklist),
  ``harmony`` and ``evaluate.mean_average_precision`` (activity, negatives on the
  same plate); ``regress_cell_count`` is timed apart on the mad output;
* reference calls, as the JUMP recipe makes them: per-plate pandas medians and
  scipy ``median_abs_deviation``, pandas arithmetic, ``rank_int_array`` per column
  (scipy ``rankdata``), pycytominer ``feature_select``, statsmodels OLS per feature,
  harmonypy, copairs.

A third process (not timed) shows the corrections do what they claim: mAP of the
planted actives after each step, and a batch-mixing score before and after Harmony.
The ``processing`` section of ``bench/RESULTS.md`` is rewritten.

Usage::

    python bench/processing.py            # 10 plates × 384 wells × 300 features (~2 min)
    python bench/processing.py --full     # 100 plates × 384 wells × 1,500 features (the issue's size)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    Contender,
    mb,
    measure,
    source_state,
    verdict_at_least,
    verdict_at_most,
    write_section,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work" / "processing"
NEG = "Metadata_control_type == 'negcon'"
PERT = "Metadata_broad_sample"
STEPS = ("var", "mad", "int", "featselect", "harmony", "map")
RELEASE_WELLS = 800_000


def _setup() -> None:
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    warnings.simplefilter("ignore")


def _rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def generate(path: Path, plates: int, wells: int, features: int) -> dict[str, Any]:
    """Write the planted profiles once per shape (Parquet)."""
    import numpy as np

    from tests.planted import planted_profiles

    stamp = path.with_suffix(".json")
    params = {"plates": plates, "wells": wells, "features": features, "generator": 2}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return params
    df = planted_profiles(plates=plates, wells=wells, features=features, batches=2, negcon_per_plate=64,
                          replicates=5, active_share=0.3, effect=0.5, plate_effect=1.5, well_effect=1.5,
                          batch_effect=1.0, batch_well_effect=1.0, cell_effect=1.0, toxicity=0.0, density_noise=0.4, seed=0,
                          dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    stamp.write_text(json.dumps(params))
    return params


# --------------------------------------------------------------------------- contenders


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_HIGHEST: list[int] = [0]  # the process's peak RSS over every window, as resetting hides it from wait4


def _timed(times: dict[str, float], name: str, fn: Callable[[], Any], peaks: dict[str, int] | None = None) -> Any:
    """Run ``fn``, recording its seconds and (with ``peaks``) its peak RSS above the RSS before it."""
    measured = peaks is not None
    if measured:
        _HIGHEST[0] = max(_HIGHEST[0], _status_kb("VmHWM"))
        measured = _reset_peak()
    before = _status_kb("VmRSS") if measured else 0
    start = time.perf_counter()
    out = fn()
    times[name] = time.perf_counter() - start
    if measured and peaks is not None:
        peaks[name] = _status_kb("VmHWM") - before
        _HIGHEST[0] = max(_HIGHEST[0], _status_kb("VmHWM"))
    return out


def _release_arrow_pool() -> None:
    """Give the memory Arrow's pool keeps after reading back to the system (both contenders)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def ours(src: Path, out: Path, null_size: int) -> dict[str, Any]:
    """cytoprofile's steps; returns step seconds, I/O seconds and the outputs' summary."""
    import pandas as pd

    from cytoprofile import evaluate, processing
    from cytoprofile.feature_select import feature_select

    base = _rss()
    t: dict[str, float] = {}
    p: dict[str, int] = {}  # each step's peak RSS above the RSS before it (its input included in the latter)
    df = _timed(t, "read", lambda: pd.read_parquet(src))
    _release_arrow_pool()
    df = _timed(t, "var", lambda: processing.select_variant_features(df), p)
    df = _timed(t, "mad", lambda: processing.mad_normalize(df), p)
    _timed(t, "cc", lambda: processing.regress_cell_count(df), p)
    df = _timed(t, "int", lambda: processing.rank_int(df), p)
    df = _timed(t, "featselect", lambda: feature_select(
        df, operations=["variance_threshold", "correlation_threshold", "blocklist"]), p)
    frames = [df]  # handed over as run_chain hands over its frames: the step lets go of the features
    del df
    df = _timed(t, "harmony", lambda: processing.harmony_handed_over(frames, threads=1), p)
    table = _timed(t, "map", lambda: evaluate.mean_average_precision(
        df, pert_column=PERT, neg_sameby=["Metadata_Plate"], null_size=null_size), p)
    _timed(t, "write", lambda: df.to_parquet(out / "ours.parquet"), {})
    table.to_parquet(out / "ours_map.parquet")
    _HIGHEST[0] = max(_HIGHEST[0], _status_kb("VmHWM"))
    return {"seconds": t, "baseline_rss": base, "step_peaks": p, "max_rss": _HIGHEST[0] or None,
            "features": [c for c in df.columns if not c.startswith("Metadata_")]}


def _rank_int_array(array: Any, c: float = 3 / 8, seed: int = 0) -> Any:
    import numpy as np
    import scipy.stats as ss

    rng = np.random.default_rng(seed=seed)
    ix = rng.permutation(len(array))
    rank = ss.rankdata(array[ix], method="ordinal")[np.argsort(ix)]
    return ss.norm.ppf((rank - c) / (len(rank) - 2 * c + 1))


def _reference_stats(df: Any, feats: list[str]) -> tuple[Any, Any]:
    from scipy.stats import median_abs_deviation

    neg = df.query(NEG)
    median = neg.groupby("Metadata_Plate")[feats].median().astype("float32")
    mad = neg.groupby("Metadata_Plate")[feats].apply(
        lambda x: x.apply(lambda col: median_abs_deviation(col, nan_policy="omit"))).astype("float32")
    return median, mad


def reference(src: Path, out: Path, null_size: int) -> dict[str, Any]:
    """The reference libraries, called as the JUMP recipe calls them."""
    import harmonypy
    import numpy as np
    import pandas as pd
    import statsmodels.api as sm
    from copairs import map as copairs_map
    from copairs.matching import assign_reference_index
    from pycytominer import feature_select

    base = _rss()
    t: dict[str, float] = {}
    df = _timed(t, "read", lambda: pd.read_parquet(src))
    _release_arrow_pool()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]

    def var() -> Any:
        finite = [f for f in feats if np.isfinite(df[f]).all()]
        median, mad = _reference_stats(df, finite)
        ratio = (mad / median).abs().replace([np.inf, -np.inf], 0).fillna(0)
        keep = ((mad != 0) & (ratio > 1e-3)).all(axis=0)
        return df[[c for c in df.columns if c.startswith("Metadata_")] + list(keep[keep].index)]

    df = _timed(t, "var", var)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]

    def mad() -> Any:
        median, scale = _reference_stats(df, feats)
        parts = []
        for plate, rows in df.groupby("Metadata_Plate"):
            part = rows.copy()
            part[feats] = (rows[feats] - median.loc[plate]) / scale.loc[plate]
            parts.append(part)
        return pd.concat(parts).loc[df.index]

    df = _timed(t, "mad", mad)

    def cc() -> Any:
        design = sm.add_constant(df["Metadata_Count_Cells"].astype(float))
        return {f: sm.OLS(df[f].astype(float), design).fit().resid for f in feats if df[f].nunique() > 100}

    _timed(t, "cc", cc)
    df = _timed(t, "int", lambda: df.assign(**{f: _rank_int_array(df[f].to_numpy()) for f in feats}))
    df = _timed(t, "featselect", lambda: feature_select(
        df, features=feats, operation=["frequency_threshold", "correlation_threshold", "blocklist"]))
    feats = [c for c in df.columns if not c.startswith("Metadata_")]

    def harmony() -> Any:
        z = harmonypy.run_harmony(df[feats].to_numpy(dtype=float).T, df[["Metadata_Batch"]], ["Metadata_Batch"],
                                  random_state=0, verbose=False, ncores=1).Z_corr
        return df.assign(**dict(zip(feats, np.asarray(z, dtype=np.float32).T)))

    df = _timed(t, "harmony", harmony)

    def mean_ap() -> Any:
        meta = assign_reference_index(df[[c for c in df.columns if c.startswith("Metadata_")]], NEG)
        ap = copairs_map.average_precision(
            meta, df[feats].to_numpy(dtype=float), pos_sameby=[PERT, "Metadata_Reference_Index"], pos_diffby=[],
            neg_sameby=["Metadata_Plate"], neg_diffby=[PERT, "Metadata_Reference_Index"], progress_bar=False)
        ap = ap[~ap["Metadata_control_type"].eq("negcon")]
        with tempfile.TemporaryDirectory() as cache:
            return copairs_map.mean_average_precision(ap, [PERT], null_size=null_size, threshold=0.05, seed=0,
                                                      progress_bar=False, cache_dir=cache)

    table = _timed(t, "map", mean_ap)
    _timed(t, "write", lambda: df.to_parquet(out / "reference.parquet"))
    table.to_parquet(out / "reference_map.parquet")
    return {"seconds": t, "baseline_rss": base, "features": feats}


def quality(src: Path) -> dict[str, Any]:
    """mAP of the planted actives after each step; batch mixing before and after Harmony."""
    import numpy as np
    import pandas as pd

    from cytoprofile import evaluate, processing

    df = pd.read_parquet(src)
    active = df.drop_duplicates(PERT).set_index(PERT)["Metadata_active"]
    rows = []
    stages = [("raw", ""), ("var_mad", "var_mad"), ("+wellpos", "var_mad_wellpos"), ("+cc", "var_mad_wellpos_cc"),
              ("+int", "var_mad_wellpos_cc_int"), ("+featselect", "var_mad_wellpos_cc_int_featselect"),
              ("+harmony", "var_mad_wellpos_cc_int_featselect_harmony")]
    frames = {}
    for label, chain in stages:
        frame = processing.run_chain(df, chain) if chain else df
        frames[label] = frame
        table = evaluate.mean_average_precision(frame, pert_column=PERT, neg_sameby=["Metadata_Plate"], null_size=1000)
        flags = active.reindex(table[PERT]).to_numpy(dtype=bool)
        rows.append({"stage": label, "map_actives": float(table.loc[flags, "mean_average_precision"].mean()),
                     "retrieved_actives": float(table.loc[flags, "below_corrected_p"].mean()),
                     "retrieved_inactives": float(table.loc[~flags, "below_corrected_p"].mean())})

    def mixing(frame: pd.DataFrame, *, other_positions: bool, k: int = 20) -> float:
        """Share of each well's k nearest neighbours from the other batch, over the share expected by chance.

        With ``other_positions`` only wells at other well positions count as neighbours: the
        planted batch-specific well-position offset (which Harmony, correcting by batch, does
        not target) then cannot make same-position wells of one batch each other's neighbours.
        """
        x = frame[[c for c in frame.columns if not c.startswith("Metadata_")]].to_numpy(dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        batch = frame["Metadata_Batch"].to_numpy()
        well = frame["Metadata_Well"].to_numpy()
        other = []
        for s in range(0, len(x), 2048):
            e = min(s + 2048, len(x))
            sim = x[s:e] @ x.T
            np.put_along_axis(sim, np.arange(s, e)[:, None], -np.inf, axis=1)
            if other_positions:
                sim[well[s:e, None] == well[None, :]] = -np.inf
            nn = np.argpartition(-sim, k, axis=1)[:, :k]
            other.append((batch[nn] != batch[s:e, None]).mean(axis=1))
        share = pd.Series(batch).map(pd.Series(batch).value_counts(normalize=True)).to_numpy()
        return float(np.mean(np.concatenate(other) / (1 - share)))

    before, after = frames["+featselect"], frames["+harmony"]
    return {"stages": rows,
            "mixing_before": mixing(before, other_positions=False), "mixing_after": mixing(after, other_positions=False),
            "mixing_other_before": mixing(before, other_positions=True),
            "mixing_other_after": mixing(after, other_positions=True)}


# --------------------------------------------------------------------------- report


def agreement(out: Path, a: dict[str, Any], b: dict[str, Any]) -> str:
    import numpy as np
    import pandas as pd

    same = a["features"] == b["features"]
    ours_t, ref_t = pd.read_parquet(out / "ours_map.parquet"), pd.read_parquet(out / "reference_map.parquet")
    diff = float(np.abs(ours_t["mean_average_precision"].to_numpy() - ref_t["mean_average_precision"].to_numpy()).max())
    p_same = bool((ours_t["p_value"].to_numpy() == ref_t["p_value"].to_numpy()).all())
    x = pd.read_parquet(out / "ours.parquet")[a["features"]].to_numpy()
    y = pd.read_parquet(out / "reference.parquet")[b["features"]].to_numpy() if same else None
    harm = f"largest difference after harmony {np.abs(x - y).max():.2g}" if y is not None else "feature sets differ"
    return (f"Features kept: cytoprofile {len(a['features'])}, reference {len(b['features'])} "
            f"({'the same' if same else 'different'}); {harm}; mAP largest difference {diff:.2g}, "
            f"p-values {'identical' if p_same else 'different'}.")


def report(params: dict[str, Any], a: Contender, b: Contender, ta: dict[str, Any], tb: dict[str, Any],
           agree: str, q: dict[str, Any], null_size: int) -> str:
    import numpy as np

    rows = params["plates"] * params["wells"]
    matrix_in = rows * params["features"] * 4
    sa, sb = ta["seconds"], tb["seconds"]
    io = sa["read"] + sa["write"]
    lines = [
        "## Processing: var → mad → int → featselect → harmony → mAP",
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M} ({source_state()}) on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}.",
        "",
        f"Reproduce: `{_command(params)}`. Data: "
        f"{params['plates']} plates × {params['wells']} wells × {params['features']} float32 features "
        f"({mb(matrix_in)} as float32), planted plate, well-position, batch and cell-count effects; "
        f"mAP: activity, negatives on the same plate, null size {null_size}. Harmony runs on one thread on both sides.",
        "",
        "| step | cytoprofile s | reference s | reference / cytoprofile | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for step in ("var", "mad", "cc", "int", "featselect", "harmony", "map"):
        ratio = sb[step] / sa[step] if sa[step] > 0 else float("inf")
        target = "wraps harmonypy (same call)" if step == "harmony" else verdict_at_least(ratio, 3)
        lines.append(f"| {step} | {sa[step]:.2f} | {sb[step]:.2f} | {ratio:.1f}× | {target} |")
    lines += [
        "",
        f"Reading and writing the table took {io:.2f} s on our side (Parquet: read {sa['read']:.2f} s, write "
        f"{sa['write']:.2f} s). Each step against that time: "
        + "; ".join(f"{s} {sa[s] / io:.2f}×" + (f" ({verdict_at_most(sa[s] / io, 1.5)})" if s in ("mad", "int") else "")
                    for s in ("var", "mad", "cc", "int", "featselect", "harmony", "map"))
        + " (the ≤ 1.5× goal is for the elementwise steps, mad and int).",
        "",
        "| contender | peak RSS | above imports | float32 matrix | (peak − imports) / matrix |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c, t in ((a, ta), (b, tb)):
        peak = max(c.peak, t.get("max_rss") or 0)  # per-step resets hide the peak from wait4
        above = peak - t["baseline_rss"]
        lines.append(f"| {c.name} | {mb(peak)} | {mb(above)} | {mb(matrix_in)} | {above / matrix_in:.1f}× |")
    peak_a = max(a.peak, ta.get("max_rss") or 0)
    ratio = (peak_a - ta["baseline_rss"]) / matrix_in
    total = sum(sa[s] for s in STEPS)
    per_well = total / rows
    release = RELEASE_WELLS * 1500 * 4
    lines += [
        "",
        *_step_peaks_line(ta.get("step_peaks") or {}, matrix_in),
        "",
        agree,
        "",
        f"Paper estimate for the JUMP compound release ({RELEASE_WELLS:,} wells × 1,500 features, float32 matrix "
        f"{mb(release)}): at the measured {per_well * 1e3:.2f} ms per well for the whole chain here "
        f"({params['features']} features in, {len(ta['features'])} kept), about "
        f"{per_well * RELEASE_WELLS / 3600 * 1500 / params['features']:.1f} h on this machine if the cost grows "
        "linearly with rows and width (harmony and the correlation filter grow faster in the width). Memory: "
        f"the measured {ratio:.1f}× the float32 matrix gives about {ratio * release / 1e9:.0f} GB at the peak, "
        f"{'within' if ratio * release < 60e9 else 'beyond'} one 64 GB machine. The matrix stays float32; our "
        "steps work on column blocks of 64 features of float64 and write back in place, and hand their array to "
        "the output frame without a copy; feature_select holds one float64 matrix at a time (the correlation's "
        "features × rows matrix is made straight from the frame). The peak is harmonypy's: it computes in "
        "float32 but takes only a float64 input, and its result comes back through two float64 copies of its "
        "float32 state (about 6× the float32 matrix at that moment; the step holds nothing else of its own then "
        "and, handed its input as run_chain hands it, has let go of the input's features).",
        "",
        "Do the corrections do what they claim? (mAP of the planted actives, activity vs same-plate negative "
        "controls, null size 1000)",
        "",
        "| after | mAP of actives | actives retrieved | inactives retrieved |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in q["stages"]:
        lines.append(f"| {r['stage']} | {r['map_actives']:.3f} | {r['retrieved_actives']:.0%} | "
                     f"{r['retrieved_inactives']:.0%} |")
    lines += [
        "",
        "Batch mixing (share of each well's 20 nearest neighbours from the other batch over the share expected "
        "by chance, 1 = perfectly mixed):",
        "",
        f"- among wells at other well positions: {q['mixing_other_before']:.2f} before Harmony, "
        f"{q['mixing_other_after']:.2f} after;",
        f"- among all wells: {q['mixing_before']:.2f} before, {q['mixing_after']:.2f} after. The planted data gives "
        "each batch its own well-position offset, which Harmony (correcting by `Metadata_Batch`) does not "
        "target: with many plates a batch, a well's nearest neighbours are that position's wells of its own "
        "batch (49 of them at 100 plates), so this reading stays near 0 whatever happens to the batch offset.",
    ]
    del np
    return "\n".join(lines)


def _command(params: dict[str, Any]) -> str:
    if (params["plates"], params["wells"], params["features"]) == (100, 384, 1500):
        return "python bench/processing.py --full"
    return (f"python bench/processing.py --plates {params['plates']} --wells {params['wells']} "
            f"--features {params['features']}")


def ours_only_report(params: dict[str, Any], wall: float, peak: int, t: dict[str, Any]) -> str:
    """cytoprofile alone at a larger size: step seconds, per-well cost, peak RSS against the matrix."""
    rows = params["plates"] * params["wells"]
    matrix = rows * params["features"] * 4
    sec = t["seconds"]
    chain = sum(sec[s] for s in STEPS)
    steps = ", ".join(f"{s} {sec[s]:.1f} s" for s in ("var", "mad", "cc", "int", "featselect", "harmony", "map"))
    above = peak - t["baseline_rss"]
    return "\n".join([
        "### Processing, cytoprofile alone at a larger size",
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M} ({source_state()}): `python bench/processing.py --ours-only "
        f"--plates {params['plates']} --features {params['features']}`; {params['plates']} plates × {params['wells']} "
        f"wells × {params['features']} features, float32 matrix {mb(matrix)}.",
        "",
        f"Steps: {steps}; read + write {sec['read'] + sec['write']:.1f} s; whole process {wall:.1f} s.",
        f"Chain cost {chain / rows * 1e3:.2f} ms per well; × {RELEASE_WELLS:,} wells ≈ {chain / rows * RELEASE_WELLS / 3600:.1f} h "
        f"at this width on this machine.",
        f"Peak RSS {mb(peak)}, {mb(above)} above the imports: {above / matrix:.1f}× the float32 matrix "
        f"({verdict_at_most(above / matrix, 2.5)} for ≤ 2.5×).",
        *_step_peaks_line(t.get("step_peaks") or {}, matrix),
    ])


def _step_peaks_line(peaks: dict[str, int], matrix: int) -> list[str]:
    """Each step's own peak (RSS above the RSS before it, which holds its input) against the matrix."""
    if not peaks:
        return []
    own = ", ".join(f"{s} {peaks[s] / matrix:.1f}×" for s in ("var", "mad", "cc", "int", "featselect", "harmony", "map")
                    if s in peaks)
    ours = [s for s in ("var", "mad", "cc", "int", "featselect", "map") if s in peaks]
    worst = max(ours, key=lambda s: peaks[s]) if ours else None
    verdict = f"; our own steps at most {peaks[worst] / matrix:.1f}× ({worst}, " \
              f"{verdict_at_most(peaks[worst] / matrix, 2.5)} for ≤ 2.5×)" if worst else ""
    return [f"Each step's peak above the RSS before it (input and output frames included), / float32 matrix: "
            f"{own}{verdict}; harmony's is harmonypy's floor (its float32 state and the two float64 copies its "
            "result comes back through)."]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=10)
    parser.add_argument("--wells", type=int, default=384)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--full", action="store_true", help="100 plates × 384 wells × 1,500 features")
    parser.add_argument("--null-size", type=int, default=10000)
    parser.add_argument("--no-write", action="store_true", help="print instead of updating RESULTS.md")
    parser.add_argument("--ours-only", action="store_true",
                        help="time cytoprofile alone (memory and per-well cost at sizes the reference cannot run here)")
    parser.add_argument("--worker", choices=["ours", "reference", "quality"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _setup()
    if args.worker:
        work = args.src.parent
        fn = {"ours": lambda: ours(args.src, work, args.null_size),
              "reference": lambda: reference(args.src, work, args.null_size),
              "quality": lambda: quality(args.src)}[args.worker]
        (work / f"{args.worker}.json").write_text(json.dumps(fn()))
        return 0
    if args.full:
        args.plates, args.wells, args.features = 100, 384, 1500
    src = WORK / f"profiles_{args.plates}x{args.wells}x{args.features}.parquet"
    params = generate(src, args.plates, args.wells, args.features)
    log = WORK / "bench.log"
    if args.ours_only:
        run = measure([sys.executable, __file__, "--worker", "ours", "--src", src, "--null-size", str(args.null_size)], log)
        timings = json.loads((WORK / "ours.json").read_text())
        text = ours_only_report(params, run.seconds, max(run.max_rss, timings.get("max_rss") or 0), timings)
        print(text)
        if not args.no_write:
            write_section("processing-ours-only", text)
        return 0
    contenders = []
    for name in ("ours", "reference"):
        c = Contender(name="cytoprofile" if name == "ours" else "reference calls")
        c.runs.append(measure([sys.executable, __file__, "--worker", name, "--src", src,
                               "--null-size", str(args.null_size)], log))
        contenders.append(c)
    measure([sys.executable, __file__, "--worker", "quality", "--src", src], log)
    ta, tb, q = (json.loads((WORK / f"{n}.json").read_text()) for n in ("ours", "reference", "quality"))
    text = report(params, contenders[0], contenders[1], ta, tb, agreement(WORK, ta, tb), q, args.null_size)
    if args.no_write:
        print(text)
    else:
        write_section("processing", text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
