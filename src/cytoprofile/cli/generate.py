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

__all__ = ["StepSpec", "step_command"]

#: runs one step: (spec, PROFILES, OUTPUT, float format, quiet, features given, the function's keyword arguments)
Runner = Callable[["StepSpec", str, str, "str | None", bool, "list[str] | None", "list[str] | None", dict[str, Any]], None]


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
    profiles_help: str = "Per-well profiles."
    output_help: str = "Output table."
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
    opt = choice_option(choices, help=said) if choices else typer.Option(
        *flags, help=said, metavar=spec.metavars.get(name), show_default=spec.unset.get(name, True))
    default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, opt], default=default)


def _given(value: Any, default: Any) -> Any:
    """A repeatable option's values (comma-separated lists split); none given: the function's default."""
    if not isinstance(value, list):
        return value
    values = split_values(value) if all(isinstance(v, str) for v in value) else value
    return values or default


def step_command(spec: StepSpec) -> Callable[..., None]:
    """Register and return the command of one step: PROFILES OUTPUT, then the function's keyword arguments."""
    keywords = {n: p for n, p in inspect.signature(spec.function, eval_str=True).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in spec.tail and n not in spec.skip}

    def command(profiles: str, output: str, *, features: list[str] | None = None, feature_prefixes: list[str] | None = None,
                float_format: str | None = None, quiet: bool = False, **options: Any) -> None:
        given = {n: spec.parse[n](v) if n in spec.parse else _given(v, keywords[n].default) for n, v in options.items()}
        spec.run(spec, profiles, output, float_format, quiet, features, feature_prefixes, given)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("profiles", positional, annotation=Annotated[str, typer.Argument(help=spec.profiles_help)]),
              inspect.Parameter("output", positional, annotation=Annotated[str, typer.Argument(help=spec.output_help)]),
              *(_option(spec, n, p) for n, p in keywords.items()),
              *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None if n != "quiet" else False,
                                  annotation=_TAIL_TYPES[n]) for n in spec.tail)]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.summary
    command.__name__ = f"{spec.function.__name__}_cmd"
    return app.command(spec.command)(command)
