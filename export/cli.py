"""resnet-export: a resnet-train checkpoint -> MODELS_DIR/NAME/model.onnx, verified before it is written.

    resnet-export checkpoints/resnet18/checkpoint.pt --out models                    # models/resnet18
    resnet-export checkpoints/resnet18/checkpoint.pt --out models --precision int8   # models/resnet18-int8
    resnet-export CKPT --out models --precision int8 --calibration-data /data/imagenet

Exit status 0 on success; 2 with one line on stderr when the export is refused (bad input or failed
verification), and then nothing is written or replaced.
"""

from __future__ import annotations

import sys

import cliconfig
from export.config import ExportConfig, ExportError


def parser() -> cliconfig.Parser:
    """The command line: one flag per ExportConfig field (its comment is the help), plus --quiet."""
    p = cliconfig.Parser(ExportConfig, prog="resnet-export", description=__doc__.split("\n\n")[0],
                         positional=("checkpoint",), flags={"out_dir": "--out"}, skip=("progress",), error=ExportError)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the resnet-export console script."""
    try:
        given = parser().parse(argv)
        config = ExportConfig(progress=not given.pop("quiet", False), **given)
        # Imported here so that --help and flag errors answer without loading torch (~2 s).
        from export.exporter import run

        path = run(config)
    except ExportError as error:
        return cliconfig.fail("resnet-export", error)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
