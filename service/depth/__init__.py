"""Model selection by depth: the ladder of served depths and the calibrated shallow-to-deep cascade.

    ladder.py        one served model per depth, shallowest first; `depth=` and the default model
    cascade.py       `model=auto`: escalate the images the shallow model is unsure of, within a budget
    cascade_file.py  the calibration the service reads, tied to its model files by sha256
    calibrate.py     `resnet-calibrate`: measures the ladder on labelled images and writes that file
"""
