"""Layout rules for the library code: short modules, short functions, private names stay home,
no repeated blocks; command bodies are parse → one library call → write.

Modules still being reorganised are listed in ``PENDING``; the test fails when a module outside
the list breaks a rule, and also when a listed module already meets every rule, so the list only
shrinks.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cytoprofile"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MIN_REPEATED_LINES = 6

# Modules (dotted, relative to the package) not yet meeting the rules.
PENDING: frozenset[str] = frozenset()

_TRIVIAL = re.compile(r"^[\s()\[\]{},:;.]*$")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, *, is_package: bool) -> str | None:
    """Dotted module (relative to the package) an import names, or None when outside it."""
    if node.level == 0:
        name = node.module or ""
        if name == "cytoprofile" or name.startswith("cytoprofile."):
            return name.removeprefix("cytoprofile").lstrip(".") or "__init__"
        return None
    base = module.split(".") if module != "__init__" else []
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    target = ".".join(base + ([node.module] if node.module else []))
    return target or "__init__"


def _long_functions(tree: ast.AST) -> list[str]:
    return [f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})"
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno is not None and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def _private_imports(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> list[str]:
    is_package = path.name == "__init__.py"
    imported_modules: dict[str, str] = {}  # local alias -> module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package=is_package)
            if target is None or target == module:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target != "__init__" else alias.name
                if sub in modules:
                    imported_modules[alias.asname or alias.name] = sub
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{alias.name} from {target}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cytoprofile.") and alias.asname:
                    imported_modules[alias.asname] = alias.name.removeprefix("cytoprofile.")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules and node.attr.startswith("_")
                and not node.attr.startswith("__") and imported_modules[node.value.id] != module):
            found.append(f"{node.attr} via {node.value.id}")
    return found


def _declaration_lines(tree: ast.AST) -> set[int]:
    """Lines of imports and of function signatures (the options an entry point takes): they
    declare, they hold no logic."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(range(node.lineno, node.body[0].lineno))
        elif isinstance(node, ast.Import | ast.ImportFrom) and node.end_lineno is not None:
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _normalized_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blanks, comments, imports, lone
    punctuation or signatures; white space folded."""
    text = path.read_text()
    skip = _declaration_lines(ast.parse(text))
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = " ".join(raw.split("#", 1)[0].split()) if "#" in raw and not ("'" in raw or '"' in raw) \
            else " ".join(raw.split())
        if not line or number in skip or line.startswith("#") or _TRIVIAL.match(line) \
                or line.startswith(("import ", "from ")):
            continue
        out.append((number, line))
    return out


def _repeated_blocks(modules: dict[str, Path]) -> dict[str, list[str]]:
    """For each module, the runs of code lines (MIN_REPEATED_LINES or more) that also stand
    elsewhere in the package, as "lines A-B ~ other places"."""
    where: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    numbers: dict[str, list[int]] = {}
    for name, path in modules.items():
        lines = _normalized_lines(path)
        numbers[name] = [n for n, _ in lines]
        for i in range(len(lines) - MIN_REPEATED_LINES + 1):
            window = tuple(text for _, text in lines[i:i + MIN_REPEATED_LINES])
            where[window].append((name, i))
    starts: dict[str, dict[int, set[str]]] = defaultdict(dict)
    for places in where.values():
        if len(places) > 1:
            for name, i in places:
                others = {f"{n}:{numbers[n][j]}" for n, j in places if (n, j) != (name, i)}
                starts[name].setdefault(i, set()).update(others)
    found: dict[str, list[str]] = defaultdict(list)
    for name, by_start in starts.items():
        run: list[int] = []
        for i in sorted(by_start) + [-2]:
            if run and i != run[-1] + 1:
                first, last = numbers[name][run[0]], numbers[name][run[-1] + MIN_REPEATED_LINES - 1]
                found[name].append(f"lines {first}-{last} ~ {min(by_start[run[0]])}")
                run = []
            run.append(i)
    return found


def _violations() -> dict[str, list[str]]:
    modules = _modules()
    repeated = _repeated_blocks(modules)
    out: dict[str, list[str]] = {}
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        problems = []
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            problems.append(f"{n_lines} lines")
        problems += [f"long function {f}" for f in _long_functions(tree)]
        problems += [f"private import {p}" for p in _private_imports(name, path, tree, modules)]
        problems += [f"repeated block {r}" for r in repeated.get(name, [])]
        out[name] = problems
    return out


@pytest.fixture(scope="module")
def violations() -> dict[str, list[str]]:
    return _violations()


def test_modules_outside_pending_meet_the_rules(violations: dict[str, list[str]]) -> None:
    broken = {m: p for m, p in violations.items() if p and m not in PENDING}
    assert not broken, "\n".join(f"{m}: {'; '.join(p)}" for m, p in broken.items())


def test_pending_lists_only_modules_that_still_break_a_rule(violations: dict[str, list[str]]) -> None:
    assert violations.keys() >= PENDING, f"not modules: {sorted(PENDING - violations.keys())}"
    clean = sorted(m for m in PENDING if not violations[m])
    assert not clean, f"meet every rule now, drop from PENDING: {clean}"


def test_checker_sees_each_kind_of_problem(tmp_path: Path) -> None:
    """The rules catch what they claim to: a long function, a private import, a repeated block."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    tree = ast.parse(f"def f():\n{body}\n")
    assert _long_functions(tree) and _long_functions(tree)[0].startswith("f (")
    mods = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    tree = ast.parse("from .a import _hidden\nfrom . import a\na._other()\n")
    assert _private_imports("b", mods["b"], tree, mods) == ["_hidden from a", "_other via a"]
    block = "\n".join(f"y{i} = compute({i})" for i in range(MIN_REPEATED_LINES))
    mods["a"].write_text(block + "\n")
    mods["b"].write_text("z = 1\n" + block + "\n")
    found = _repeated_blocks(mods)
    assert found["a"] and found["b"]


