"""The GPU check: the CUDA path measured on a lent GPU in one resumable run (docs/gpu.md)."""
