"""The documentation site: it builds with ``--strict`` (internal links checked), and its snippets work.

Fenced blocks tagged exactly ``sh`` or ``python`` are runnable: they are executed in page
order (the nav's), in one temporary folder, so a page may use what earlier pages made.
Blocks with the ``.example`` class need a cloud, a cluster or the old tools and are not
executed; their ``cytoprofile`` commands are still checked against the real CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from cytoprofile.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(?P<info>[^`\n]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
RUNNABLE = {"sh", "python"}
CODE_LANGS = {"sh", "bash", "shell", "console", "python", "py"}


@dataclass(frozen=True)
class Snippet:
    page: str
    info: str
    body: str

    @property
    def runnable(self) -> bool:
        return self.info in RUNNABLE

    @property
    def lang(self) -> str:
        info = self.info.strip("{} ")
        first = info.split()[0] if info else ""
        return first.lstrip(".")


def _nav_pages(nav: list, out: list[str] | None = None) -> list[str]:
    out = [] if out is None else out
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            _nav_pages(value, out)
        else:
            out.append(value)
    return out


def _mkdocs_config() -> dict:
    # mkdocs.yml has no Python tags, so a plain YAML load suffices
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _snippets() -> list[Snippet]:
    found = []
    for page in _nav_pages(_mkdocs_config()["nav"]):
        path = DOCS / page
        if not path.exists():  # generated pages (the CLI reference) have no source
            continue
        for m in FENCE.finditer(path.read_text()):
            found.append(Snippet(page, m["info"].strip(), m["body"]))
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    """``cytoprofile`` and ``python`` on PATH, both this interpreter with this checkout's code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, args in (("cytoprofile", "-m cytoprofile"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {args} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


def _build(config: Path, site: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    """Every page renders, the generated CLI and API pages are there, no warning."""
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site", _env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert 'id="cytoprofile-collate"' in cli and "--image-feature-categories" in cli
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "cytoprofile.normalize.normalize" in api


def test_broken_internal_link_fails_the_build(tmp_path: Path) -> None:
    """The link check is real: a page linking to a missing page or anchor stops the build."""
    for target in ("no-such-page.md", "outputs.md#no-such-section"):
        docs = tmp_path / target.replace("#", "_") / "docs"
        shutil.copytree(DOCS, docs)
        (docs / "reference" / "api.md").write_text("# Python API\n")  # keep the build short
        (docs / "index.md").write_text((docs / "index.md").read_text() + f"\n[broken]({target})\n")
        config = _mkdocs_config()
        config["docs_dir"] = str(docs)
        config["hooks"] = [str(docs / "gen_cli.py")]
        config_path = docs.parent / "mkdocs.yml"
        config_path.write_text(yaml.safe_dump(config))
        result = _build(config_path, docs.parent / "site", _env(tmp_path))
        assert result.returncode != 0, f"{target}: build passed"
        assert target.split("#")[-1] in result.stderr


def test_cli_reference_lists_every_command_and_option() -> None:
    """The generated page has a section per command and a row per parameter."""
    sys.path.insert(0, str(DOCS))
    try:
        from gen_cli import render_cli
    finally:
        sys.path.remove(str(DOCS))
    page = render_cli()
    group: Any = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="cytoprofile")
    for name in group.list_commands(ctx):
        assert f"## `cytoprofile {name}`" in page
        section = page[page.index(f"## `cytoprofile {name}`"):].split("\n## ", 1)[0]
        for param in group.get_command(ctx, name).params:
            if param.name == "help":
                continue
            label = (f"`{param.opts[0]}`" if param.param_type_name == "option"
                     else f"`{(param.metavar or param.name).upper()}`")  # as the usage line and --help name it
            row = next((line for line in section.splitlines() if line.startswith(f"| {label}")), None)
            assert row is not None, (name, label)
            cells = re.split(r"(?<!\\)\|", row)[1:-1]
            assert len(cells) == 4, (name, row)  # a choice list's | is escaped, never a new column
            stated = re.search(r"\[default: ([^\]]*)\]", getattr(param, "help", None) or "")
            if stated:  # a default the help states is in the default column, as --help shows it
                assert cells[2].strip() == f"`{stated[1]}`" and "[default:" not in cells[3], (name, row)


