"""The model contract, torch-free: what export writes into each ONNX file and the service reads back.

    card.py        ModelCard and Preprocessing: arch, classes, precision, the input recipe, provenance
    preprocess.py  the recipe itself: image bytes to the network's input, as the card says
    files.py       atomic writes and the git commit every artifact records

Training, export, calibration and the service all import this package; it imports none of them.
"""

from artifact.card import (
    CAM_CLASSES_OUTPUT,
    CAM_K_DEFAULT,
    CAM_K_INPUT,
    CAM_OUTPUT,
    EMBEDDING_OUTPUT,
    FORMAT_VERSION,
    INPUT_DTYPES,
    INTERPOLATIONS,
    LAYOUTS,
    PRECISIONS,
    PREFIX,
    SHORTCUTS,
    ArtifactError,
    ExtraOutput,
    ModelCard,
    Preprocessing,
    cam_k_default,
    depth_of,
)
from artifact.files import git_commit, write_atomically

__all__ = [
    "CAM_CLASSES_OUTPUT", "CAM_K_DEFAULT", "CAM_K_INPUT", "CAM_OUTPUT", "EMBEDDING_OUTPUT", "ExtraOutput",
    "FORMAT_VERSION", "INPUT_DTYPES", "INTERPOLATIONS", "LAYOUTS", "PRECISIONS", "PREFIX", "SHORTCUTS",
    "ArtifactError", "ModelCard", "Preprocessing", "depth_of", "git_commit", "write_atomically",
]  # fmt: skip