# ---------------------------------------------------------------- command bodies

CLI = PACKAGE / "cli"
# modules a command calls freely: reading and writing tables (io), errors, the step's provenance record,
# printing its closing lines (logs)
FREE_MODULES = frozenset({"io", "errors", "recipe.provenance", "logs"})
# library names a command may call besides its function, because they turn a flag into an argument
PARSERS: dict[str, str] = {
    "load_thresholds": "reads --thresholds (and --qc-sets) into the thresholds argument",
    "parse_chain": "parses --chain into the chain argument",
    "Workspace": "names the backend file --backend selects (layout)",
    "MapConfig": "checks the --map-* options as the recipe's quality_control.map block",
    "map_options": "turns that block into map_settings, as the recipe does",
    "check_choices": "refuses a flag's unknown choice, naming the flag",
}
# commands whose body still holds library logic, and what it is; the list only shrinks
PENDING_COMMANDS: dict[str, str] = {}


def _command_name(node: ast.FunctionDef) -> str | None:
    """The name ``@app.command(...)`` registers ``node`` under, or None when it is no command."""
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "command":
            if dec.args and isinstance(dec.args[0], ast.Constant):
                return str(dec.args[0].value)
            return node.name.replace("_", "-")
    return None


def _imported(nodes: list[ast.stmt], module: str) -> dict[str, tuple[str, str]]:
    """Local name -> (package module, name) for the ``from`` imports among ``nodes`` (walked)."""
    out = {}
    for stmt in nodes:
        for node in ast.walk(stmt):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, is_package=False)
                if target is None:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}" if target != "__init__" else alias.name
                    out[alias.asname or alias.name] = (sub, "") if sub in _modules() else (target, alias.name)
    return out


def _base_name(node: ast.expr) -> tuple[str, str] | None:
    """(root name, attribute) of a call's function: ``f`` -> (f, ""), ``io.f`` -> (io, f), ``C(x).m`` -> (C, "")."""
    attr = node.attr if isinstance(node, ast.Attribute) else ""
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return (node.id, attr) if isinstance(node, ast.Name) else None


