"""MkDocs hook: render the CLI reference page from the ``cytoprofile`` commands themselves.

Every command's usage, help, arguments and options (with types and defaults) come from
the Typer app, so the reference cannot drift from the code. ``python docs/gen_cli.py``
prints the page.
"""

from __future__ import annotations

import re
from typing import Any

import typer

__all__ = ["render_cli", "on_files"]

PAGE = "reference/cli.md"


def _is_option(param: Any) -> bool:
    # Typer may bundle its own copy of Click, so parameters are told apart by kind, not class
    return getattr(param, "param_type_name", "") == "option"


def _escape(text: str) -> str:
    # help text is plain text: a <name> must not become an HTML tag
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ").strip()


def _default(param: Any) -> str:
    if _is_option(param) and param.is_flag:
        if param.secondary_opts:
            return f"`{param.opts[0] if param.default else param.secondary_opts[0]}`"
        return "on" if param.default else "off"
    value = param.default
    if value is None or value == () or value == []:
        return "—" if not param.required else "required"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"`{value}`"


def _names(param: Any) -> str:
    if not _is_option(param):  # the name the usage line shows (a metavar the command sets wins)
        return f"`{(param.metavar or param.name).upper()}`" + (" …" if param.nargs == -1 else "")
    opts = [*param.opts, *param.secondary_opts]
    return " / ".join(f"`{o}`" for o in opts)


_READABLE = {"str": "text", "int": "integer", "float": "number", "path": "path", "bool": "yes/no"}


def _kind(param: Any, ctx: Any) -> str:
    """The value a user types, in words (a metavar the command sets wins over the Python type)."""
    if _is_option(param) and param.is_flag:
        return "flag"
    metavar = param.metavar if _is_option(param) else None  # an argument's metavar is its name
    name = str(metavar or param.display_type(ctx)).strip("<>")
    inner = name[5:-1] if name.startswith("list[") and name.endswith("]") else name
    word = _READABLE.get(inner, inner)
    if param.multiple or inner != name:
        return f"{word}, repeatable"
    return word


_DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]*)\]\s*$")


def _split_default(help_text: str, param: Any) -> tuple[str, str]:
    """The help text and the default column: a default the help states (``[default: X]``) or the command
    shows in words (``show_default="..."``) goes to the default column, as ``--help`` shows it."""
    stated = _DEFAULT_IN_HELP.search(help_text)
    if stated:
        return help_text[: stated.start()], f"`{stated[1]}`"
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return help_text, _escape(shown)
    return help_text, _default(param)


def _command_section(name: str, cmd: Any, parent: Any) -> list[str]:
    ctx = cmd.context_class(cmd, info_name=name, parent=parent)
    lines = [f"## `cytoprofile {name}`", "", "```text", cmd.get_usage(ctx).strip(), "```", ""]
    if cmd.help:
        lines += [cmd.help.strip(), ""]
    params = [p for p in cmd.params if p.name != "help"]
    if params:
        lines += ["| argument / option | type | default | help |", "|---|---|---|---|"]
        for p in params:
            help_text, default = _split_default(getattr(p, "help", None) or "", p)
            lines.append(f"| {_names(p)} | {_escape(_kind(p, ctx))} | {default} | {_escape(help_text)} |")
        lines.append("")
    return lines


def render_cli() -> str:
    """The CLI reference as Markdown: one section per command, in alphabetical order."""
    from cytoprofile.cli import app

    group: Any = typer.main.get_command(app)
    root = group.context_class(group, info_name="cytoprofile")
    lines = [
        "# CLI reference",
        "",
        "Generated from the commands at build time (`docs/gen_cli.py`); "
        "`cytoprofile COMMAND --help` prints the same text.",
        "Exit status: 0 done, 1 a problem you can fix (one line saying what), 2 a usage error, "
        "3 a bug (the traceback is written to a log file), 130 interrupted.",
        "",
        "| command | what |",
        "|---|---|",
    ]
    names = sorted(group.list_commands(root))
    for name in names:
        cmd = group.get_command(root, name)
        assert cmd is not None
        summary = (cmd.help or "").strip().split("\n\n")[0] or cmd.get_short_help_str()  # the whole first paragraph, never cut
        lines.append(f"| [`{name}`](#cytoprofile-{name}) | {_escape(summary)} |")
    lines.append("")
    for name in names:
        cmd = group.get_command(root, name)
        assert cmd is not None
        lines += _command_section(name, cmd, root)
    return "\n".join(lines) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """Add the generated CLI reference to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render_cli()))
    return files


if __name__ == "__main__":
    print(render_cli(), end="")
