"""The data model's names, declared once: key columns, compartments, features and metadata,
well and plate geometry, missing-value tokens and every step's list of choices.

Every other module asks this one "is this column a feature?", "what is this well
called?" or "which methods exist?", so a rule changes in one place and the steps can
never disagree about it. Nothing here reads files or computes profiles, and loading it
imports no data library, so the command line can take its defaults from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, TypeGuard

from .errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAP_MODES",
    "MAP_NEG_SAMEBY",
    "RANK_INT_TIES",
    "SYNTH_EXPORTS",
    "VARIANCE_THRESHOLD_MEANINGS",
    "MODZ_METHODS",
    "NONE_WORDS",
    "OUTPUT_FORMATS",
    "PROCESSING_INPUTS",
    "QC_LEVELS",
    "METADATA_PREFIXES",
    "is_any_metadata",
    "non_metadata_columns",
    "AGGREGATE_OPERATIONS",
    "BACKEND_KINDS",
    "CANONICAL_COMPARTMENTS",
    "CONSENSUS_OPERATIONS",
    "CORRELATION_METHODS",
    "COUNT_CHECKS",
    "DEFAULT_COMPARTMENTS",
    "DEFAULT_STRATA",
    "FEATURE_SELECT_LEVELS",
    "FEATURE_SELECT_OPERATIONS",
    "IMAGE_FILE_FAMILIES",
    "IMAGE_METADATA_PREFIX",
    "IMAGE_NUMBER",
    "KEY_COLUMNS",
    "LINKING_COLUMNS",
    "METADATA_PREFIX",
    "MISSING_TOKENS",
    "CSV_NULL_VALUES",
    "DEFAULT_IMAGE_FEATURE_CATEGORIES",
    "SPHERING_GRID",
    "NEGCON_QUERY",
    "NORMALIZE_METHODS",
    "OBJECT_COUNT_COLUMN",
    "OBJECT_NUMBER",
    "PERTURBATION_CANDIDATES",
    "PLATES_WITHOUT_CONTROLS",
    "PLATE_FORMATS",
    "PROCESSING_STEPS",
    "REPLICATE_CANDIDATES",
    "SINGLE_CELL_FORMATS",
    "SITE_NAME",
    "SITE_STRATA",
    "distinct_strata",
    "SPHERIZE_METHODS",
    "TABLE_FORMATS",
    "TABLE_NUMBER",
    "TEXT_FAMILIES",
    "UNMATCHED_WELLS",
    "WELL_NAME",
    "AggregateOperation",
    "TableFormat",
    "compartment_features",
    "feature_prefixes",
    "grid_to_well",
    "infer_features",
    "matching_features",
    "is_metadata",
    "is_text_column",
    "metadata_columns",
    "normal_well",
    "normalise_well",
    "plate_layout",
    "prefixed_features",
    "spelling_note",
    "table_prefixes",
    "prefix_metadata",
    "resolve_features",
    "row_label",
    "well_name_problem",
    "well_to_grid",
    "with_metadata_prefix",
]

# ---------------------------------------------------------------- key columns

TABLE_NUMBER = "TableNumber"
IMAGE_NUMBER = "ImageNumber"
OBJECT_NUMBER = "ObjectNumber"
#: The columns identifying a row of a CellProfiler object table.
KEY_COLUMNS: tuple[str, ...] = (TABLE_NUMBER, IMAGE_NUMBER, OBJECT_NUMBER)
#: Columns that link compartments (named with their table prefix): metadata, not features.
LINKING_COLUMNS = frozenset({"Cytoplasm_Parent_Cells", "Cytoplasm_Parent_Nuclei"})
#: Per-well profiles are grouped by these.
DEFAULT_STRATA: tuple[str, ...] = ("Metadata_Plate", "Metadata_Well")
#: Cells per well in an aggregated profile.
OBJECT_COUNT_COLUMN = "Metadata_Object_Count"
#: The wells a reference is fitted on by default: the negative controls.
NEGCON_QUERY = "Metadata_control_type == 'negcon'"
#: Columns naming a treatment, tried in this order by QC's percent replicating.
REPLICATE_CANDIDATES: tuple[str, ...] = (
    "Metadata_broad_sample",
    "Metadata_pert_iname",
    "Metadata_JCP2022",
    "Metadata_treatment",
    "Metadata_Treatment",
)
#: Columns naming a perturbation, tried in this order by mAP (``evaluate``) when none is given.
PERTURBATION_CANDIDATES: tuple[str, ...] = (
    "Metadata_broad_sample",
    "Metadata_pert_iname",
    "Metadata_JCP2022",
    "Metadata_treatment",
    "Metadata_compound",
)

# ---------------------------------------------------------------- compartments

#: The three compartments of a Cell Painting pipeline, always treated as features.
CANONICAL_COMPARTMENTS: tuple[str, ...] = ("Cells", "Cytoplasm", "Nuclei")
#: Object tables aggregated when none are named.
DEFAULT_COMPARTMENTS: tuple[str, ...] = CANONICAL_COMPARTMENTS

# ---------------------------------------------------------------- metadata and features

#: A column is metadata when its name starts with this.
METADATA_PREFIX = "Metadata_"
#: CellProfiler image metadata as older backends named it (annotate renames it to ``Metadata_``).
IMAGE_METADATA_PREFIX = "Image_Metadata_"


#: CellProfiler's text measurement families (image metadata, file and folder names, object-mask files, image set
#: encodings): text in Image.csv, and in an object CSV (ExportToSpreadsheet's "add image metadata / file names" options),
#: where they are the image's, never a feature. Every other CellProfiler column is numeric.
TEXT_FAMILIES: tuple[str, ...] = ("Metadata_", "FileName_", "PathName_", "URL_", "ObjectsFileName_", "ObjectsPathName_",
                                  "ObjectsURL_", "MD5Digest_", "ImageSet_")


#: The Image.csv columns that say which image files an image row is (file, folder, URL, frame and series of a
#: multi-image file): two rows alike in all of them that vary are one acquisition.
IMAGE_FILE_FAMILIES: tuple[str, ...] = ("FileName_", "PathName_", "URL_", "Frame_", "Series_")


def is_text_column(name: str) -> bool:
    """Whether a CellProfiler column (as written in a CSV, without a table prefix) is of a text family."""
    return name.startswith(TEXT_FAMILIES)


def spelling_note(given: str, found: str) -> str:
    """What to add to a message comparing two names that print alike but are not equal: they differ
    only in Unicode normalisation (a folder copied from macOS is decomposed, NFD), or in spaces around."""
    import unicodedata

    if given != found and unicodedata.normalize("NFC", given) == unicodedata.normalize("NFC", found):
        return ("; the two differ only in Unicode normalisation (one is decomposed, NFD, as macOS writes names): "
                "rename the plate folder to the composed form (NFC), e.g. with convmv -f utf8 -t utf8 --nfc")
    if given != found and given.strip() == found.strip():
        return "; the two differ only in spaces around the name"
    return ""


def is_metadata(name: object) -> TypeGuard[str]:
    """Whether a column name is metadata: a string starting with ``Metadata_``."""
    return isinstance(name, str) and name.startswith(METADATA_PREFIX)


#: Both spellings of metadata a step's record counts as not a feature (annotate renames the second to the first).
METADATA_PREFIXES: tuple[str, ...] = (METADATA_PREFIX, IMAGE_METADATA_PREFIX)


def is_any_metadata(name: object) -> bool:
    """Whether a column name is metadata in either spelling, ``Metadata_`` or an older backend's ``Image_Metadata_``."""
    return str(name).startswith(METADATA_PREFIXES)