def _library_calls(body: ast.AST, names: dict[str, tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """(module, name, inside a loop) of each call into the library outside cli/ and FREE_MODULES."""
    looped = {id(n) for loop in ast.walk(body) if isinstance(loop, ast.For | ast.While | ast.comprehension)
              for n in ast.walk(loop)}
    out = []
    for node in ast.walk(body):
        base = _base_name(node.func) if isinstance(node, ast.Call) else None
        if base is None or base[0] not in names:
            continue
        module, name = names[base[0]]
        name = name or base[1]
        if module.startswith("cli") or module in FREE_MODULES:
            continue
        out.append((module, name, id(node) in looped))
    return out


def _command_calls() -> dict[str, tuple[set[tuple[str, str]], list[str]]]:
    """For each command: the library functions its body (and the cli helpers it calls) calls, and
    the calls made inside a loop."""
    out = {}
    for path in sorted(CLI.glob("*.py")):
        module = f"cli.{path.stem}"
        tree = ast.parse(path.read_text())
        helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and _command_name(n) is None}
        top = _imported(list(tree.body), module)
        for node in tree.body:
            name = _command_name(node) if isinstance(node, ast.FunctionDef) else None
            if name is None or not isinstance(node, ast.FunctionDef):
                continue
            used = [node] + [helpers[c.func.id] for c in ast.walk(node) if isinstance(c, ast.Call)
                             and isinstance(c.func, ast.Name) and c.func.id in helpers]
            calls = [call for fn in used for call in _library_calls(fn, top | _imported(fn.body, module))]
            out[name] = ({(m, n) for m, n, _ in calls if n not in PARSERS},
                         [f"{m}.{n}" for m, n, looped in calls if looped])
    return out


def _body_problems(command: str, calls: set[tuple[str, str]], looped: list[str]) -> list[str]:
    from .test_cli_signatures import FUNCTIONS

    module, name = FUNCTIONS[command]
    expected = set() if module == "cytoprofile.io" else {(module.removeprefix("cytoprofile."), name)}
    problems = []
    if calls != expected:
        problems.append(f"calls {sorted(f'{m}.{n}' for m, n in calls)}, not only {name}")
    if looped:
        problems.append(f"calls {', '.join(sorted(set(looped)))} in a loop")
    return problems


def test_command_bodies_parse_call_once_and_write() -> None:
    """Each command's body (with the cli helpers it calls) calls one library function, its own,
    besides io, errors, provenance and the flag parsers; logic beyond that lives in the library."""
    found = {c: _body_problems(c, calls, looped) for c, (calls, looped) in _command_calls().items()}
    broken = {c: p for c, p in found.items() if p and c not in PENDING_COMMANDS}
    assert not broken, "\n".join(f"{c}: {'; '.join(p)}" for c, p in broken.items())
    assert PENDING_COMMANDS.keys() <= found.keys()
    clean = sorted(c for c in PENDING_COMMANDS if not found[c])
    assert not clean, f"parse → call → write now, drop from PENDING_COMMANDS: {clean}"


def test_body_check_sees_extra_calls_and_loops(tmp_path: Path) -> None:
    """The command-body rule catches a second library call, a call in a loop and a wrong function."""
    tree = ast.parse(
        "from ..annotate import annotate, annotate_files\nfrom .. import io\n"
        "def cmd(paths):\n    for p in paths:\n        t = io.read_table(p)\n        annotate(t)\n"
        "    return annotate_files(paths[0])\n")
    names = _imported(list(tree.body), "cli.steps")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    calls = _library_calls(fn, names)
    assert sorted(calls) == [("annotate", "annotate", True), ("annotate", "annotate_files", False)]
    problems = _body_problems("annotate", {(m, n) for m, n, _ in calls}, [f"{m}.{n}" for m, n, lp in calls if lp])
    assert len(problems) == 2 and "in a loop" in problems[1]
    assert _body_problems("annotate", {("annotate", "annotate_files")}, []) == []
    assert _body_problems("normalize", {("annotate", "annotate_files")}, [])


# ---------------------------------------------------------------- one home per name

# modules whose job is to offer another module's names under a stable import, and why
FACADES: dict[str, str] = {
    "io": "the storage layer's public face: remote's listing, upload and options with the readers and writers",
    "config": "the recipe config's public face: the blocks of config_blocks with loading and diagnostics",
    "pipeline": "the recipe's public face: run and its layout helpers from recipe/ and layout",
}
# modules that still export a name another module defines; the list only shrinks
PENDING_REEXPORTS: frozenset[str] = frozenset()


def _reexports(module: str, tree: ast.Module) -> list[str]:
    """Names in ``__all__`` that ``module`` imports from elsewhere in the package instead of defining."""
    exported: list[str] = []
    imported: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exported = [e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package=False)
            if target is not None:
                imported |= {alias.asname or alias.name: target for alias in node.names}
    return [f"{name} (from {imported[name]})" for name in exported if name in imported]


def test_each_exported_name_has_one_home() -> None:
    """A module's ``__all__`` names what it defines; importers take a name from where it is defined."""
    found = {}
    for name, path in _modules().items():
        if path.name == "__init__.py" or name in FACADES:
            continue
        found[name] = _reexports(name, ast.parse(path.read_text()))
    broken = {m: r for m, r in found.items() if r and m not in PENDING_REEXPORTS}
    assert not broken, "\n".join(f"{m} re-exports {', '.join(r)}" for m, r in broken.items())
    clean = sorted(m for m in PENDING_REEXPORTS if not found.get(m))
    assert not clean, f"export only their own names now, drop from PENDING_REEXPORTS: {clean}"
    sample = "from .vocabulary import infer_features\n__all__ = ['infer_features', 'f']\ndef f(): pass\n"
    assert _reexports("feature_select", ast.parse(sample)) == ["infer_features (from vocabulary)"]


# ---------------------------------------------------------------- errors

# built-in exceptions the library never raises: a user's mistake is an ``InputError``/``ConfigError``
# (a ``CytoprofileError`` and a ``ValueError``), a failed check of our own an ``AccountingError``
BANNED_RAISES = frozenset({"ValueError", "RuntimeError", "KeyError", "IndexError", "LookupError", "Exception",
                           "OSError", "IOError", "FileNotFoundError"})


def _banned_raises(path: Path) -> list[str]:
    """``raise X(...)`` / ``raise X`` of a banned built-in in one file, as ``line: X``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BANNED_RAISES:
                out.append((node.lineno, target.id))
    return [f"{line}: {name}" for line, name in sorted(out)]


def test_library_raises_only_its_own_errors() -> None:
    """Every error the library raises on purpose is of the ``CytoprofileError`` family, so the CLI turns
    it into one line and exit 1 and scripts catching ``ValueError`` still catch input errors."""
    found = {name: hits for name, path in _modules().items() if (hits := _banned_raises(path))}
    assert not found, found


def test_banned_raise_check_sees_one(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f(x):\n    if x:\n        raise ValueError('x')\n    raise RuntimeError\n")
    assert _banned_raises(module) == ["3: ValueError", "4: RuntimeError"]


# ---------------------------------------------------------------- output names

# what follows PLATE in a recipe output's name; only layout.py spells these out
_STEM = re.compile(r"(?<![A-Za-z0-9])_(augmented|normalized)")


def _stem_literals(path: Path) -> list[str]:
    """Code strings (not docstrings) that spell an output stem such as ``_normalized``, as ``line: text``."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [f"{n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and _STEM.search(n.value)]


def test_only_layout_spells_output_stems(tmp_path: Path) -> None:
    """``_augmented``, ``_normalized[_negcon]``, ``_normalized_feature_select…``: built by Layout's stem methods only."""
    found = {name: hits for name, path in _modules().items() if name != "layout" and (hits := _stem_literals(path))}
    assert not found, found
    module = tmp_path / "m.py"
    module.write_text('"""Reads ``_augmented``."""\nx = f"{p}_normalized_feature_select_{lvl}"\ny = "PLATE_normalized"\n')
    assert _stem_literals(module) == ["2: '_normalized_feature_select_'"]


# ---------------------------------------------------------------- keyword-only options

# a public function's defaulted parameters that may be given by position: data it works on, not options
DATA_ARGUMENTS: dict[str, str] = {
    "cell_qc.flag_single_cells": "output: the file written",
    "cell_qc.load_thresholds": "path: the thresholds file",
    "config_diagnostics.duplicate_keys": "path: the config file",
    "config_diagnostics.unknown_keys": "path: the config file",
    "entry.main": "argv: the command line",
    "ingest.image.parse_image": "raw: the image table as read",
    "ingest.text.read_header": "lines: the file's first lines",
    "io.atomic_open": "mode: as open()'s",
    "io.csv2gz": "dest: the file written",
    "recipe.features.compartment_prefixes": "report: collate's report of the plate",
    "vocabulary.feature_prefixes": "compartments: the names turned into prefixes",
}
# functions whose options may still be given by position; the list only shrinks
PENDING_POSITIONAL: frozenset[str] = frozenset()


def _positional_options() -> dict[str, list[str]]:
    """For each public library function (in a module's ``__all__``, commands aside): its defaulted
    parameters that are not keyword-only."""
    import importlib
    import inspect

    out = {}
    for name in _modules():
        if name.startswith("cli") or name in ("__init__", "__main__"):
            continue
        module = importlib.import_module(f"cytoprofile.{name}")
        for public in getattr(module, "__all__", []):
            fn = getattr(module, public, None)
            if not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            options = [p.name for p in inspect.signature(fn).parameters.values()
                       if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty]
            if options:
                out[f"{name}.{public}"] = options
    return out


def test_public_options_are_keyword_only() -> None:
    """A public function's options (its defaulted parameters) are keyword-only; data arguments may stay positional."""
    found = _positional_options()
    broken = {f: o for f, o in found.items() if f not in DATA_ARGUMENTS and f not in PENDING_POSITIONAL}
    assert not broken, "\n".join(f"{f}: {', '.join(o)}" for f, o in broken.items())
    stale = sorted((DATA_ARGUMENTS.keys() | PENDING_POSITIONAL) - found.keys())
    assert not stale, f"options keyword-only now, drop from the lists: {stale}"


# ---------------------------------------------------------------- config defaults


def _default_differences() -> dict[tuple[str, str], object]:
    """(step, keyword) -> value where a default config block, through its adapter, passes other than
    the step function's default."""
    import inspect

    from cytoprofile import config_blocks as cb
    from cytoprofile import recipe_options as ro
    from cytoprofile.aggregate import aggregate
    from cytoprofile.feature_select import feature_select
    from cytoprofile.normalize import normalize

    select = cb.FeatureSelectConfig()
    passed = {
        ("aggregate", aggregate): ro.aggregate_options(cb.AggregateConfig(), ["cells", "cytoplasm", "nuclei"]),
        ("normalize", normalize): ro.normalize_options(cb.NormalizeConfig()),
        ("feature_select", feature_select): ro.feature_select_options(select) | {"operations": list(select.operations)},
    }
    out: dict[tuple[str, str], object] = {}
    for (step, fn), options in passed.items():
        params = inspect.signature(fn).parameters
        for key, value in options.items():
            assert key in params, f"{step}: the adapter passes {key}, no keyword of {fn.__name__}"
            default = params[key].default
            same = list(value) == list(default) if isinstance(value, list | tuple) and isinstance(default, list | tuple) \
                else value == default
            if not same:
                out[(step, key)] = value
    return out


def test_config_defaults_differ_from_the_functions_only_where_the_table_says() -> None:
    """The recipe template's defaults that differ from a step function's are the ones
    ``recipe_options.TEMPLATE_DEFAULTS`` names, with those values; every other is the function's."""
    from cytoprofile.recipe_options import TEMPLATE_DEFAULTS

    assert _default_differences() == TEMPLATE_DEFAULTS
