"""One way from command-line flags (and, for the service, environment variables) to a frozen config.

Every stage keeps its settings in a frozen dataclass whose fields say their unit and meaning, either
in a comment after the field or in `option(default, help)`. `Parser` turns each field into a flag
(`max_batch_size` -> `--max-batch-size`), with the value's type from `typing.get_type_hints`:

    int, float, str, Path        the text converted; a bad value names the flag: "--port must be an integer"
    bool                         --flag / --no-flag
    X | None                     as X; None is the default only
    tuple[X, ...]                comma-separated X ("cuda,cpu", "1,4,16")

`--help` shows each field's help and its default. With `env_prefix`, an unset flag falls back to
`<PREFIX><FIELD>` (a flag beats the environment, the environment beats the default). `parse` returns
only what the user gave, so a stage can tell "given" from "default" (resnet-train --resume does).
Usage errors raise `error` (UsageError by default); `fail` prints one line and returns exit status 2.
This module imports nothing beyond the standard library: the torch-free service uses it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

USAGE_ERROR = 2  # the exit status of bad input in every CLI here (DEVELOPERS.md)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NAMES = {int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {int: "comma-separated integers", float: "comma-separated numbers"}


class UsageError(ValueError):
    """A flag or variable the config cannot use; the message names it and what was expected."""


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its help text (and extra metadata, e.g. sep=",") attached."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def fail(prog: str, error: BaseException | str) -> int:
    """Print `prog: error: <message>` as one line on stderr and return USAGE_ERROR."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting: every CLI here reports one line."""

    def __init__(self, *args, error: type[Exception], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._error_type = error

    def error(self, message: str):  # type: ignore[override]
        raise self._error_type(message)


class Parser:
    """Flags (and optionally environment variables) for the fields of one frozen dataclass."""

    def __init__(
        self,
        config: type,
        prog: str,
        description: str = "",
        *,
        positional: Sequence[str] = (),
        flags: Mapping[str, str] | None = None,
        skip: Sequence[str] = (),
        env_prefix: str | None = None,
        error: type[Exception] = UsageError,
        epilog: str | None = None,
    ) -> None:
        self.config, self.env_prefix, self.error = config, env_prefix, error
        self.positional, self.flags = tuple(positional), dict(flags or {})
        self.fields = [f for f in dataclasses.fields(config) if f.name not in skip]
        self.types = typing.get_type_hints(config)
        comments = _field_comments(config)
        self.argparse = _ArgumentParser(prog=prog, description=description, epilog=epilog, error=error,
                                        argument_default=argparse.SUPPRESS,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        for f in self.fields:
            kind, _ = _unwrap(self.types[f.name])
            text = f.metadata.get("help") or comments.get(f.name, "")
            if self.env_prefix:
                text += f"; env {self.env_var(f)}"
            if _has_default(f):
                text += f" (default: {_show(_default(f))})"
            text = text.replace("%", "%%")  # argparse formats help with %
            if f.name in self.positional:  # a tuple takes one or more values: `CHECKPOINT [CHECKPOINT ...]`
                self.argparse.add_argument(f.name, help=text, nargs="+" if kind is tuple else None)
            elif kind is bool:
                self.argparse.add_argument(self.flag(f), dest=f.name, action=argparse.BooleanOptionalAction, help=text)
            else:
                self.argparse.add_argument(self.flag(f), dest=f.name, metavar=f.name.upper(), help=text)

    def flag(self, f: dataclasses.Field) -> str:
        return self.flags.get(f.name) or "--" + f.name.replace("_", "-")

    def env_var(self, f: dataclasses.Field) -> str:
        return f"{self.env_prefix}{f.name.upper()}"

    def add_argument(self, *args, **kwargs) -> None:
        """A flag that is not a config field (e.g. --resume); its value is returned under its dest."""
        self.argparse.add_argument(*args, **kwargs)

    def parse(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> dict:
        """The fields (converted) and extra arguments the user gave; raises `error` on bad input."""
        given = vars(self.argparse.parse_args(sys.argv[1:] if argv is None else list(argv)))
        if self.env_prefix and environ is None:
            environ = os.environ
        values = {key: value for key, value in given.items() if key not in {f.name for f in self.fields}}
        for f in self.fields:
            if f.name in given:
                raw, source = given[f.name], (f.name if f.name in self.positional else self.flag(f))
            elif self.env_prefix and self.env_var(f) in environ:
                raw, source = environ[self.env_var(f)], self.env_var(f)
            else:
                continue
            values[f.name] = self._convert(f, raw, source)
        for f in self.fields:  # after the conversions, so that a bad value is reported first
            if f.name not in values and not _has_default(f):
                also = f" or {self.env_var(f)}" if self.env_prefix else ""
                raise self.error(f"{self.flag(f)} {f.name.upper()}{also} is required")
        return values

    def _convert(self, f: dataclasses.Field, raw: Any, source: str) -> Any:
        kind, item = _unwrap(self.types[f.name])
        if isinstance(raw, list):  # a positional tuple: one value per argument
            return tuple(self._convert_item(f, value, source) for value in raw)
        if not isinstance(raw, str):  # a --flag/--no-flag switch: argparse already made it a bool
            return raw
        try:
            if kind is tuple:
                parts = (part.strip() for part in raw.split(f.metadata.get("sep", ",")))
                return tuple(_scalar(item, part) for part in parts if part)
            return _scalar(kind, raw)
        except ValueError:
            expected = _PLURALS.get(item, "comma-separated text") if kind is tuple else _NAMES.get(kind, "text")
            raise self.error(f"{source} must be {expected}, got {raw!r}") from None


    def _convert_item(self, f: dataclasses.Field, raw: str, source: str) -> Any:
        item = _unwrap(self.types[f.name])[1]
        try:
            return _scalar(item, raw)
        except ValueError:
            raise self.error(f"{source} must be {_PLURALS.get(item, 'text').removeprefix('comma-separated ')}, "
                             f"got {raw!r}") from None


def _scalar(kind: Any, text: str) -> Any:
    if kind is bool:
        if text.strip().lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.strip().lower() in _TRUE
    if kind in (int, float, str, Path):
        return kind(text)
    raise TypeError(f"cliconfig cannot parse fields of type {kind!r}")


def _unwrap(hint: Any) -> tuple[Any, Any]:
    """(kind, item type): Optional[X] -> X, tuple[X, ...] -> (tuple, X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            hint = options[0]
    if typing.get_origin(hint) is tuple:
        return tuple, typing.get_args(hint)[0]
    return hint, None


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the one after `name: type = default`, plus the
    comment-only lines right below it (a comment too long for one line goes on). Empty without source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    by_line = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string.lstrip("#").strip()
    start = next(i for i, line in enumerate(lines) if line.startswith("class ")) + 1  # after the decorators
    body = next((re.match(r"\s*", line).group() for line in lines[start:] if line.strip()), "")
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    current = None
    for number, line in enumerate(lines[start:], start + 1):
        match = re.match(rf"{body}([A-Za-z_]\w*)\s*:", line)
        if match and match.group(1) in names:
            current = match.group(1) if number in by_line else None
            if current:
                comments[current] = by_line[number]
        elif current and line.strip().startswith("#"):
            comments[current] += " " + by_line[number]
        else:
            current = None
    return comments
