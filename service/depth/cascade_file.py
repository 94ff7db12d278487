"""The cascade file: what `resnet-calibrate` measured, read back by the service at start-up.

    MODELS/cascade.json   (written by `resnet-calibrate --models MODELS`, next to the model folders)

It names the ladder it was measured on, each model file's identity (sha256 of its bytes), the chosen
confidence signal and thresholds, and the whole measured curve per signal (for people and plots;
the service reads only the first part). A file measured on other model files, on another ladder, or
naming a model that is not served refuses to start: a stale calibration would silently give other
accuracy than the one it reports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from service.depth.abstain import Rule
from service.depth.cascade import SIGNALS, Policy, default_policy
from service.depth.ladder import Ladder
from service.engine.runtime import LoadedModel

FILENAME = "cascade.json"
FORMAT_VERSION = 1


class CascadeFileError(ValueError):
    """A cascade file the service cannot trust; the message says which and how to recalibrate."""


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks: a model file's identity."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recalibrate_hint(models_dir: Path) -> str:
    return f"recalibrate with `resnet-calibrate --models {models_dir}` (or delete {models_dir / FILENAME})"


def read(models_dir: Path, ladder: Ladder, models: dict[str, LoadedModel]) -> Policy:
    """The policy for `ladder`: from MODELS/cascade.json if present (checked), else the default."""
    path = Path(models_dir) / FILENAME
    if not path.exists():
        return default_policy(ladder)
    hint = recalibrate_hint(Path(models_dir))

    def fail(problem: str):
        raise CascadeFileError(f"cascade file {str(path)!r} {problem}; {hint}")

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(f"is not readable JSON ({error})")
    if not isinstance(data, dict):
        fail("is not a JSON object")
    missing = [key for key in ("format_version", "ladder", "models", "signal", "thresholds") if key not in data]
    if missing:
        fail(f"lacks {', '.join(missing)}")
    if not isinstance(data["format_version"], int) or data["format_version"] > FORMAT_VERSION:
        fail(f"has format_version {data['format_version']!r}; this service reads up to {FORMAT_VERSION}")
    rungs, signal, thresholds = data["ladder"], data["signal"], data["thresholds"]
    if not isinstance(rungs, list) or not all(isinstance(name, str) for name in rungs):
        fail(f"has a malformed ladder {rungs!r}")
    not_served = [name for name in rungs if name not in models]
    if not_served:
        fail(f"names {', '.join(not_served)}, not served here (served: {', '.join(sorted(models))})")
    if tuple(rungs) != ladder.rungs:
        fail(f"was measured on the ladder {','.join(rungs)}, the service's ladder is {','.join(ladder.rungs)}")
    if signal not in SIGNALS:
        fail(f"names the signal {signal!r}; known: {', '.join(SIGNALS)}")
    if (
        not isinstance(thresholds, list)
        or len(thresholds) != len(rungs) - 1
        or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds)
    ):
        fail(f"needs {len(rungs) - 1} numeric thresholds (one per rung but the last), has {thresholds!r}")
    identities = data["models"]
    if not isinstance(identities, dict):
        fail("has a malformed models member")
    gflops = {}
    for name in rungs:
        recorded = identities.get(name)
        if not isinstance(recorded, dict) or "sha256" not in recorded:
            fail(f"records no sha256 for {name}")
        actual = file_sha256(models[name].path)
        if recorded["sha256"] != actual:
            fail(
                f"was measured on another {name} file (sha256 {str(recorded['sha256'])[:12]}..., "
                f"{models[name].path} is {actual[:12]}...)"
            )
        if isinstance(recorded.get("gflops"), (int, float)):
            gflops[name] = float(recorded["gflops"])
    rules, recorded_rules = {}, data.get("abstain", {})  # absent in files written before abstention
    if not isinstance(recorded_rules, dict):
        fail("has a malformed abstain member")
    for name, rule in recorded_rules.items():
        if name not in rungs:
            fail(f"has an abstention threshold for {name!r}, which is not on its ladder")
        if not isinstance(rule, dict) or not all(_number(rule.get(key)) for key in ("threshold", "target_risk")):
            fail(f"has a malformed abstention entry for {name!r}: {rule!r}")
        rules[name] = Rule(float(rule["threshold"]), float(rule["target_risk"]))
    return Policy(signal, tuple(float(t) for t in thresholds), calibrated=True, source=str(path), gflops=gflops,
                  abstain=rules)  # fmt: skip


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