def non_metadata_columns(columns: Iterable[object]) -> list[str]:
    """The names among ``columns`` that are metadata in neither spelling (see :func:`is_any_metadata`), as strings."""
    return [str(c) for c in columns if not is_any_metadata(c)]


def metadata_columns(columns: Iterable[object]) -> list[str]:
    """The metadata names among ``columns``, in their order."""
    return [c for c in columns if is_metadata(c)]


def with_metadata_prefix(name: str) -> str:
    """``name`` with the ``Metadata_`` prefix; a name that has it is returned as it is."""
    return name if name.startswith(METADATA_PREFIX) else f"{METADATA_PREFIX}{name}"


def prefix_metadata(columns: Sequence[object]) -> list[object]:
    """Prefix every string column name that lacks ``Metadata_`` with it."""
    return [with_metadata_prefix(c) if isinstance(c, str) else c for c in columns]


def feature_prefixes(compartments: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Column-name prefixes of the features of ``compartments`` (default Cells, Cytoplasm, Nuclei).

    A name is used as given; an all-lower-case name (``speckles``, as recipe configs
    write compartments) also matches its capitalised and title-cased forms
    (``Speckles``, ``Cells_Cellpose3`` for ``cells_cellpose3``).
    """
    if compartments is None:
        return CANONICAL_COMPARTMENTS
    wrong = ConfigError(
        f"compartments must be a list of object table names such as ['Cells', 'speckles'], "
        f"got {compartments!r}"
    )
    if not isinstance(compartments, str | Iterable):
        raise wrong
    names = [compartments] if isinstance(compartments, str) else list(compartments)
    if not names or not all(isinstance(c, str) and c.strip() for c in names):
        raise wrong
    out: list[str] = []
    for name in names:
        forms = [name, name.capitalize(), name.title()] if name.islower() else [name]
        out.extend(f for f in forms if f not in out)
    return tuple(out)


def matching_features(profiles: pd.DataFrame, prefixes: Sequence[str], *, image_features: bool) -> list[str]:
    """The columns named with one of ``prefixes`` (and, with ``image_features``, the numeric
    ``Image*`` ones), in column order: what CellProfiler naming calls a feature."""
    import pandas as pd

    starts = tuple(prefixes)
    return [col for col in profiles.columns if isinstance(col, str) and (col.startswith(starts) or (
        image_features and col.startswith("Image") and pd.api.types.is_numeric_dtype(profiles[col])))]


def table_prefixes(tables: Sequence[str], *, image: bool = False) -> tuple[str, ...]:
    """The feature-name prefixes of backend tables (``Cells_``, ...; ``Image_`` too with ``image``)."""
    return tuple(f"{t}_" for t in (*tables, *(["Image"] if image else [])))


def infer_features(
    profiles: pd.DataFrame,
    *,
    image_features: bool = False,
    compartments: str | Sequence[str] | None = None,
) -> list[str]:
    """Feature columns by CellProfiler naming: names starting with a compartment.

    ``compartments`` defaults to Cells, Cytoplasm and Nuclei; pass the object tables
    that were aggregated (e.g. ``[..., "speckles"]``) to carry extra ones through.
    With ``image_features``, numeric ``Image*`` columns count too.
    """
    from .checks import check_flag

    check_flag("image_features", image_features)
    prefixes = feature_prefixes(compartments)
    found = matching_features(profiles, prefixes, image_features=image_features)
    if not found:
        raise InputError(
            f"no feature columns found (names starting with {', '.join(prefixes)}); "
            "name the compartments with compartments=[...] or pass the feature names "
            "explicitly with features=[...]"
        )
    return found


def resolve_features(
    profiles: pd.DataFrame,
    features: str | Sequence[str],
    *,
    image_features: bool = False,
    compartments: str | Sequence[str] | None = None,
    feature_prefixes: Sequence[str] | None = None,
) -> list[str]:
    """``"infer"`` or an explicit list, checked against the columns of ``profiles``.

    With ``feature_prefixes``, ``"infer"`` means the columns named with them exactly as
    written (``["PC"]`` after PCA, a deep-learning model's prefix) instead of CellProfiler's
    compartments."""
    from .checks import as_names, check_flag, check_frame

    check_frame("profiles", profiles)
    check_flag("image_features", image_features)
    if isinstance(features, str):
        if features != "infer":
            raise ConfigError(
                f"features must be 'infer' or a list of column names, got {features!r}"
            )
        if feature_prefixes is not None:
            found = prefixed_features(profiles.columns, feature_prefixes)
            if not found:
                raise InputError(f"no feature columns start with {', '.join(feature_prefixes)}")
            return found
        return infer_features(profiles, image_features=image_features, compartments=compartments)
    names = as_names("features", features)
    columns = set(profiles.columns)
    missing = [f for f in names if f not in columns]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"features names {len(missing)} column(s) absent from the profiles: {shown}; "
            "remove them from the feature list or use features: infer"
        )
    return names


def prefixed_features(columns: Iterable[object], prefixes: Sequence[str]) -> list[str]:
    """The names among ``columns`` starting with one of ``prefixes`` exactly as written
    (``PC`` after PCA, a deep-learning model's prefix), in their order."""
    starts = tuple(prefixes)
    return [c for c in columns if isinstance(c, str) and c.startswith(starts)]


def compartment_features(table: str, columns: Sequence[str]) -> list[str]:
    """Feature columns of a backend table: prefixed, neither keys nor linking columns nor text families
    (``Cells_Metadata_Plate``: image metadata an object CSV repeats), in order."""
    prefix = f"{table}_"
    return [c for c in columns if c.startswith(prefix) and c not in LINKING_COLUMNS and c not in KEY_COLUMNS
            and not is_text_column(c[len(prefix):])]


# ---------------------------------------------------------------- wells and plates

#: (rows, columns) of 96-, 384- and 1536-well plates.
PLATE_FORMATS: tuple[tuple[int, int], ...] = ((8, 12), (16, 24), (32, 48))
#: A well name as written in plate maps: row A-Z or AA-AF, two-digit column 01-48.
WELL_NAME = re.compile(r"^(?:[A-Z]|A[A-F])(?:0[1-9]|[1-3][0-9]|4[0-8])$")
# Row letters and column number, spaces and leading zeros allowed: the spelling QC and
# the plate-map checks accept.
_LOOSE_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
# The spellings CellProfiler image names use: A1, a01, and Phenix r01c01.
_IMAGE_WELL = re.compile(r"^(?P<row>[A-Za-z]{1,2})(?P<col>\d{1,3})$")
_PHENIX_WELL = re.compile(r"^[rR](?P<row>\d{1,2})[cC](?P<col>\d{1,2})$")
_PHENIX_ROWS = 52  # A..Z, AA..AZ
#: A site folder's name in the handbook layout: ``PLATE-WELL-SITE`` (``BR00116991-A01-1``, ``P1-r01c01-3``).
#: The strata that name a site; others (a time point, a z-plane) tell apart images of one site.
SITE_STRATA: frozenset[str] = frozenset({"Metadata_Plate", "Metadata_Well", "Metadata_Site"})


def distinct_strata(strata: Sequence[str]) -> list[str]:
    """The ``strata`` beyond plate, well and site: they make images of one site different sites."""
    return [c for c in strata if c not in SITE_STRATA]


SITE_NAME = re.compile(r"^(?P<plate>.+)-(?P<well>[A-Za-z]{1,2}\d{1,3}|[rR]\d{1,2}[cC]\d{1,2})-(?P<site>\d+)$")


def well_to_grid(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well name: ``"A01"`` → (0, 0), ``"AF48"`` → (31, 47)."""
    match = _LOOSE_WELL.match(str(well))
    if not match:
        raise InputError(
            f"well {well!r} is not a well name like 'A01' or 'AF48'; "
            "check the Metadata_Well column"
        )
    letters, number = match.group(1).upper(), int(match.group(2))
    row = 0
    for letter in letters:  # bijective base 26: A..Z, AA..AZ, ...
        row = row * 26 + (ord(letter) - ord("A") + 1)
    if number < 1:
        raise InputError(f"well {well!r}: columns start at 1; check the Metadata_Well column")
    return row - 1, number - 1


def row_label(index: int) -> str:
    """Letters of a zero-based row: 0 → ``"A"``, 26 → ``"AA"``."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def grid_to_well(row: int, col: int) -> str:
    """Well name of a zero-based grid position: (31, 47) → ``"AF48"``."""
    return f"{row_label(row)}{col + 1:02d}"


def normal_well(well: str) -> str:
    """``"a1"`` → ``"A01"`` (spaces and leading zeros allowed); a name that is not a well is returned unchanged."""
    try:
        return grid_to_well(*well_to_grid(well))
    except InputError:
        return str(well)


def normalise_well(value: str) -> str:
    """``A1``, ``a01`` and Phenix ``r01c01`` as ``A01``; other names unchanged (as read from image names)."""
    text = value.strip()
    match = _IMAGE_WELL.match(text)
    if match:
        return f"{match.group('row').upper()}{int(match.group('col')):02d}"
    match = _PHENIX_WELL.match(text)
    if match and 1 <= int(match.group("row")) <= _PHENIX_ROWS:
        return f"{row_label(int(match.group('row')) - 1)}{int(match.group('col')):02d}"
    return value


def well_name_problem(well: str) -> str | None:
    """Why ``well`` is not a well name like A01 (or AA01 on 1536 plates); None if it is."""
    if WELL_NAME.match(well):
        return None
    if not well.strip():
        return "the well is empty; fill in well_position or delete the row"
    loose = _LOOSE_WELL.match(well)
    if loose:
        row, col = loose.group(1).upper(), int(loose.group(2))
        suggestion = f"{row}{col:02d}"
        if WELL_NAME.match(suggestion):
            return f"well {well!r} is not written like A01; write it as {suggestion!r}"
    return (
        f"{well!r} is not a well name; write a row (A-H, A-P on 384-well plates, up to AF "
        "on 1536-well plates) and a two-digit column (01-12, 01-24, 01-48), e.g. A01"
    )


def plate_layout(wells: Iterable[str]) -> tuple[int, int]:
    """(rows, columns) of the smallest 96-, 384- or 1536-well plate holding ``wells``.

    Wells beyond 32 × 48 give a grid just large enough; no wells give 8 × 12.
    """
    max_row = max_col = -1
    for well in wells:
        row, col = well_to_grid(well)
        max_row, max_col = max(max_row, row), max(max_col, col)
    for n_rows, n_cols in PLATE_FORMATS:
        if max_row < n_rows and max_col < n_cols:
            return n_rows, n_cols
    return max_row + 1, max_col + 1


# ---------------------------------------------------------------- missing values

#: Text a feature column may hold for a missing value (compared stripped, lower-cased).
#: The tokens read as null from CSV files are :data:`CSV_NULL_VALUES`.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null"})

# ---------------------------------------------------------------- defaults the command line shares

#: Image.csv measurement categories collate and aggregate add as features by default (the handbook's
#: collate_cmd.py categories).
DEFAULT_IMAGE_FEATURE_CATEGORIES: tuple[str, ...] = ("Granularity", "Texture", "ImageQuality", "Count", "Threshold")
#: Regularisation values sphering tries, the one giving the best mAP kept.
SPHERING_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-5, 4))
#: What CellProfiler writes for a missing number in a CSV: NULL in a numeric column (``inf`` stays infinite). Any
#: other word there (``NA``, ``None``, ``null``) is a non-number; a text column keeps every token as written, and
#: an empty text field is NULL.
CSV_NULL_VALUES: tuple[str, ...] = ("", "nan", "NaN")

# ---------------------------------------------------------------- choice lists

AggregateOperation = Literal["median", "mean"]
#: How single cells become a well's profile.
AGGREGATE_OPERATIONS: tuple[str, ...] = ("median", "mean")
#: ``normalize`` methods.
NORMALIZE_METHODS: tuple[str, ...] = ("standardize", "robustize", "mad_robustize", "spherize", "inverse_normal")
#: Whitening methods of ``normalize(method="spherize")``.
SPHERIZE_METHODS: tuple[str, ...] = ("PCA", "ZCA", "PCA-cor", "ZCA-cor")
#: ``feature_select`` operations, in the order the recipe runs them.
FEATURE_SELECT_OPERATIONS: tuple[str, ...] = (
    "variance_threshold",
    "frequency_threshold",
    "correlation_threshold",
    "drop_na_columns",
    "blocklist",
    "drop_outliers",
    "noise_removal",
)
#: Levels a feature selection is fitted at.
FEATURE_SELECT_LEVELS: tuple[str, ...] = ("plate", "batch", "all")
#: Correlation methods (feature selection's correlation threshold).
CORRELATION_METHODS: tuple[str, ...] = ("pearson", "spearman", "kendall")
#: ``consensus`` operations.
CONSENSUS_OPERATIONS: tuple[str, ...] = ("median", "mean", "modz")
#: Steps of a ``processing`` chain, named as the suffixes of a file name (``profiles_var_mad_featselect``).
PROCESSING_STEPS: tuple[str, ...] = (
    "var", "mad", "int", "featselect", "wellpos", "cc", "outlier", "dropna", "pca", "sphering", "harmony",
)
#: What ``processing`` steps fitted per plate do with a plate that has no control wells.
PLATES_WITHOUT_CONTROLS: tuple[str, ...] = ("error", "drop")
#: What annotate does with profile wells absent from the plate map.
UNMATCHED_WELLS: tuple[str, ...] = ("error", "drop")
TableFormat = Literal["csv", "csv.gz", "parquet"]
#: File formats of per-well profile tables.
TABLE_FORMATS: tuple[str, ...] = ("csv", "csv.gz", "parquet")
#: Single-cell backends ``collate`` writes.
BACKEND_KINDS: tuple[str, ...] = ("sqlite", "parquet")
#: What ``collate`` does when an object table's rows disagree with Image.csv's ``Count_<Object>``.
COUNT_CHECKS: tuple[str, ...] = ("error", "warn", "off")
#: How ``rank_int`` breaks ties: a seeded permutation or the average rank.
RANK_INT_TIES: tuple[str, ...] = ("random", "average")
#: What ``map`` (``evaluate.mean_average_precision``) retrieves replicates against.
MAP_MODES: tuple[str, ...] = ("activity", "distinctiveness", "consistency")
#: Columns mAP's negatives share with the query when none are named, per mode: JUMP scores
#: activity against the same plate's controls, the other modes against every negative.
MAP_NEG_SAMEBY: dict[str, tuple[str, ...]] = {"activity": ("Metadata_Plate",), "distinctiveness": (), "consistency": ()}
#: What feature_select's ``variance_threshold`` means: the recipe's frequency ratio, or a variance.
VARIANCE_THRESHOLD_MEANINGS: tuple[str, ...] = ("frequency", "variance")
#: What ``synth`` writes: ExportToSpreadsheet site folders or ExportToDatabase SQLite files.
SYNTH_EXPORTS: tuple[str, ...] = ("csv", "database")
#: File formats of the joined single-cell table.
SINGLE_CELL_FORMATS: tuple[str, ...] = ("parquet", "anndata")
#: Formats of the recipe's step outputs (``options.output_format``).
OUTPUT_FORMATS: tuple[str, ...] = ("csv", "parquet", "anndata")
#: Profiles a processing chain may start from (``processing_options.input``).
PROCESSING_INPUTS: tuple[str, ...] = ("augmented", "normalized", "normalized_negcon")
#: Feature-selection levels in the order quality control looks for their outputs.
QC_LEVELS: tuple[str, ...] = ("all", "batch", "plate")
#: Correlation methods of consensus's modz weights, in the order its message names them.
MODZ_METHODS: tuple[str, ...] = ("spearman", "pearson", "kendall")
#: Words an option takes for "no value" (``--float-format none``, a config's ``null`` string).
NONE_WORDS: tuple[str, ...] = ("none", "null")
