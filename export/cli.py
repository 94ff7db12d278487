"""resnet-export: a resnet-train checkpoint -> MODELS_DIR/NAME/model.onnx, verified before it is written.

    resnet-export checkpoints/resnet18/checkpoint.pt --out models                    # models/resnet18
    resnet-export checkpoints/resnet18/checkpoint.pt --out models --precision int8   # models/resnet18-int8
    resnet-export CKPT --out models --precision int8 --calibration-data /data/imagenet

Exit status 0 on success; 2 with one line on stderr when the export is refused (bad input or failed
verification), and then nothing is written or replaced.
"""

from __future__ import annotations

import argparse
import sys

from artifact import INPUT_DTYPES, PRECISIONS
from export.config import MIN_OPSET, ExportConfig, ExportError

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we promise one line on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def parser() -> argparse.ArgumentParser:
    """The command line; its defaults are ExportConfig's."""
    defaults = ExportConfig(checkpoint="-", out_dir="-")
    p = _Parser(prog="resnet-export", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by resnet-train")
    p.add_argument("--out", required=True, metavar="MODELS_DIR", help="models folder; writes MODELS_DIR/NAME/model.onnx")
    p.add_argument("--name", help="served model name (default: the arch, plus -fp16 or -int8)")
    # No `choices`: the config's own check names the bad value and the valid ones, in one line.
    p.add_argument("--precision", default=defaults.precision, help=f"one of {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--opset", type=int, default=defaults.opset, help=f"ONNX opset, >= {MIN_OPSET} (default {defaults.opset})")
    p.add_argument("--calibration-data", metavar="DATA",
                   help="int8: 'synthetic', 'cifar10' or an ImageNet-style folder whose train/ images calibrate "
                        "(default: the dataset recorded in the checkpoint)")
    p.add_argument("--calibration-images", type=int, default=defaults.calibration_images,
                   help=f"int8: training images used to calibrate (default {defaults.calibration_images})")
    p.add_argument("--eval-images", type=int, default=defaults.eval_images,
                   help=f"fp16/int8: validation images that judge them against fp32 (default {defaults.eval_images})")
    p.add_argument("--input", default=defaults.input,
                   help=f"the graph's input, one of {', '.join(INPUT_DTYPES)}: uint8 RGB pixels [N, S, S, 3] "
                        f"normalised in the graph, or float32 [N, 3, S, S] normalised by the caller, as models "
                        f"exported before issue 16 (default {defaults.input})")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the resnet-export console script."""
    args = parser().parse_args(argv)
    try:
        config = ExportConfig(
            checkpoint=args.checkpoint,
            out_dir=args.out,
            name=args.name,
            precision=args.precision,
            opset=args.opset,
            calibration_data=args.calibration_data,
            calibration_images=args.calibration_images,
            eval_images=args.eval_images,
            progress=not args.quiet,
            input=args.input,
        )
        # Imported here so that --help and flag errors answer without loading torch (~2 s).
        from export.exporter import run

        path = run(config)
    except ExportError as error:
        message = " ".join(str(error).splitlines())  # one line, whatever the cause said
        print(f"resnet-export: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
