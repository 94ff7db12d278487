"""Image sets drawn on the fly with numpy and PIL alone: no torch, so the service's tools can use them.

    from imagesets import synthetic
    pixels, label = synthetic.render(seed=0, split="val", index=7, size=37)
"""
