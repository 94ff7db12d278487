"""The synthetic image set as a torch Dataset; the drawing itself is imagesets.synthetic (torch-free).

    from training import synthetic
    train = synthetic.SyntheticDataset(seed=0, split="train", length=20000, size=37)
    placed = synthetic.SyntheticDataset(0, "val", 1000, 37, placed=True)   # --data synthetic-placed
"""

from __future__ import annotations

from PIL import Image
from torch.utils.data import Dataset

# The renderer's names, re-exported so `from training import synthetic` keeps working.
from imagesets.synthetic import CLASSES, MEAN, STD, render, render_placed  # noqa: F401


class SyntheticDataset(Dataset):
    """`length` images of side `size`, labels cycling through CLASSES; items are (PIL or transformed, label).

    placed: the localisation variant (imagesets.synthetic.render_placed); `box(index)` is its object's box."""

    def __init__(self, seed: int, split: str, length: int, size: int, transform=None, placed: bool = False):
        if length < 1 or size < 8:
            raise ValueError(f"synthetic set needs length >= 1 and size >= 8, got {length} and {size}")
        self.seed, self.split, self.length, self.size, self.transform = seed, split, length, size, transform
        self.placed = placed
        self.class_ids = [c[0] for c in CLASSES]
        self.class_names = [c[1] for c in CLASSES]
        self.targets = [i % len(CLASSES) for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def _check(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")

    def __getitem__(self, index: int):
        self._check(index)
        if self.placed:
            pixels, label, _ = render_placed(self.seed, self.split, index, self.size)
        else:
            pixels, label = render(self.seed, self.split, index, self.size)
        image = Image.fromarray(pixels, "RGB")
        return (self.transform(image) if self.transform else image), label

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The object's (x0, y0, x1, y1) in pixels of the rendered image (placed variant only)."""
        if not self.placed:
            raise ValueError("only the placed synthetic set (--data synthetic-placed) has object boxes")
        self._check(index)
        return render_placed(self.seed, self.split, index, self.size)[2]
