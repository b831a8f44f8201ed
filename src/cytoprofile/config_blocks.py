"""The recipe config's step blocks (aggregate … executor) and the value checks their fields share.

Each check raises one clear message, so a config error names the key and what it accepts
without pydantic's union noise; :mod:`cytoprofile.config` assembles the blocks into the
settings and batch documents and reads the file.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .aggregate import aggregate
from .annotate import annotate_files
from .feature_select import feature_select
from .io import USABLE_FLOAT_FORMAT
from .normalize import normalize
from .step_data import fit_query
from .vocabulary import (
    AGGREGATE_OPERATIONS,
    CORRELATION_METHODS,
    FEATURE_SELECT_OPERATIONS,
    NEGCON_QUERY,
    NONE_WORDS,
    NORMALIZE_METHODS,
    OBJECT_NUMBER,
    OUTPUT_FORMATS,
    SPHERIZE_METHODS,
    UNMATCHED_WELLS,
    with_metadata_prefix,
)
from .vocabulary import FEATURE_SELECT_LEVELS as LEVELS  # the schema checks names against these

__all__ = ["AggregateConfig", "function_default", "ExternalMetadataConfig", "AnnotateConfig", "NormalizeConfig", "NormalizeNegconConfig", "FeatureSelectParameters", "FeatureSelectConfig", "SummaryConfig", "HeatmapConfig", "MapConfig", "QualityControlConfig", "OptionsConfig", "ExecutorConfig", "Block", "Name", "REFUSED_KEYS", "check_output_dir", "split_compartments"]

_COMPRESSIONS = ("gzip",)
_OBJECT_FEATURES = (with_metadata_prefix(OBJECT_NUMBER), OBJECT_NUMBER)
_UNRELEASED = "exists only on an unreleased recipe branch; remove it"
REFUSED_KEYS = {"subgroup_col": f"subgroup_col {_UNRELEASED}"}


# --- value checks: each raises one clear message, so errors carry no union noise ---


def _choice(kind: str, choices: Sequence[str], *, optional: bool = False) -> BeforeValidator:
    """Accept one of ``choices`` (or null if ``optional``); otherwise name them all."""

    def check(value: Any) -> Any:
        if (isinstance(value, str) and value in choices) or (optional and value is None):
            return value
        hint = ""
        if optional and isinstance(value, str) and value.lower() in {*NONE_WORDS, "false"}:
            hint = " (write null for none)"
        elif isinstance(value, str):
            same_case = [c for c in choices if c.lower() == value.lower()]
            close = same_case or difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PydanticCustomError(
            "choice",
            "{value} is not {kind}{hint}; choose from {choices}",
            {"value": repr(value), "kind": kind, "hint": hint, "choices": ", ".join(choices)},
        )

    return BeforeValidator(check)


def _check_features(value: Any) -> Any:
    if value == "infer":
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise PydanticCustomError(
        "features",
        "expected 'infer' or a non-empty list of column names, got {value}",
        {"value": repr(value)},
    )


def _check_fields(value: Any) -> Any:
    if value == "all":
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value
    raise PydanticCustomError(
        "fields",
        "expected 'all' or a list of field-of-view (site) numbers, got {value}",
        {"value": repr(value)},
    )


def _check_name(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError(
            "name", "expected a non-empty name, got {value}", {"value": repr(value)}
        )
    if "/" in value or "\\" in value or value in {".", ".."}:
        raise PydanticCustomError(
            "name",
            "{value} cannot be a folder name (no '/', '\\', '.' or '..')",
            {"value": repr(value)},
        )
    return value


_FLOAT_FORMAT = USABLE_FLOAT_FORMAT


def _check_float_format(value: Any) -> Any:
    """``%.Ng`` or ``%.Ne`` (N >= 1) or null: formats that keep every value a usable float."""
    if value is None or (isinstance(value, str) and _FLOAT_FORMAT.fullmatch(value)):
        return value
    raise PydanticCustomError(
        "float_format",
        "{value} would truncate or break the numbers; use '%.Ng' or '%.Ne' with N >= 1 "
        "(such as '%.5g'), or null for full precision",
        {"value": repr(value)},
    )


def check_output_dir(value: Any) -> Any:
    """A folder inside the workspace: relative, without ``..`` leading out of it (``~/x``
    means a home folder to a reader, so it is refused too). The check is on the name: a
    symlink the user made inside the workspace is followed."""
    if isinstance(value, str) and value.strip():
        norm = os.path.normpath(value.replace("\\", "/"))
        if not (os.path.isabs(norm) or "://" in value or value.startswith("~") or norm == ".."
                or norm.startswith("../") or re.match(r"^[A-Za-z]:", value)):
            return value
    raise PydanticCustomError(
        "output_dir",
        "{value} is outside the workspace; give a folder relative to it, such as 'profiles'",
        {"value": repr(value)},
    )


def split_compartments(value: Any) -> Any:
    """The 2021 form ``compartments: cells,cytoplasm,nuclei`` is one comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_object_feature(value: Any) -> Any:
    if value in _OBJECT_FEATURES:
        return value
    raise PydanticCustomError(
        "object_feature",
        "{value}: cytoprofile counts objects by their object number; "
        "use Metadata_ObjectNumber (or remove the key)",
        {"value": repr(value)},
    )


