"""cliconfig: one frozen dataclass -> flags (and environment variables), typed by its annotations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import cliconfig


@dataclass(frozen=True)
class Example:
    """A config in the style of the four stages."""

    source: Path  # where to read from
    name: str | None = None  # a name; None: derived
    steps: int = 10  # how many steps
    rate: float = 0.5  # a fraction
    fast: bool = False  # go fast
    sizes: tuple[int, ...] = (1, 8)  # batch sizes
    kinds: tuple[str, ...] = cliconfig.option(("a", "b"), "kinds, comma-separated")
    # a comment line above a field belongs to no field
    quiet: bool = True  # a long comment that
    # goes on below the field


def parser(**kwargs) -> cliconfig.Parser:
    return cliconfig.Parser(Example, prog="example", **kwargs)


def test_each_field_becomes_a_typed_flag_and_only_given_values_come_back():
    given = parser().parse(["--source", "in", "--name", "x", "--steps", "3", "--rate", "0.25", "--fast",
                            "--sizes", "1, 2,4", "--kinds", "c", "--no-quiet"])
    assert given == {"source": Path("in"), "name": "x", "steps": 3, "rate": 0.25, "fast": True, "sizes": (1, 2, 4),
                     "kinds": ("c",), "quiet": False}
    assert parser().parse(["--source", "in"]) == {"source": Path("in")}
    assert Example(**parser().parse(["--source", "in"])).sizes == (1, 8)


def test_flags_beat_the_environment_which_beats_the_default():
    p = parser(env_prefix="EX_")
    env = {"EX_SOURCE": "env", "EX_STEPS": "7", "EX_FAST": "yes"}
    assert p.parse([], env) == {"source": Path("env"), "steps": 7, "fast": True}
    assert p.parse(["--steps", "9", "--no-fast"], env) == {"source": Path("env"), "steps": 9, "fast": False}


def test_positional_fields_and_renamed_flags():
    p = parser(positional=("source",), flags={"steps": "--max-steps"}, skip=("quiet",))
    assert p.parse(["in", "--max-steps", "2"]) == {"source": Path("in"), "steps": 2}
    with pytest.raises(cliconfig.UsageError, match="unrecognized arguments: --quiet"):
        p.parse(["in", "--quiet"])


def test_help_shows_each_fields_comment_and_default(capsys):
    with pytest.raises(SystemExit) as done:
        parser(env_prefix="EX_").parse(["--help"], {})
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS how many steps; env EX_STEPS (default: 10)" in text
    assert "--sizes SIZES batch sizes; env EX_SIZES (default: 1,8)" in text
    assert "kinds, comma-separated; env EX_KINDS (default: a,b)" in text
    assert "--name NAME a name; None: derived; env EX_NAME (default: none)" in text
    assert "a long comment that goes on below the field" in text
    assert "belongs to no field" not in text


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--source", "s", "--steps", "many"], {}, "--steps must be an integer, got 'many'"),
        (["--source", "s", "--rate", "half"], {}, "--rate must be a number, got 'half'"),
        (["--source", "s", "--sizes", "1,x"], {}, "--sizes must be comma-separated integers, got '1,x'"),
        (["--source", "s"], {"EX_FAST": "maybe"}, "EX_FAST must be true or false, got 'maybe'"),
        ([], {}, "--source SOURCE or EX_SOURCE is required"),
        (["--source", "s", "--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_names_the_flag_or_variable(argv, env, message):
    with pytest.raises(cliconfig.UsageError) as error:
        parser(env_prefix="EX_").parse(argv, env)
    assert message in str(error.value)


def test_fail_prints_one_line_and_returns_2(capsys):
    assert cliconfig.fail("example", ValueError("two\nlines")) == 2
    assert capsys.readouterr().err == "example: error: two lines\n"
