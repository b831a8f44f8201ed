"""The recipe config: one YAML file that says which steps run, how, and on which plates.

cytoprofile reads the profiling recipe's multi-document config unchanged, so existing
projects keep working: one settings document (the one with ``pipeline:``) and one
document per batch. A key left out behaves as it did in the recipe when it was left
out, so configs older than a key still load; a whole step block left out skips that
step. Mistakes fail early with the key's path, the file and the line; unknown keys
only warn. Keys the recipe does not know are cytoprofile extensions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .config_blocks import (
    REFUSED_KEYS,
    AggregateConfig,
    AnnotateConfig,
    Block,
    ExecutorConfig,
    ExternalMetadataConfig,
    FeatureSelectConfig,
    FeatureSelectParameters,
    HeatmapConfig,
    MapConfig,
    Name,
    NormalizeConfig,
    NormalizeNegconConfig,
    OptionsConfig,
    QualityControlConfig,
    SummaryConfig,
    check_output_dir,
    function_default,
    split_compartments,
)
from .config_diagnostics import (
    Document,
    KeyPath,
    duplicate_keys,
    error_message,
    format_path,
    key_line,
    read_documents,
    report_unknown,
    restore_raw_names,
    unknown_keys,
    validate_document,
)
from .errors import ConfigError
from .vocabulary import FEATURE_SELECT_LEVELS as LEVELS  # the schema checks names against these
from .vocabulary import (
    FEATURE_SELECT_OPERATIONS,
    NORMALIZE_METHODS,
    PROCESSING_INPUTS,
)

__all__ = [
    "INIT_DIRS",
    "FEATURE_SELECT_OPERATIONS",
    "NORMALIZE_METHODS",
    "LEVELS",
    "PlateEntry",
    "ProcessingOptions",
    "BatchConfig",
    "AggregateConfig",
    "ExternalMetadataConfig",
    "AnnotateConfig",
    "NormalizeConfig",
    "NormalizeNegconConfig",
    "FeatureSelectParameters",
    "FeatureSelectConfig",
    "SummaryConfig",
    "HeatmapConfig",
    "MapConfig",
    "PROCESSING_INPUTS",
    "QualityControlConfig",
    "OptionsConfig",
    "ExecutorConfig",
    "RecipeConfig",
    "Recipe",
    "load_config",
    "parse_config",
    "config_template",
    "config_to_dict",
    "init_project",
]

#: Folders of a profiling project, as the recipe's set-up script makes them.
INIT_DIRS: tuple[str, ...] = (
    "audit",
    "batchfiles",
    "config_files",
    "gct",
    "load_data_csv",
    "log",
    "metadata",
    "pipelines",
    "profiles",
    "quality_control",
    "single_cell",
)


_TEMPLATE = "config_template.yml"
log = logging.getLogger("cytoprofile.config")




def _chain(name: str) -> Any:
    from .processing import run_chain

    return function_default(run_chain, name)


class ProcessingOptions(BaseModel):
    """Types of ``processing_options`` (``processing.run_chain``'s options, plus ``input``); each default is
    run_chain's."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["augmented", "normalized", "normalized_negcon"] = "augmented"
    plate_column: str = _chain("plate_column")
    samples: str = Field(default=_chain("samples"), min_length=1)
    plates_without_controls: Literal["error", "drop"] = _chain("plates_without_controls")
    well_column: str = _chain("well_column")
    cell_count_column: str = _chain("cell_count_column")
    min_unique: int = Field(default=_chain("min_unique"), ge=0)
    outlier_bound: float = Field(default=_chain("outlier_bound"), gt=0)
    variance_fraction: float = Field(default=_chain("variance_fraction"), gt=0, le=1)
    ties: Literal["random", "average"] = _chain("ties")
    sphering_epsilon: float | list[float] = Field(default_factory=lambda: list(_chain("sphering_epsilon")))
    pert_column: str = _chain("pert_column")
    neg_sameby: list[str] = Field(default_factory=lambda: list(_chain("neg_sameby")))
    batch_key: str = _chain("batch_key")
    seed: int = _chain("seed")
    featselect: dict[str, Any] = Field(default_factory=dict)


def _check_processing(value: Any) -> Any:
    """The chain (``profiles_var_mad_int`` or a list of step names), each step known."""
    from .processing import parse_chain

    if value is None:
        return value
    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise PydanticCustomError("processing", "processing must be a chain string or a list of step names")
    try:
        steps = parse_chain(value)
    except ConfigError as exc:
        raise PydanticCustomError("processing", str(exc).removeprefix("processing: ")) from exc
    if not steps:
        raise PydanticCustomError("processing", "processing names no step")
    return value


def _skipped(block: type[Block]) -> Any:
    """Default for a step block that is absent: the recipe then skips the step."""
    return lambda: block.model_validate({"perform": False})


class RecipeConfig(Block):
    """The settings document (the one with ``pipeline:``)."""

    pipeline: Name
    output_dir: Annotated[str, BeforeValidator(check_output_dir)] = "profiles"
    platemap_well_column: str = "Metadata_well_position"
    compartments: Annotated[list[str], BeforeValidator(split_compartments)] = Field(
        default_factory=lambda: ["cells", "cytoplasm", "nuclei"], min_length=1
    )
    aggregate: AggregateConfig = Field(default_factory=_skipped(AggregateConfig))
    annotate: AnnotateConfig = Field(default_factory=_skipped(AnnotateConfig))
    normalize: NormalizeConfig = Field(default_factory=_skipped(NormalizeConfig))
    normalize_negcon: NormalizeNegconConfig = Field(default_factory=_skipped(NormalizeNegconConfig))
    feature_select: FeatureSelectConfig = Field(default_factory=_skipped(FeatureSelectConfig))
    feature_select_negcon: FeatureSelectConfig = Field(
        default_factory=_skipped(FeatureSelectConfig)
    )
    quality_control: QualityControlConfig = Field(default_factory=_skipped(QualityControlConfig))
    options: OptionsConfig = Field(default_factory=OptionsConfig)
    # cytoprofile extensions
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    workspace: str | None = None
    processing: Annotated[str | list[str] | None, BeforeValidator(_check_processing)] = None
    processing_options: dict[str, Any] | None = None

    @field_validator("processing_options")
    @classmethod
    def _check_processing_options(cls, value: Any, info: ValidationInfo) -> Any:
        """Option names and types (``ProcessingOptions``), each used by a step of the chain."""
        from .processing import check_chain_options

        if value is None:
            return value
        chain = info.data.get("processing")
        if chain is None:
            raise PydanticCustomError("processing", "processing_options without processing has no effect")
        try:
            options = ProcessingOptions.model_validate(value).model_dump(exclude_unset=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PydanticCustomError("processing", "{where}: {msg}", {"where": where, "msg": error_message(first, own_errors=_OWN_ERRORS)}) from exc
        try:
            check_chain_options(chain, {k: v for k, v in options.items() if k != "input"})
        except ConfigError as exc:
            raise PydanticCustomError("processing", str(exc)) from exc
        return options


# --- batches and the whole file ---


class PlateEntry(Block):
    """One plate of a batch; ``process: false`` leaves it out."""

    name: Name
    process: bool = True


class BatchConfig(Block):
    """A batch document: its plates and whether to process it."""

    batch: Name
    plates: list[PlateEntry]
    process: bool = True

    @model_validator(mode="after")
    def _unique(self) -> BatchConfig:
        seen: set[str] = set()
        for plate in self.plates:
            if plate.name in seen:
                raise PydanticCustomError(
                    "duplicate", "plate {name} is listed twice", {"name": repr(plate.name)}
                )
            seen.add(plate.name)
        return self


class Recipe(Block):
    """A whole config file: the settings, the batches, and where it was read from."""

    settings: RecipeConfig
    batches: list[BatchConfig]
    path: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> Recipe:
        names = [b.batch for b in self.batches]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PydanticCustomError(
                "duplicate", "batch {names} has two documents", {"names": ", ".join(twice)}
            )
        return self

    def selected_plates(self) -> dict[str, list[str]]:
        """Plates to process, by batch, in file order (``process: false`` left out)."""
        return {b.batch: [p.name for p in b.plates if p.process] for b in self.batches if b.process}

    def settings_dict(self) -> dict[str, Any]:
        """The settings, defaults filled in, as plain JSON-ready data."""
        return self.settings.model_dump(mode="json")

    def to_dict(self) -> dict[str, Any]:
        """Everything (path, settings, batches) as plain JSON-ready data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as a multi-document YAML that ``load_config`` reads back."""
        docs = [self.settings_dict(), *(b.model_dump(mode="json") for b in self.batches)]
        return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


def config_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain data for provenance sidecars: ``Recipe.to_dict()``."""
    return recipe.to_dict()


def _upgrade(data: dict[str, Any], node: yaml.Node, source: str, problems: list[str]) -> None:
    """Rewrite the recipe's older settings forms (2021) into today's, in place.

    ``normalize.negcon: true`` / ``feature_select.negcon: true`` make the negcon block
    from the main one (fitted on negative controls); ``aggregate.features: infer`` is
    what cytoprofile always does; ``quality_control.operations`` picks summary/heatmap.
    """
    for main, negcon in (("normalize", "normalize_negcon"), ("feature_select", "feature_select_negcon")):
        block = data.get(main)
        if isinstance(block, dict) and "negcon" in block:
            flag = block.pop("negcon")
            if not isinstance(flag, bool):
                problems.append(
                    f"{source}:{key_line(node, (main, 'negcon'))}: {main}.negcon: {flag!r}: write true "
                    f"(also make the {negcon} outputs) or false"
                )
            elif flag and negcon not in data:
                data[negcon] = {k: v for k, v in block.items() if k not in ("samples", "sample_filter")}
    aggregate = data.get("aggregate")
    if isinstance(aggregate, dict) and "features" in aggregate and aggregate.pop("features") != "infer":
        problems.append(
            f"{source}:{key_line(node, ('aggregate', 'features'))}: aggregate.features: cytoprofile "
            "aggregates every feature of the compartments; write infer or remove the key"
        )
    qc = data.get("quality_control")
    if isinstance(qc, dict) and "operations" in qc:
        ops = qc.pop("operations")
        ops = [ops] if isinstance(ops, str) else ops
        if not isinstance(ops, list) or not set(ops) <= {"summary", "heatmap"}:
            problems.append(
                f"{source}:{key_line(node, ('quality_control', 'operations'))}: quality_control.operations: "
                f"{ops!r}: list summary and/or heatmap"
            )
            return
        for name in ("summary", "heatmap"):
            sub = qc.get(name)
            if isinstance(sub, dict) and "perform" in sub and sub["perform"] != (name in ops):
                problems.append(
                    f"{source}:{key_line(node, ('quality_control', name, 'perform'))}: quality_control.{name}.perform: "
                    f"{sub['perform']!r} contradicts quality_control.operations {ops!r}; keep one of the two"
                )
            qc[name] = (sub if isinstance(sub, dict) else {}) | {"perform": name in ops}


_OWN_ERRORS = frozenset(
    {
        "processing",
        "choice",
        "features",
        "fields",
        "name",
        "float_format",
        "output_dir",
        "object_feature",
        "unreleased",
        "sample_filter",
        "required_if",
        "duplicate",
    }
)


_FIX = (
    "a config needs one settings document (with 'pipeline:') and one document per "
    "batch ('batch:', 'plates:'), separated by '---'; start from the config template"
)


def _sort_documents(docs: list[Document], source: str) -> tuple[Document, list[Document]]:
    """The settings document and the batch documents; a ``ConfigError`` naming every
    document that is neither, or a missing or repeated kind."""
    if not docs:
        raise ConfigError(f"{source}: the file is empty; {_FIX}")
    problems: list[str] = []
    settings_docs: list[Document] = []
    batch_docs: list[Document] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            problems.append(
                f"{source}: document {doc.index} (line {doc.line}) is a "
                f"{type(doc.data).__name__}, not a mapping of keys; {_FIX}"
            )
        elif "pipeline" in doc.data:
            settings_docs.append(doc)
        elif "batch" in doc.data:
            batch_docs.append(doc)
        else:
            problems.append(
                f"{source}: document {doc.index} (line {doc.line}) has neither 'pipeline:' "
                f"(settings) nor 'batch:' (a batch); {_FIX}"
            )
    if not settings_docs and not problems:
        problems.append(f"{source}: no settings document (one with 'pipeline:'); {_FIX}")
    if len(settings_docs) > 1:
        lines = ", ".join(str(d.line) for d in settings_docs)
        problems.append(
            f"{source}: {len(settings_docs)} settings documents (lines {lines}); keep one"
        )
    if not batch_docs and not problems:
        problems.append(f"{source}: no batch document (one with 'batch:' and 'plates:'); {_FIX}")
    if problems:
        raise ConfigError("\n".join(problems))
    return settings_docs[0], batch_docs


def _parse_settings(
    doc: Document, source: str, allow: bool, notes: list[str], problems: list[str]
) -> RecipeConfig | None:
    restore_raw_names(doc.data, doc.node, [("pipeline",)])
    _upgrade(doc.data, doc.node, source, problems)
    for found in unknown_keys(RecipeConfig, doc.data, refused=REFUSED_KEYS):
        report_unknown(found, where=f"{source}:{key_line(doc.node, found.path)}: ",
                       allow=allow, notes=notes, problems=problems)
    settings: RecipeConfig | None = validate_document(
        RecipeConfig, doc, source, "", problems, own_errors=_OWN_ERRORS)
    return settings


def _parse_batches(
    batch_docs: list[Document], source: str, allow: bool, notes: list[str], problems: list[str]
) -> list[BatchConfig]:
    batches: list[BatchConfig] = []
    seen: dict[str, int] = {}
    for doc in batch_docs:
        plates = doc.data.get("plates")
        names: list[KeyPath] = [("batch",)]
        if isinstance(plates, list):
            names += [("plates", i, "name") for i in range(len(plates))]
        restore_raw_names(doc.data, doc.node, names)
        label = f"batch {str(doc.data.get('batch'))!r}: "
        for found in unknown_keys(BatchConfig, doc.data, refused=REFUSED_KEYS):
            report_unknown(found, where=f"{source}:{key_line(doc.node, found.path)}: {label}",
                           allow=allow, notes=notes, problems=problems)
        batch = validate_document(BatchConfig, doc, source, label, problems, own_errors=_OWN_ERRORS)
        if batch is None:
            continue
        if batch.batch in seen:
            problems.append(
                f"{source}: batch {batch.batch!r}: two documents for this batch "
                f"(lines {seen[batch.batch]} and {doc.line}); merge them"
            )
        seen.setdefault(batch.batch, doc.line)
        batches.append(batch)
    return batches


def _parse(text: str, source: str, allow: bool = False) -> tuple[Recipe | None, list[str], list[str]]:
    """Parse and validate: (the recipe or None, unknown-key notes, problems)."""
    docs = read_documents(text, source)
    settings_doc, batch_docs = _sort_documents(docs, source)
    problems: list[str] = []
    notes: list[str] = []
    for doc in docs:
        for path, first, again in duplicate_keys(doc.node):
            problems.append(
                f"{source}: {format_path(path)}: key written twice (lines {first} and "
                f"{again}); keep one"
            )
    settings = _parse_settings(settings_doc, source, allow, notes, problems)
    batches = _parse_batches(batch_docs, source, allow, notes, problems)
    if problems or settings is None:
        return None, notes, problems
    return Recipe(settings=settings, batches=batches, path=source), notes, []


def _finish(parsed: tuple[Recipe | None, list[str], list[str]]) -> Recipe:
    """Warn about unknown keys (even when invalid: a typo explains a missing key), then
    raise for the problems or return the recipe."""
    recipe, notes, problems = parsed
    for note in notes:
        log.warning("%s", note)
    if problems or recipe is None:
        raise ConfigError("\n".join(problems))
    return recipe


def parse_config(text: str, *, source: str = "<config>", allow_unknown_keys: bool = False) -> Recipe:
    """Validate config text; ``source`` names it in messages.

    Raises ``ConfigError`` (one line per problem), also for a key within two edits of
    a key of its block (a misspelling) unless ``allow_unknown_keys``; other unknown
    keys are logged, one line each, on the ``cytoprofile.config`` logger.
    """
    return _finish(_parse(text, source, allow_unknown_keys))


def load_config(path: str | os.PathLike[str], *, allow_unknown_keys: bool = False) -> Recipe:
    """Read and validate a config file (a local path or an fsspec URL); see ``parse_config``."""
    source = os.fspath(path)
    try:
        if "://" in source and not source.startswith("file://"):
            import fsspec

            with fsspec.open(source, "rb") as handle:
                raw: bytes = handle.read()
        else:
            raw = Path(source.removeprefix("file://")).read_bytes()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: no such config file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{source}: is a folder, not a config file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file ({exc})") from exc
    return _finish(_parse(text, source, allow_unknown_keys))


def config_template(
    *,
    batch: str | None = None,
    plates: Sequence[str] | None = None,
    workspace: str | None = None,
) -> str:
    """A commented config (settings and one batch) to start a project from.

    ``batch``/``plates`` replace the example batch document; ``workspace`` fills
    the ``workspace:`` key. Everything else keeps its comment.
    """
    text = resources.files("cytoprofile").joinpath("data", _TEMPLATE).read_text("utf-8")
    if workspace is not None:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("workspace:"):
                comment = line[line.index("#"):] if "#" in line else ""
                lines[i] = f"{'workspace: ' + json.dumps(workspace):<43}{comment}"
        text = "\n".join(lines) + "\n"
    if batch is not None or plates is not None:
        head, _, example = text.rpartition("\n---\n")
        old = parse_config(text).batches[0]
        name = batch or old.batch
        names = list(plates) if plates else [p.name for p in old.plates]
        body = [f"{'batch: ' + json.dumps(name):<43}# batch name: the folder under backend/, metadata/platemaps/, profiles/",
                "plates:                                    # plates of this batch"]
        for plate in names:
            body.append(f"  - name: {json.dumps(plate)}")
            body.append("    process: true")
        body.append("process: true                              # process this batch")
        text = head + "\n---\n" + "\n".join(body) + "\n"
    return text


def init_project(directory: str | os.PathLike[str]) -> list[str]:
    """Create the project folders (``INIT_DIRS``) under ``directory``; return the new ones."""
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
        created: list[str] = []
        for name in INIT_DIRS:
            folder = root / name
            if not folder.is_dir():
                folder.mkdir()
                created.append(name)
    except FileExistsError as exc:
        raise ConfigError(f"{exc.filename}: exists and is not a folder") from exc
    except OSError as exc:
        raise ConfigError(f"{root}: cannot create the project folders ({exc})") from exc
    return created
