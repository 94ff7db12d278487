"""The faults scenario of resnet-bench (bench/scenarios.py): a model file replaced while serving,
SIGTERM under load, kill -9 under load and a restart."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from bench import servers


def _post_all(url: str, data: bytes, count: int) -> list[str]:
    """`count` concurrent uploads to resnet18; each one's status, or the exception's name."""
    import httpx

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=count)) as http:
            async def one() -> str:
                try:
                    response = await http.post("/classify", content=data, headers={"Content-Type": "image/jpeg"})
                    return str(response.status_code)
                except httpx.HTTPError as error:
                    return type(error).__name__
            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def faults(server, files, args) -> dict:
    """kill -9 under load then a restart; a model file replaced while serving; SIGTERM under load."""
    import shutil
    import signal

    import httpx

    data = Path(files[0]).read_bytes()
    result: dict = {}
    # 1. A model file replaced on disk while serving changes no answer (the session holds the graph).
    before = httpx.post(server.url + "/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
    target = args.models / "resnet18" / "model.onnx"
    saved = target.with_name("model.onnx.saved")
    shutil.copy2(target, saved)
    try:
        shutil.copy2(args.models / "resnet152" / "model.onnx", target.with_name("model.onnx.tmp"))
        os.replace(target.with_name("model.onnx.tmp"), target)
        after = httpx.post(server.url + "/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
    finally:
        os.replace(saved, target)
    result["replaced_file_same_answer"] = before == after
    # 2. SIGTERM under load: every admitted request is answered (200), the rest refused cleanly.
    statuses: list[str] = []
    loader = threading.Thread(target=lambda: statuses.extend(_post_all(server.url, data, 32)))
    loader.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    loader.join()
    result["sigterm_under_32_clients"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    server.process.wait(timeout=60)
    # 3. kill -9 under load, then a restart: ready again and serving.
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out) as second:
        loader = threading.Thread(target=lambda: _post_all(second.url, data, 32))
        loader.start()
        time.sleep(0.5)
        second.process.kill()
        loader.join()
    started = time.monotonic()
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out) as third:
        result["restart_to_ready_s"] = time.monotonic() - started
        result["after_restart"] = _post_all(third.url, data, 4)
    return result
