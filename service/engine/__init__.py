"""Running the models: ONNX Runtime sessions, the CUDA path, dynamic batching, per-model pipelines.

    runtime.py    discover, load and check model files; one session per model (CPU or CUDA)
    cuda.py       the CUDA provider's options and the driver probe
    sized.py      one session per batch size with buffers filled in place (the CUDA path)
    tensors.py    ONNX Runtime's tensor types as numpy's
    batching.py   the framework-free dynamic batcher
    pipeline.py   one model's path from bytes to probabilities: decode pool, batcher, inference thread
    admission.py  refusals decided from the headers, before a body is read
"""
