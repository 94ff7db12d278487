"""The docs say what the code does: the serving settings table matches ServeConfig field by field, and
every relative link in the README and docs/ points at a file that exists."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

from service.config import ENV_PREFIX, ServeConfig

REPO = Path(__file__).resolve().parents[2]


def _settings_rows() -> dict[str, list[str]]:
    text = (REPO / "docs" / "serving.md").read_text()
    table = text[text.index("## Settings") :].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _shown(value) -> str:
    if value in ("", ()):
        return "(empty)"
    if value is None:  # chosen per model by the device it runs on; the meaning says how
        return "(by device)"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_the_settings_table_lists_every_field_with_its_flag_variable_default_and_meaning():
    rows = _settings_rows()
    expected_flags = {"--" + f.name.replace("_", "-") for f in fields(ServeConfig)}
    assert set(rows) == expected_flags, f"missing {expected_flags - set(rows)}, extra {set(rows) - expected_flags}"
    for f in fields(ServeConfig):
        env, default, meaning = rows["--" + f.name.replace("_", "-")]
        assert env == f"`{ENV_PREFIX}{f.name.upper()}`", f.name
        want = "(required)" if f.default is MISSING and f.default_factory is MISSING else _shown(f.default)
        assert default == want, f"{f.name}: docs say {default!r}, ServeConfig {want!r}"
        if "help" in f.metadata:
            assert meaning == f.metadata["help"], f.name


def test_relative_links_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
