"""resnet-bench scenario NAME: the service under faults, floods, slow clients, a long soak, and the
depth cascade; each starts its own resnet-serve (bench/scenarios/cli.py lists them)."""
