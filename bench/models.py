"""The bench's own 224x224 models: resnet18 and resnet152, fp32 and int8, built once and cached.

The default models (`make models`) are trained at a small input size; the bench's targets
(bench/report.py) are for 224x224 networks, and ImageNet data and published weights cannot be
fetched here. So the bench builds each network with random weights (zero-init residual, so
activations stay tame) into a real checkpoint on the synthetic set rendered for 224x224
preprocessing, and exports it with resnet-export. Speed does not depend on weight values; every output labels these models
"random weights, speed only". (Ten synthetic classes instead of 1000 change the final layer by
2048x990 multiply-adds, under 0.1% of resnet152's and resnet18's work.)

int8 goes through the exporter's own gate unchanged (static QDQ calibrated on the synthetic train
split, judged against fp32 on its validation split). A random network's accuracy is chance level, so
what the gate can vouch for is top-1 agreement with fp32 (docs/performance.md gives it); its verdict is
kept in MANIFEST and in every results.json.

    python -m bench.models results/models        # what resnet-bench does when given no --models
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from artifact import write_atomically

ARCHS = ("resnet18", "resnet152")
PRECISIONS = ("fp32", "int8")
INPUT_SIZE = 224
LABEL = "random weights, speed only"
MANIFEST = "bench-models.json"  # beside the model folders: how each was made and what the gate said
CALIBRATION_IMAGES = 128  # synthetic train images that set the int8 activation ranges
EVAL_IMAGES = 300  # synthetic val images that judge int8 against fp32


def build(out: Path, archs=ARCHS, precisions=PRECISIONS, log=print) -> dict:
    """Make out/<name>/model.onnx for every arch and precision not already there; returns the manifest."""
    out = Path(out)
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for arch in archs:
        for precision in precisions:
            name = arch if precision == "fp32" else f"{arch}-{precision}"
            if (out / name / "model.onnx").is_file() and name in manifest:
                continue
            log(f"building {name} at {INPUT_SIZE}x{INPUT_SIZE} ({LABEL}); cached in {out}")
            checkpoint = _checkpoint(arch, out / "checkpoints" / f"{arch}.pt")
            manifest[name] = _export(checkpoint, out, name, precision, log)
            _write_json(manifest_path, manifest)
    return manifest


def _checkpoint(arch: str, path: Path) -> Path:
    """A real checkpoint of a randomly initialised network on the 224x224 synthetic set (seeded)."""
    if path.is_file():
        return path
    import torch

    from training import checkpoint, data, models, synthetic

    torch.manual_seed(0)
    record = data.synthetic_record(seed=0, train_size=1024, val_size=EVAL_IMAGES, input_size=INPUT_SIZE)
    network = models.build(arch, len(synthetic.CLASSES), zero_init_residual=True)
    return checkpoint.Checkpoint(
        arch=arch,
        class_ids=[c[0] for c in synthetic.CLASSES],
        class_names=[c[1] for c in synthetic.CLASSES],
        preprocessing=data.preprocessing_for(record, INPUT_SIZE),
        dataset=record,
        config={"source": "resnet-bench", "weights": LABEL, "seed": 0, "zero_init_residual": True},
        model=network.state_dict(),
        provenance=checkpoint.Provenance.here("python -m bench.models"),
    ).save(path)


def _export(checkpoint: Path, out: Path, name: str, precision: str, log) -> dict:
    """resnet-export with its gate; an int8 refusal by the gate is recorded and quantized anyway."""
    from export.config import ExportError
    from export.exporter import export_checkpoint
    from export.verify import VerificationError

    entry = {"precision": precision, "weights": LABEL, "input_size": INPUT_SIZE, "checkpoint": str(checkpoint)}
    lines = io.StringIO()
    try:
        with _tee_stderr(lines):
            export_checkpoint(checkpoint, out, name=name, precision=precision,
                              calibration_images=CALIBRATION_IMAGES, eval_images=EVAL_IMAGES)
        entry["gate"] = "passed"
    except VerificationError as error:
        # Not loosened here: the gate is the exporter's promise about every int8 file it writes.
        raise SystemExit(f"resnet-bench: resnet-export's gate refused the bench's {name}: {error}") from None
    except ExportError as error:
        raise SystemExit(f"resnet-bench: cannot build {name}: {error}") from None
    judged = [line for line in lines.getvalue().splitlines() if "validation images (" in line]
    if judged:
        entry["judgement"] = judged[-1].split(": ", 1)[-1]
    entry["built"] = _now()
    return entry


@contextlib.contextmanager
def _tee_stderr(copy: io.StringIO):
    """Keep the exporter's progress on the terminal and a copy to read its judgement from."""

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            copy.write(text)
            return original.write(text)

        def flush(self) -> None:
            original.flush()

        def isatty(self) -> bool:
            return False

    original = sys.stderr
    with contextlib.redirect_stderr(Tee()):
        yield


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "results/models"))
