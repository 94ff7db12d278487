"""Reproducing He et al., "Deep Residual Learning for Image Recognition" (arXiv 1512.03385):
`resnet-train paper` (docs/paper.md).

    experiments  the scales, the plan of runs and the command (`main`)
    runs         one training run: in-memory data, on-device augmentation, probes, resumable
    report       report.md and its PNGs from the finished runs
    probes       per-layer gradient norms and response stds (sec. 3.1, Figure 7)
    digits       scikit-learn's bundled handwritten digits: real images without a download
"""
