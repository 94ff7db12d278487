"""ONNX Runtime's tensor type names (`NodeArg.type`) as numpy dtypes: the one table both session paths read."""

import numpy as np

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,  # cam_classes
}