def _check_sample_filter(value: Any) -> Any:
    if value is None:
        return None
    scalar = (str, int, float, bool)
    if isinstance(value, Mapping) and value:
        out: dict[str, list[Any]] = {}
        for column, allowed in value.items():
            values = allowed if isinstance(allowed, list) else [allowed]
            if (
                not isinstance(column, str)
                or not values
                or not all(isinstance(v, scalar) for v in values)
            ):
                break
            out[column] = values
        else:
            return out
    raise PydanticCustomError(
        "sample_filter",
        "expected a mapping of column name to a value or list of values, got {value}",
        {"value": repr(value)},
    )


def _no_subgroups(value: bool) -> bool:
    if value:
        raise PydanticCustomError(
            "unreleased", "subgroup outputs: {why}, or set it to false", {"why": _UNRELEASED}
        )
    return value


def _str_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Name = Annotated[str, BeforeValidator(_check_name)]
_Features = Annotated[Literal["infer"] | list[str], BeforeValidator(_check_features)]
_Fields = Annotated[Literal["all"] | list[int], BeforeValidator(_check_fields)]
_OperationName = str
_Operation = Annotated[
    _OperationName,
    _choice("a feature-selection operation", FEATURE_SELECT_OPERATIONS),
]
_NormalizeMethod = Annotated[
    str,
    _choice("a normalization method", NORMALIZE_METHODS),
]
_Level = Annotated[Literal["plate", "batch", "all"], _choice("a feature-selection level", LEVELS)]
_SampleFilter = Annotated[
    dict[str, list[str | int | float | bool]] | None, BeforeValidator(_check_sample_filter)
]


