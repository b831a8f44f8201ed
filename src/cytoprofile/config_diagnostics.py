"""Where a config's problems are and what to call them: YAML documents with their lines,
keys written twice, names YAML misread as numbers, unknown keys with a did-you-mean, and
pydantic errors as one sentence with the key's path and line.

It knows YAML and pydantic, never the recipe's schema: ``config`` passes in the models, the
refused keys and the error kinds that carry their own message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = [
    "KeyPath",
    "Document",
    "UnknownKey",
    "format_path",
    "key_line",
    "duplicate_keys",
    "restore_raw_names",
    "model_in",
    "edit_distance",
    "unknown_keys",
    "report_unknown",
    "error_message",
    "read_documents",
    "validate_document",
]

_MIN_TYPO_LENGTH = 4
_MAX_TYPO_DISTANCE = 2


class _Loader(yaml.SafeLoader):
    """Safe YAML, but dates stay text (batch and plate names often look like dates)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

#: A key's place in a document: mapping keys and list positions.
KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``("feature_select", "operations", 2)`` -> ``feature_select.operations[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _locate(node: yaml.Node, path: KeyPath) -> tuple[yaml.Node, yaml.Node | None]:
    """Follow ``path`` down the YAML nodes.

    Returns the deepest node reached (for a mapping entry, its key node: that is the
    line to point at) and the value node at ``path``, or None when the path stops early.
    A key written twice resolves to its last occurrence, as YAML loading does.
    """
    here: yaml.Node = node
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            matches = [(k, v) for k, v in node.value if _key_text(k) == part]
            if not matches:
                return here, None
            here, node = matches[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return here, None
            here = node = node.value[part]
        else:
            return here, None
    return here, node


def key_line(node: yaml.Node, path: KeyPath) -> int:
    """The line (from 1) of the key at ``path``, or of the deepest part of it that exists."""
    return _locate(node, path)[0].start_mark.line + 1


def duplicate_keys(node: yaml.Node, path: KeyPath = ()) -> Iterator[tuple[KeyPath, int, int]]:
    """Keys written twice in one mapping: (path, first line, second line)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = _key_text(key)
            line = key.start_mark.line + 1
            if name in seen and key.tag != "tag:yaml.org,2002:merge":
                yield (*path, name), seen[name], line
            seen.setdefault(name, line)
            yield from duplicate_keys(value, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from duplicate_keys(item, (*path, i))


def restore_raw_names(data: dict[Any, Any], node: yaml.Node, paths: Sequence[KeyPath]) -> None:
    """Put back the written text of names that YAML read as numbers or booleans.

    Without this, ``name: 0123`` would name plate ``83`` and ``batch: 2021_04_26``
    batch ``20210426``.
    """
    for path in paths:
        holder: Any = data
        for part in path[:-1]:
            try:
                holder = holder[part]
            except (KeyError, IndexError, TypeError):
                holder = None
                break
        if not isinstance(holder, dict):
            continue
        if isinstance(holder.get(path[-1]), (bool, int, float)):
            scalar = _locate(node, path)[1]
            if isinstance(scalar, yaml.ScalarNode):
                holder[path[-1]] = scalar.value


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): edits, adjacent swaps count one."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def _misspelling(name: str, known: Sequence[str]) -> str | None:
    """The known key ``name`` is a misspelling of (distance <= 2, keys of 4+ characters)."""
    if len(name) < _MIN_TYPO_LENGTH:
        return None
    scored = sorted((edit_distance(name.lower(), k.lower()), k) for k in known if len(k) >= _MIN_TYPO_LENGTH)
    return scored[0][1] if scored and scored[0][0] <= _MAX_TYPO_DISTANCE else None


@dataclass(frozen=True)
class UnknownKey:
    """A key the schema does not declare: a likely misspelling, a refused key, or just unknown."""

    path: KeyPath
    close: str | None
    refused: str | None = None


def unknown_keys(
    model: type[BaseModel], data: Any, path: KeyPath = (), *, refused: Mapping[str, str]
) -> Iterator[UnknownKey]:
    """Keys of ``data`` that ``model`` does not declare; ``refused`` maps key names that are
    refused outright to the reason."""
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    for key, value in data.items():
        name = str(key)
        if name not in fields:
            yield UnknownKey((*path, name), _misspelling(name, list(fields)), refused.get(name))
            continue
        sub = model_in(fields[name].annotation)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            yield from unknown_keys(sub, value, (*path, name), refused=refused)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from unknown_keys(sub, item, (*path, name, i), refused=refused)


def report_unknown(
    found: UnknownKey, *, where: str, allow: bool, notes: list[str], problems: list[str]
) -> None:
    """A misspelled or refused key is a problem; other unknown keys (and, with ``allow``,
    misspellings) are notes. ``where`` is ``file:line: `` plus any batch label."""
    key = format_path(found.path)
    if found.refused is not None:
        problems.append(f"{where}{key}: {found.refused}")
    elif found.close is not None and not allow:
        problems.append(
            f"{where}{key}: unknown key; did you mean '{found.close}'? "
            "(fix the spelling, or pass --allow-unknown-keys to ignore it)"
        )
    else:
        hint = f"; did you mean '{found.close}'?" if found.close else ""
        notes.append(f"{where}{key}: unknown key, ignored{hint}")


def error_message(error: Mapping[str, Any], *, own_errors: frozenset[str]) -> str:
    """One pydantic error as a sentence; built-in messages also show the bad value, the
    error kinds in ``own_errors`` already say it."""
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    text = str(error["msg"])
    text = text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in own_errors:
        return text
    got = error.get("input")
    if isinstance(got, (dict, list)):
        return f"{text} (got a {'mapping' if isinstance(got, dict) else 'list'})"
    return f"{text} (got {got!r})"


@dataclass(frozen=True)
class Document:
    """One YAML document: its number, its node (for lines) and its data."""

    index: int
    node: yaml.Node
    data: Any

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1


def read_documents(text: str, source: str) -> list[Document]:
    """The non-empty YAML documents of ``text``; invalid YAML is a ``ConfigError`` with its line."""
    loader = _Loader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            docs.append(Document(len(docs) + 1, node, data))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        what = exc.problem or exc.context or "cannot parse"
        raise ConfigError(f"{source}: {where}: invalid YAML: {what}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return [d for d in docs if d.data is not None]


def validate_document(
    model: type[BaseModel], doc: Document, source: str, label: str, problems: list[str],
    *, own_errors: frozenset[str],
) -> Any:
    """``model`` from the document, or None with one line per problem added."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        for error in exc.errors():
            path: KeyPath = tuple(error["loc"])
            where = f"{format_path(path)}: " if path else ""
            line = key_line(doc.node, path)
            problems.append(f"{source}: {label}{where}{error_message(error, own_errors=own_errors)} (line {line})")
        return None
