"""Commands made from their step function's signature: the function declares each option once (name, type,
default), the spec here says its help; ``PROFILES OUTPUT`` first, then the function's keyword arguments."""

from __future__ import annotations

import inspect
import typing
from collections import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from .common import (
    FeaturePrefixOpt,
    FeaturesOpt,
    FloatFormatOpt,
    QuietOpt,
    app,
    choice_option,
    split_values,
)

__all__ = ["StepSpec", "io_arguments", "step_command"]

#: runs one step: (spec, the arguments and tail options given by name, the function's keyword arguments)
Runner = Callable[["StepSpec", dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class StepSpec:
    """One step's command: its function's keyword arguments are its options (names, types and defaults from
    the signature), with the help said here once."""

    command: str
    function: Callable[..., Any]
    step: str
    summary: str
    help: Mapping[str, str]
    run: Runner
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: the command's arguments (name, help, metavar), the function's input first and the output last
    arguments: tuple[tuple[str, str, str | None], ...] = (("profiles", "Per-well profiles.", None),
                                                          ("output", "Output table.", None))
    #: keyword arguments not offered (given by the runner, or no command-line form)
    skip: tuple[str, ...] = ()
    #: the command-line value (a list of text) turned into the function's, where the two differ
    parse: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    #: the option's type where the function's is not one (a mapping given as ``COLUMN=VALUE`` items)
    types: Mapping[str, Any] = field(default_factory=dict)
    metavars: Mapping[str, str] = field(default_factory=dict)
    #: further flag names (the recipe's name for the same option)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: what an option left unset means, shown as its default (``[default: (every well)]``)
    unset: Mapping[str, str] = field(default_factory=dict)
    #: the options every command of the family takes the same way (features, output format)
    tail: tuple[str, ...] = ("features", "feature_prefixes", "float_format", "quiet")
    said: str = "wrote {rows} rows × {columns} columns to {output}"


_TAIL_TYPES: dict[str, Any] = {"features": FeaturesOpt, "feature_prefixes": FeaturePrefixOpt,
                               "float_format": FloatFormatOpt, "quiet": QuietOpt}


def io_arguments(profiles: str = "Per-well profiles.", output: str = "Output table.") -> tuple[tuple[str, str, None], ...]:
    """The usual arguments: PROFILES (the table read) and OUTPUT (the table written)."""
    return (("profiles", profiles, None), ("output", output, None))


def _kind(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """The option's type for an annotation (a sequence: a repeatable text or number option) and its Literal choices."""
    literal = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    sequence = [m for m in (annotation, *typing.get_args(annotation))
                if isinstance(typing.get_origin(m), type) and issubclass(typing.get_origin(m), abc.Sequence)]
    if literal:
        return str, tuple(map(str, literal))
    if sequence:
        return list[typing.get_args(sequence[0])[0]], ()  # type: ignore[misc]
    return annotation, ()


def _option(spec: StepSpec, name: str, parameter: inspect.Parameter) -> inspect.Parameter:
    """One keyword argument of the step's function as a command-line option, with the function's default."""
    said = spec.help[name]
    kind, literal = _kind(spec.types.get(name, parameter.annotation))
    choices = spec.choices.get(name) or literal
    flags = (f"--{name.replace('_', '-')}", *spec.aliases.get(name, ())) if name in spec.aliases else ()
    opt = choice_option(choices, *flags, help=said) if choices else typer.Option(
        *flags, help=said, metavar=spec.metavars.get(name), show_default=spec.unset.get(name, True))
    default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, opt], default=default)


def _given(value: Any, default: Any) -> Any:
    """A repeatable option's values (comma-separated lists split); none given: the function's default."""
    if not isinstance(value, list):
        return value
    values = split_values(value) if all(isinstance(v, str) for v in value) else value
    return values or default


def _keywords(spec: StepSpec) -> dict[str, inspect.Parameter]:
    """The function's keyword arguments the command offers, annotations evaluated one by one (a skipped one may
    name a type imported for type checking only)."""
    namespace = getattr(spec.function, "__globals__", {})
    out = {}
    for name, parameter in inspect.signature(spec.function).parameters.items():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in spec.tail and name not in spec.skip:
            annotation = parameter.annotation
            out[name] = parameter.replace(annotation=eval(annotation, namespace) if isinstance(annotation, str) else annotation)
    return out


def step_command(spec: StepSpec) -> Callable[..., None]:
    """Register and return the command of one step: PROFILES OUTPUT, then the function's keyword arguments."""
    keywords = _keywords(spec)
    fixed = {name for name, _, _ in spec.arguments} | set(spec.tail)

    def command(**values: Any) -> None:
        given = {n: spec.parse[n](v) if n in spec.parse else _given(v, keywords[n].default)
                 for n, v in values.items() if n not in fixed}
        spec.run(spec, {n: v for n, v in values.items() if n in fixed}, given)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [*(inspect.Parameter(name, positional, annotation=Annotated[str, typer.Argument(help=said, metavar=metavar)])
                for name, said, metavar in spec.arguments),
              *(_option(spec, n, p) for n, p in keywords.items()),
              *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None if n != "quiet" else False,
                                  annotation=_TAIL_TYPES[n]) for n in spec.tail)]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.summary
    command.__name__ = f"{spec.function.__name__}_cmd"
    return app.command(spec.command)(command)