class Block(BaseModel):
    """Shared model settings: unknown keys are reported by the loader, not here."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)


def _require(model: BaseModel, keys: Sequence[str], reason: str) -> None:
    missing = [k for k in keys if getattr(model, k) is None]
    if missing:
        raise PydanticCustomError(
            "required_if",
            "{keys} required when {reason}",
            {
                "keys": " and ".join(repr(k) for k in missing)
                + (" is" if len(missing) == 1 else " are"),
                "reason": reason,
            },
        )


# --- settings blocks ---


def function_default(function: Any, name: str) -> Any:
    """The step function's default for ``name``: a block key named as the function's keyword states no default of
    its own (the few that differ on purpose are said where they are, and listed in tests/test_cli_signatures.py)."""
    return inspect.signature(function).parameters[name].default


class AggregateConfig(Block):
    """``aggregate``: single cells to one profile per well."""

    perform: bool = True
    plate_column: str = "Metadata_Plate"
    well_column: str = "Metadata_Well"
    site_column: str | None = None
    method: Annotated[
        Literal["median", "mean"], _choice("an aggregation method", AGGREGATE_OPERATIONS)
    ] = function_default(aggregate, "operation")
    fields: _Fields = "all"
    object_feature: Annotated[str, BeforeValidator(_check_object_feature)] = "Metadata_ObjectNumber"
    image_feature_categories: list[str] = Field(default_factory=list)
    # cytoprofile extensions: leave cells a cell QC set flags out of the profiles
    # (true: every set of the thresholds file; a list: those sets)
    exclude_outlier_cells: bool | list[str] = False
    outlier_thresholds: str | None = None

    @model_validator(mode="after")
    def _outliers(self) -> AggregateConfig:
        if self.outlier_thresholds is not None and self.exclude_outlier_cells is False:
            raise PydanticCustomError("outlier_thresholds", "outlier_thresholds has no effect unless exclude_outlier_cells is set")
        if self.exclude_outlier_cells is not False and not self.perform:
            raise PydanticCustomError("exclude_outlier_cells", "exclude_outlier_cells needs perform: true (the recipe aggregates "
                                      "the backend); for collate's profiles use `cytoprofile collate --exclude-outlier-cells`")
        return self


def _external_form(value: Any) -> Any:
    """The 2021 form ``external: FILE`` (a tab-separated file in metadata/moa/, keyed on
    broad_sample); ``false``, ``''`` and null mean none."""
    if value is None or value is False or value == "":
        return {"perform": False}
    if isinstance(value, str):
        return {"perform": True, "file": value, "merge_column": "broad_sample", "folder": "moa"}
    return value


class ExternalMetadataConfig(Block):
    """``annotate.external``: an extra table joined on a shared key column."""

    perform: bool = False
    file: str | None = None
    merge_column: str | None = None
    # cytoprofile extension: the 2021 string form reads metadata/moa/FILE
    folder: Name = "external_metadata"

    @model_validator(mode="after")
    def _complete(self) -> ExternalMetadataConfig:
        if self.perform:
            _require(self, ("file", "merge_column"), "perform is true")
        return self

    @property
    def join_column(self) -> str | None:
        """The key column as it appears in profiles (``Metadata_`` prefixed)."""
        if self.merge_column is None:
            return None
        return with_metadata_prefix(self.merge_column)


class AnnotateConfig(Block):
    """``annotate``: join the plate map (and external metadata) to the profiles."""

    perform: bool = True
    well_column: str = "Metadata_Well"
    external: Annotated[ExternalMetadataConfig, BeforeValidator(_external_form)] = Field(
        default_factory=ExternalMetadataConfig
    )
    # cytoprofile extension: profiles' wells absent from the plate map stop the run
    unmatched_wells: Annotated[
        Literal["error", "drop"], _choice("an unmatched-wells choice", UNMATCHED_WELLS)
    ] = function_default(annotate_files, "unmatched_wells")


class NormalizeConfig(Block):
    """``normalize``: scale every well against statistics fitted on ``samples``."""

    perform: bool = True
    method: _NormalizeMethod = "mad_robustize"  # the recipe's default; the function's is standardize
    features: _Features = function_default(normalize, "features")
    image_features: bool = function_default(normalize, "image_features")
    mad_robustize_fudge_factor: float = Field(default=function_default(normalize, "mad_robustize_epsilon"), ge=0)
    subgroups: Annotated[bool, AfterValidator(_no_subgroups)] = False
    min_cells: int = Field(default=1, ge=0)  # the recipe's "every well"; the function's is None
    # cytoprofile extensions
    samples: str = Field(default=function_default(normalize, "samples"), min_length=1)
    sample_filter: _SampleFilter = None
    spherize_method: Annotated[
        Literal["PCA", "ZCA", "PCA-cor", "ZCA-cor"],
        _choice("a spherize method", SPHERIZE_METHODS),
    ] = function_default(normalize, "spherize_method")
    spherize_epsilon: float = Field(default=function_default(normalize, "spherize_epsilon"), ge=0)
    spherize_center: bool = function_default(normalize, "spherize_center")

    def fit_query(self) -> str:
        """The pandas query choosing the wells the normalization is fitted on.

        ``"all"`` when nothing restricts them; otherwise ``samples``, the
        ``sample_filter`` columns and ``Metadata_Object_Count >= min_cells`` (when
        ``min_cells`` is not 1), joined with ``&``.
        """
        return fit_query(self.samples, sample_filter=self.sample_filter, min_cells=self.min_cells)


class NormalizeNegconConfig(NormalizeConfig):
    """``normalize_negcon``: as ``normalize``, fitted on negative-control wells."""

    samples: str = Field(default=NEGCON_QUERY, min_length=1)


class FeatureSelectParameters(Block):
    """``feature_select.parameters`` (cytoprofile extension): thresholds of the operations."""

    na_cutoff: float = Field(default=function_default(feature_select, "na_cutoff"), ge=0, le=1)
    corr_threshold: float = Field(default=function_default(feature_select, "corr_threshold"), ge=-1, le=1)
    corr_method: Annotated[
        Literal["pearson", "spearman", "kendall"],
        _choice("a correlation method", CORRELATION_METHODS),
    ] = function_default(feature_select, "corr_method")
    freq_cut: float = Field(default=function_default(feature_select, "freq_cut"), ge=0, le=1)
    unique_cut: float = Field(default=function_default(feature_select, "unique_cut"), ge=0, le=1)
    min_variance: float = Field(default=function_default(feature_select, "min_variance"), ge=0)
    outlier_cutoff: float = Field(default=function_default(feature_select, "outlier_cutoff"), gt=0)
    blocklist_file: str | None = function_default(feature_select, "blocklist_file")
    noise_removal_perturb_groups: Annotated[list[str] | None, BeforeValidator(_str_list)] = None
    noise_removal_stdev_cutoff: float | None = function_default(feature_select, "noise_removal_stdev_cutoff")


def _default_operations() -> list[_OperationName]:
    return ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]


class FeatureSelectConfig(Block):
    """``feature_select`` / ``feature_select_negcon``: drop uninformative features."""

    perform: bool = True
    features: _Features = "infer"
    level: _Level = "batch"
    gct: bool = False
    image_features: bool = False
    operations: list[_Operation] = Field(default_factory=_default_operations, min_length=1)
    subgroups: Annotated[bool, AfterValidator(_no_subgroups)] = False
    min_cells: int = Field(default=1, ge=0)
    # cytoprofile extension
    parameters: FeatureSelectParameters = Field(default_factory=FeatureSelectParameters)

    @model_validator(mode="after")
    def _complete(self) -> FeatureSelectConfig:
        if self.perform and "noise_removal" in self.operations:
            missing = [
                k
                for k in ("noise_removal_perturb_groups", "noise_removal_stdev_cutoff")
                if getattr(self.parameters, k) is None
            ]
            if missing:
                raise PydanticCustomError(
                    "required_if",
                    "operation 'noise_removal' needs parameters.{keys}",
                    {"keys": " and parameters.".join(missing)},
                )
        return self


class SummaryConfig(Block):
    """``quality_control.summary``: per-plate well and site counts from load_data."""

    perform: bool = True
    row: str = "Metadata_Row"
    column: str = "Metadata_Col"


class HeatmapConfig(Block):
    """``quality_control.heatmap``: per-plate cell-count, correlation, position-effect maps."""

    perform: bool = True


def _activity_only() -> list[Literal["activity", "consistency"]]:
    return ["activity"]


class MapConfig(Block):
    """``quality_control.map`` (cytoprofile extension): mAP of the QC profiles.

    ``modes``: ``activity`` (replicates vs negative controls) and/or ``consistency``
    (profiles sharing ``annotation_column`` vs those sharing none), with copairs' null.
    ``neg_sameby`` unset: each mode's default (``vocabulary.MAP_NEG_SAMEBY``).
    """

    perform: bool = False
    modes: list[Literal["activity", "consistency"]] = Field(default_factory=_activity_only, min_length=1)
    pert_column: str | None = None
    annotation_column: str | None = None
    multilabel_separator: str | None = None
    control_query: str = Field(default=NEGCON_QUERY, min_length=1)
    neg_sameby: Annotated[list[str] | None, BeforeValidator(_str_list)] = None
    pos_diffby: Annotated[list[str], BeforeValidator(_str_list)] = Field(default_factory=list)
    null_size: int = Field(default=10000, ge=1)
    threshold: float = Field(default=0.05, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _complete(self) -> MapConfig:
        if self.perform and "consistency" in self.modes and not self.annotation_column:
            raise PydanticCustomError("required_if", "mode 'consistency' needs annotation_column (e.g. Metadata_moa)")
        return self


class QualityControlConfig(Block):
    """``quality_control``: summary table and heatmaps over all plates."""

    perform: bool = True
    summary: SummaryConfig = Field(default_factory=SummaryConfig)
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)
    map: MapConfig = Field(default_factory=MapConfig)


class OptionsConfig(Block):
    """``options``: how output tables are written."""

    compression: Annotated[
        Literal["gzip", "bz2", "zip", "xz", "zstd"] | None,
        _choice("a compression method", _COMPRESSIONS, optional=True),
    ] = "gzip"
    float_format: Annotated[str | None, BeforeValidator(_check_float_format)] = None
    samples: str = Field(default="all", min_length=1)
    # cytoprofile extension: step outputs as CSV (gzip per ``compression``), Parquet or AnnData
    output_format: Annotated[Literal["csv", "parquet", "anndata"], _choice("an output format", OUTPUT_FORMATS)] = "csv"
    # cytoprofile extensions: object-storage requests (null: the command line's, 5 s / 15 s / 2)
    connect_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0)

    def storage_overrides(self) -> dict[str, Any]:
        """The object-storage client settings these keys set (botocore's names), if any."""
        out: dict[str, Any] = {}
        if self.connect_timeout is not None:
            out["connect_timeout"] = self.connect_timeout
        if self.read_timeout is not None:
            out["read_timeout"] = self.read_timeout
        if self.retries is not None:
            out["retries"] = {"max_attempts": self.retries, "mode": "standard"}
        return out


class ExecutorConfig(Block):
    """``executor`` (cytoprofile extension): where and how widely plates are processed."""

    scheduler: str | None = None
    jobs: int = Field(default=1, ge=1)


#: Where the processing chain starts: the plates' annotated (default) or normalized profiles.
