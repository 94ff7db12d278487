"""resnet-train --shortcut A|B|C (Table 3) end to end: the checkpoint records the option, and export,
resume and fine-tuning rebuild the net with it; options an arch cannot have are refused by name."""

from pathlib import Path

import onnx
import pytest
import torch

from artifact import PREFIX, ModelCard
from export.exporter import export_checkpoint
from training import checkpoint, cli, models

pytestmark = pytest.mark.slow  # trains networks

# resnet18 at 16 px (its ImageNet stem leaves 1x1 maps in layer4) on 16 synthetic images: seconds.
ARGS = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "8", "--train-size", "16", "--val-size", "8",
        "--max-steps", "2", "--workers", "0"]


def fails_cleanly(argv: list[str], capsys, match: str) -> None:
    capsys.readouterr()  # drop what an earlier run of this test printed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-train: error: "), err
    assert match in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """option -> checkpoint.pt of a resnet18 trained two steps with --shortcut option (read-only)."""
    runs = {}
    for option in ("A", "C"):
        out = tmp_path_factory.mktemp(f"shortcut-{option}")
        assert cli.main([*ARGS, "--shortcut", option, "--out", str(out)]) == 0
        runs[option] = out / "checkpoint.pt"
    return runs


@pytest.mark.parametrize("option", ["A", "C"])
def test_the_checkpoint_records_the_option_and_export_rebuilds_it_past_the_parity_gate(trained, option, tmp_path):
    state = checkpoint.load(trained[option])
    assert state["shortcut"] == option and state["config"]["shortcut"] == option
    downsample = {k for k in state["model"] if "downsample" in k}
    assert not downsample if option == "A" else "layer1.0.downsample.0.weight" in downsample
    with pytest.raises(RuntimeError):  # the weights fit only the option they were trained as
        models.build("resnet18", 10).load_state_dict(state["model"])

    path = export_checkpoint(trained[option], tmp_path, progress=False)  # torch vs ONNX Runtime parity inside
    proto = onnx.load(str(path))
    card = ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert (card.arch, card.shortcut) == ("resnet18", option)
    assert f"resnet18 shortcut {option} (fp32)" in proto.doc_string


def test_resume_and_fine_tuning_rebuild_the_checkpoints_option(trained, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    assert cli.main(["--resume", str(trained["A"]), "--max-steps", "3", "--out", str(resumed)]) == 0
    state = checkpoint.load(resumed / "checkpoint.pt")
    assert (state["shortcut"], state["train_state"]["step"]) == ("A", 3)
    fails_cleanly(["--resume", str(trained["A"]), "--shortcut", "C", "--out", str(tmp_path / "x")], capsys,
                  "shortcut 'C' differs from its 'A'")

    tuned = tmp_path / "tuned"  # the source's option unless --shortcut says otherwise
    assert cli.main([*ARGS[2:], "--init-from", str(trained["A"]), "--max-steps", "1", "--out", str(tuned)]) == 0
    assert checkpoint.load(tuned / "checkpoint.pt")["shortcut"] == "A"
    fails_cleanly([*ARGS[2:], "--init-from", str(trained["A"]), "--shortcut", "B", "--out", str(tmp_path / "y")],
                  capsys, "holds a resnet18 with shortcut A, not B")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_options_an_arch_cannot_have_are_one_line_exit_2_naming_the_value(tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly([*ARGS, "--shortcut", "D", "--out", str(out)], capsys, "shortcut must be one of ('A', 'B', 'C'), got 'D'")
    for option in ("B", "C"):
        fails_cleanly(["--arch", "resnet20", "--shortcut", option, "--out", str(out)], capsys,
                      f"shortcut '{option}' does not apply to resnet20: resnet20's shortcuts are A, fixed")
    fails_cleanly(["--arch", "plain18", "--shortcut", "A", "--out", str(out)], capsys, "plain18's shortcuts are none")
    assert not out.exists()
    # A is what a CIFAR ResNet is by construction: asking for it builds the same net
    torch.manual_seed(0)
    a = models.build("resnet20", 10, shortcut="A").state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(a[k], v) for k, v in models.build("resnet20", 10).state_dict().items())


def test_files_from_before_the_option_read_as_the_archs_own(trained, tmp_path):
    state = checkpoint.load(trained["C"])
    del state["shortcut"]
    assert checkpoint.validate(state).get("shortcut") is None
    with pytest.raises(checkpoint.CheckpointError, match="'shortcut' must be one of .* got 'D'"):
        checkpoint.validate({**state, "shortcut": "D"})
    card = ModelCard(name="r18", arch="resnet18", num_classes=1, class_ids=("a",), class_names=("a",),
                     preprocessing=checkpoint.Preprocessing.for_input_size(16, (0.5,) * 3, (0.25,) * 3),
                     precision="fp32", source_sha256="0" * 64, val_top1=None, val_top5=None, torch_version="2",
                     onnx_version="1", exported_at="2026-01-01T00:00:00+00:00", shortcut="A")
    props = card.to_metadata()
    assert ModelCard.from_metadata(props) == card
    del props[PREFIX + "shortcut"]
    assert ModelCard.from_metadata(props).shortcut is None
