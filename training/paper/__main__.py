"""python -m training.paper ...: the same as `resnet-train paper ...`."""

import sys

from training.paper.experiments import main

sys.exit(main(sys.argv[1:]))
