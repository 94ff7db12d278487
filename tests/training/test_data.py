"""Datasets: the synthetic set, ImageNet-style folders, CIFAR-10's offline error, the transforms."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from artifact import Preprocessing
from training import data, synthetic
from training.imagenet_wnids import WNIDS


def test_synthetic_images_are_a_pure_function_of_seed_split_and_index():
    record = data.synthetic_record(seed=3, train_size=50, val_size=20, input_size=32)
    a, b = data.build_dataset(record, "train"), data.build_dataset(record, "train")
    image, label = a[7]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (37, 37)
    assert np.array_equal(np.asarray(image), np.asarray(b[7][0])) and label == b[7][1] == 7
    val = data.build_dataset(record, "val")
    assert not np.array_equal(np.asarray(val[7][0]), np.asarray(image))
    other_seed = data.build_dataset({**record, "seed": 4}, "train")
    assert not np.array_equal(np.asarray(other_seed[7][0]), np.asarray(image))


def test_synthetic_classes_are_balanced_and_honestly_named():
    dataset = data.build_dataset(data.synthetic_record(0, 100, 10, 32), "train")
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert np.bincount(labels).tolist() == [10] * 10
    assert dataset.class_ids[:3] == ["disc", "ring", "square"] and "checkerboard" in dataset.class_names


def test_synthetic_statistics_match_the_recorded_mean_and_std():
    pixels = np.stack([synthetic.render(0, "train", i, 37)[0] for i in range(300)]) / 255.0
    assert np.allclose(pixels.mean(axis=(0, 1, 2)), synthetic.MEAN, atol=0.03)
    assert np.allclose(pixels.std(axis=(0, 1, 2)), synthetic.STD, atol=0.03)


def test_synthetic_placed_is_a_data_name_with_the_same_classes_and_object_boxes(tmp_path):
    record = data.record_for("synthetic-placed", seed=1, train_size=30, val_size=10, input_size=16)
    assert record["kind"] == "synthetic-placed" and data.preprocessing_for(record, 16).mean == synthetic.MEAN
    train = data.build_dataset(record, "train")
    image, label = train[13]
    assert train.class_ids == [c for c, _ in synthetic.CLASSES] and label == 3
    pixels, _, box = synthetic.render_placed(1, "train", 13, record["image_size"])
    assert np.array_equal(np.asarray(image), pixels) and train.box(13) == box
    with pytest.raises(ValueError, match="only the placed synthetic set"):
        data.build_dataset(data.synthetic_record(1, 30, 10, 16), "train").box(0)
    # resnet-train trains on it and records it, so export and evaluation rebuild the same images
    from training import checkpoint, cli
    argv = ["--arch", "resnet20", "--data", "synthetic-placed", "--image-size", "16", "--batch-size", "8",
            "--train-size", "16", "--val-size", "8", "--max-steps", "2", "--workers", "0", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert checkpoint.load(tmp_path / "checkpoint.pt")["dataset"]["kind"] == "synthetic-placed"


def test_eval_transform_resizes_crops_and_normalises_like_the_recipe():
    pre = Preprocessing(32, 37, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = Image.new("RGB", (80, 60), (255, 0, 128))
    tensor = data.eval_transform(pre)(image)
    assert tensor.shape == (3, 32, 32)
    expected = (torch.tensor([255, 0, 128]) / 255 - 0.5) / 0.25
    assert torch.allclose(tensor[:, 16, 16], expected, atol=1e-2)


def test_train_transforms_follow_the_paper_per_dataset():
    pre = Preprocessing.for_input_size(32, (0.5,) * 3, (0.25,) * 3)
    folder = data.train_transform({"kind": "folder", "root": "/x"}, pre).transforms
    cifar = data.train_transform({"kind": "cifar10", "root": "/x"}, Preprocessing(32, 32, (0.5,) * 3, (0.25,) * 3)).transforms
    assert type(folder[0]).__name__ == "RandomResizedCrop"
    assert type(cifar[0]).__name__ == "RandomCrop" and cifar[0].padding == 4
    assert all(type(t[1]).__name__ == "RandomHorizontalFlip" for t in (folder, cifar))


def test_folder_of_imagenet_ids_gets_torchvision_category_names(image_folder):
    record = data.record_for(str(image_folder))
    train = data.build_dataset(record, "train")
    assert train.class_ids == ["n01440764", "n01443537", "n01484850"]
    assert train.class_names == ["tench", "goldfish", "great white shark"]
    image, label = data.build_dataset(record, "val")[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 0
    pre = data.preprocessing_for(record, 32)
    assert (pre.input_size, pre.resize_size, pre.mean) == (32, 37, data.IMAGENET_MEAN)


def test_folder_with_other_names_keeps_them_as_labels(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "pets", ["cat", "dog"], per_class=1)
    assert data.build_dataset(data.record_for(str(root)), "train").class_names == ["cat", "dog"]


def test_wordnet_ids_are_imagenets_1000_in_class_index_order():
    assert len(WNIDS) == len(set(WNIDS)) == 1000 and list(WNIDS) == sorted(WNIDS)
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert len(categories) == 1000
    index = {w: i for i, w in enumerate(WNIDS)}
    # spot checks against torchvision's names, spread over the list
    for wnid, name in [("n01440764", "tench"), ("n02123045", "tabby"), ("n02510455", "giant panda"),
                       ("n03196217", "digital clock"), ("n04285008", "sports car"), ("n15075141", "toilet tissue")]:
        assert categories[index[wnid]] == name


def test_missing_folder_empty_class_and_mismatched_splits_are_named(tmp_path, make_image_folder):
    with pytest.raises(data.DataError, match="no such folder"):
        data.record_for(str(tmp_path / "nope"))
    root = make_image_folder(tmp_path / "d", ["a", "b"], per_class=1)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(data.DataError, match=r"class folder '.*train/c' is empty"):
        data.build_dataset(data.record_for(str(root)), "train")
    (root / "train" / "c").rmdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "c" / "0.png")
    with pytest.raises(data.DataError, match=r"must have the same class folders; differ in \['c'\]"):
        data.build_dataset(data.record_for(str(root)), "train")
    no_val = make_image_folder(tmp_path / "e", ["a"], per_class=1)
    shutil.rmtree(no_val / "val")
    with pytest.raises(data.DataError, match="lacks val/"):
        data.build_dataset(data.record_for(str(no_val)), "train")


def test_cifar10_without_network_is_a_clear_error(tmp_path):
    # A proxy on a closed port makes the download fail fast and the same way on any machine.
    code = (
        "from training import data\n"
        f"data.build_dataset(data.record_for('cifar10', cifar_root={str(tmp_path)!r}), 'train')\n"
    )
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "DataError: CIFAR-10 is not in" in result.stderr and "could not be downloaded" in result.stderr
    assert "cifar-10-python.tar.gz" in result.stderr


def test_unknown_record_kind_and_imported_weights_have_no_data():
    with pytest.raises(data.DataError, match="kind must be one of"):
        data.build_dataset({"kind": "mnist"}, "train")
    with pytest.raises(data.DataError, match="not available here"):
        data.build_dataset({"kind": "torchvision-weights", "weights": "W", "dataset": "ImageNet-1k"}, "val")
