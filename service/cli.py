"""resnet-serve: serve a folder of exported models over HTTP.

    resnet-serve --models models --host 127.0.0.1 --port 8000
    RESNET_SERVE_MAX_BATCH_SIZE=16 resnet-serve --models models

Uvicorn runs the app: it is the reference ASGI server Litestar documents, a single process whose
event loop owns the batchers (a batch can only gather requests that reach the same process), and its
SIGTERM handling is the drain we want: stop accepting, let in-flight requests finish (up to
--drain-timeout-s), answer a request that still arrives on an open connection 503 draining
(--drain-grace-s, service/api/server.py), then run the lifespan shutdown, which drains the queues and
closes the pools.
Scale out with more processes or pods behind a load balancer, not with in-process workers.

Models are loaded before the server starts, so a bad folder or file fails fast: one line on stderr,
exit code 2. Warm-up runs after the port opens; /health/ready says 503 until it is done.
"""

from __future__ import annotations

import logging
import sys


import cliconfig
from service import logs, trace
from service.depth import cascade_file, ladder as ladders
from service.api.app import create_app
from service.gate.keys import KeysFileError
from service.config import ConfigError, parse
from service.engine.runtime import ModelLoadError, load_models
from service.api.server import DrainingServer, uvicorn_config

log = logging.getLogger("service.cli")


def main(argv: list[str] | None = None) -> int:
    """Parse flags and environment, load the models, serve until SIGTERM or SIGINT."""
    try:
        config = parse(argv)
    except ConfigError as error:
        return cliconfig.fail("resnet-serve", error)
    logs.configure(config.log_level)
    trace.setup()  # OpenTelemetry spans, only if installed and asked for by OTEL_* variables
    try:
        models = load_models(config)
        ladder = ladders.build(models, config.ladder, config.default_model)
        policy = cascade_file.read(config.models, ladder, models)
        app = create_app(config, models, ladder, policy)  # reads the API keys file, if any
    except (ModelLoadError, ladders.LadderError, cascade_file.CascadeFileError, KeysFileError) as error:
        return cliconfig.fail("resnet-serve", error)
    log.info(
        "ladder %s (%s), default model %s; model=auto %s",
        ",".join(ladder.rungs), ladder.rule, ladder.default_model,
        f"calibrated by {policy.source}" if policy.calibrated
        else f"uncalibrated: {policy.signal} below {', '.join(map(str, policy.thresholds)) or '-'} escalates",
        extra={"ladder": list(ladder.rungs), "calibrated": policy.calibrated},
    )  # fmt: skip
    log.info("starting", extra={"config": {k: str(v) for k, v in vars(config).items()}})
    server = DrainingServer(uvicorn_config(app, config))  # client timeouts
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
