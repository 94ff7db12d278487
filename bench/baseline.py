"""The naive baseline: the same network in PyTorch eager, one request at a time, behind http.server.

This is what a first attempt at serving looks like: a single-threaded stdlib HTTP server that decodes
each posted image with Pillow, applies torchvision's transforms, runs `model(x[None])` under
`torch.inference_mode()` and answers the top 5 as JSON. No batching, no overlap of decoding with
inference, torch's intra-op threads set to the service's ONNX Runtime threads. It is the only module
of the bench that imports torch, and it runs in its own process.

The network is built from the model file's card (arch, classes, preprocessing): with `--checkpoint`
it gets those weights, otherwise random ones (speed does not depend on them; the bench says so).

    python -m bench.baseline --model results/models/resnet18/model.onnx --port 8100 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import onnx
import torch
from PIL import Image

from artifact import ModelCard
from training import checkpoint, data, models


def load(model_path: Path, checkpoint_path: Path | None):
    """(card, eval-mode network, torchvision transform) for an exported model file."""
    proto = onnx.load(str(model_path), load_external_data=False)
    card = ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props})
    network = models.build(card.arch, card.num_classes, shortcut=card.shortcut)
    if checkpoint_path is not None:
        network.load_state_dict(checkpoint.load(checkpoint_path)["model"])
    return card, network.eval(), data.eval_transform(card.preprocessing)


class Server(HTTPServer):
    # Connections queue in the kernel while one request is served: let up to 256 wait.
    request_queue_size = 256

    def __init__(self, address, card: ModelCard, network: torch.nn.Module, transform) -> None:
        super().__init__(address, Handler)
        self.card, self.network, self.transform = card, network, transform


class Handler(BaseHTTPRequestHandler):
    # One connection per request: a single-threaded server that kept a connection alive would serve
    # that one client only, while the others wait in the accept queue.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health/ready":
            self._answer(200, {"status": "ready"})
        else:
            self._answer(404, {"error": f"no route for GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Server = self.server
        try:
            image = Image.open(io.BytesIO(body)).convert("RGB")
        except Exception as error:  # noqa: BLE001 - any undecodable body is the client's error
            self._answer(400, {"error": f"cannot decode the image: {error}"})
            return
        with torch.inference_mode():
            logits = server.network(server.transform(image)[None])[0]
        probabilities, indices = torch.softmax(logits, 0).topk(min(5, server.card.num_classes))
        predictions = [{"label": server.card.class_names[i], "class_index": int(i), "probability": float(p)}
                       for p, i in zip(probabilities, indices)]
        self._answer(200, {"model": server.card.name, "predictions": predictions})

    def _answer(self, status: int, value: dict) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one line per request would cost CPU
        pass


def main(argv: list[str] | None = None) -> int:
    """Serve one model until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported model.onnx (its card names the network)")
    parser.add_argument("--checkpoint", type=Path, help="weights for the network (default: random, speed only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads (the service's ORT threads)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card, network, transform = load(args.model, args.checkpoint)
    with torch.inference_mode():  # the first call allocates and picks kernels: not the steady state
        side = card.preprocessing.input_size
        for _ in range(2):
            network(torch.zeros(1, 3, side, side))
    server = Server((args.host, args.port), card, network, transform)
    print(f"baseline: {card.name} in torch {torch.__version__} eager on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