def test_every_code_block_is_runnable_or_an_example() -> None:
    """A shell or Python block is either run (``sh``, ``python``) or explicitly an example."""
    snippets = _snippets()
    assert sum(s.runnable for s in snippets) >= 10
    for s in snippets:
        if s.lang in CODE_LANGS and not s.runnable:
            assert ".example" in s.info, f"{s.page}: ```{s.info} is neither runnable nor marked .example"


def _cytoprofile_calls(body: str) -> list[list[str]]:
    text = body.replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
            words = part.split()
            if words and words[0] == "cytoprofile":
                calls.append(words[1:])
    return calls


def test_example_commands_use_real_commands_and_options() -> None:
    """Blocks that are not run, and commands quoted in the text, name only real commands and options."""
    group: Any = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="cytoprofile")
    checked = 0
    inline = [(page, m[1]) for page in _nav_pages(_mkdocs_config()["nav"]) if (DOCS / page).exists()
              for m in re.finditer(r"(?<!`)`(cytoprofile [^`]+)`", FENCE.sub("", (DOCS / page).read_text()))]
    for page, body in [(s.page, s.body) for s in _snippets()] + inline:
        for words in _cytoprofile_calls(body):
            cmd = group.get_command(ctx, words[0])
            assert cmd is not None, f"{page}: no command {words[0]!r}"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for word in words[1:]:
                if word.startswith("-"):
                    assert word.split("=")[0] in known, f"{page}: cytoprofile {words[0]} has no {word}"
            checked += 1
    assert checked >= 25


def test_runnable_snippets_run(tmp_path: Path) -> None:
    """Every ``sh`` and ``python`` block, in page order, exits 0 in one fresh folder; the
    getting-started page's ``run`` closing lines (counts, products) are what that run prints."""
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    snippets = _snippets()
    page = [s for s in snippets if s.page == "getting-started.md"]
    tutorial_run = next(s for s in page if s.runnable and "cytoprofile run " in s.body)
    shown = next(s for s in page[page.index(tutorial_run):] if "step(s) run" in s.body).body.strip().splitlines()
    printed: list[str] = []
    for s in (s for s in snippets if s.runnable):
        body = s.body.replace(" --quiet", "") if s is tutorial_run else s.body  # its closing lines shown
        argv = ["bash", "-euo", "pipefail", "-c", body] if s.info == "sh" else [sys.executable, "-c", body]
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{s.page}:\n{s.body}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        if s is tutorial_run:
            printed = [line.rstrip() for line in (result.stdout + result.stderr).splitlines()]
    assert (work / "demo" / "quality_control" / "report" / "BATCH1.html").exists()
    timing = re.compile(r" in \d+\.\ds$")
    for line in shown:
        assert any(timing.sub("", p) == timing.sub("", line) for p in printed), (line, printed[-8:])


_SHARED_PLUGIN = '''
def pytest_collection_modifyitems(session, config, items):
    shared = [i for i in items if "shared_data" in getattr(i, "fixturenames", ())]
    print(f"\\nSHARED_DATA_TESTS {len(shared)}")
'''


def test_readme_commands_and_skip_count_are_true(tmp_path: Path) -> None:
    """The README's first block names the Makefile's targets, and its count of tests needing ../shared is right."""
    readme = (ROOT / "README.md").read_text()
    first = FENCE.search(readme)
    assert first is not None and first["info"] == "sh"
    makefile = (ROOT / "Makefile").read_text()
    for line in first["body"].splitlines():
        target = line.split("#")[0].split()[1]
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target}: no such target"
    stated = re.search(r"(\d+) tests read the real CellProfiler data in `\.\./shared/data`", readme)
    assert stated is not None, "the README no longer says how many tests need ../shared/data"
    (tmp_path / "count_shared.py").write_text(_SHARED_PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "count_shared", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    counted = re.search(r"SHARED_DATA_TESTS (\d+)", result.stdout)
    assert counted is not None, result.stdout[-2000:] + result.stderr[-2000:]
    assert int(stated[1]) == int(counted[1]), f"README says {stated[1]}, the suite has {counted[1]}"


