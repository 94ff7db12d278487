"""The faults scenario of resnet-bench (bench/scenarios/cli.py): a model file replaced while serving,
SIGTERM under load, kill -9 under load and a restart.

SIGTERM under load is 32 closed-loop clients on resnet18, half on kept-alive connections and half
opening a connection per request (`Connection: close`), for 2 s; then SIGTERM, and each client goes
on until its first answer that is not a 200. Every request's outcome is counted, before and after
the signal: a status, `refused` (the connect failed: nothing was sent, safe to retry anywhere), or
`lost` (the request was sent and the connection closed or reset without an answer: the client cannot
tell whether it ran). The server's own count of where its connections stood as the drain began
(service/api/server.py, DrainingServer) is read from its log.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

from bench import servers


def _post_all(server, data: bytes, count: int) -> list[str]:
    """`count` concurrent uploads to resnet18; each one's status, or the exception's name."""
    import httpx

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits, headers=server.header_dict) as http:
            async def one() -> str:
                try:
                    response = await http.post("/classify", content=data, headers={"Content-Type": "image/jpeg"})
                    return str(response.status_code)
                except httpx.HTTPError as error:
                    return type(error).__name__
            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def _refused(error: BaseException | None) -> bool:
    """Whether the connect itself was refused (ECONNREFUSED somewhere in the exception's chain)."""
    for _ in range(10):
        if error is None or isinstance(error, ConnectionRefusedError):
            return error is not None
        error = error.__cause__ or error.__context__
    return False


SIGTERM_CLIENTS = 32
SIGTERM_AFTER_S = 2.0


def _sigterm_under_load(server, data: bytes) -> dict:
    """SIGTERM_CLIENTS clients for SIGTERM_AFTER_S, then SIGTERM: every outcome before and after it."""
    import httpx

    outcomes: dict = {"before_sigterm": {}, "after_sigterm": {}}
    signalled = asyncio.Event()

    def count(outcome: str) -> None:
        phase = outcomes["after_sigterm" if signalled.is_set() else "before_sigterm"]
        phase[outcome] = phase.get(outcome, 0) + 1

    async def client(http, headers: dict) -> None:
        kind = "per-request connection" if "Connection" in headers else "kept-alive"
        while True:
            try:
                response = await http.post("/classify", content=data, headers=headers)
                outcome = str(response.status_code)
                if response.status_code != 200:  # its error code: 503 draining, or overloaded
                    outcome += " " + response.json().get("error", {}).get("code", "")
            except httpx.HTTPError as error:  # ReadError, RemoteProtocolError, WriteError: sent, unanswered
                outcome = "refused" if _refused(error) else f"lost ({type(error).__name__}, {kind})"
            count(outcome)
            if signalled.is_set() and outcome != "200":
                return

    async def run() -> None:
        limits = httpx.Limits(max_connections=SIGTERM_CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits, headers=server.header_dict) as http:
            kept, closing = {"Content-Type": "image/jpeg"}, {"Content-Type": "image/jpeg", "Connection": "close"}
            tasks = [asyncio.create_task(client(http, kept if i % 2 else closing)) for i in range(SIGTERM_CLIENTS)]
            await asyncio.sleep(SIGTERM_AFTER_S)
            server.process.send_signal(signal.SIGTERM)
            signalled_at.append(time.monotonic())
            signalled.set()
            await asyncio.gather(*tasks)

    signalled_at: list[float] = []
    asyncio.run(run())
    server.process.wait(timeout=60)  # the drain: the grace, or drain_timeout_s if a connection outlasts it
    outcomes["exit_after_sigterm_s"] = round(time.monotonic() - signalled_at[0], 2)
    drain = [json.loads(line) for line in server.log_path.read_text().splitlines() if '"message": "draining:' in line]
    keys = ("running", "between_requests", "accepted_at_close")
    return {**outcomes, "server_at_sigterm": {k: drain[0][k] for k in keys} if drain else None}


def faults(server, files, args) -> dict:
    """A model file replaced while serving; SIGTERM under load; kill -9 under load then a restart."""
    import shutil

    import httpx

    data = Path(files[0]).read_bytes()
    result: dict = {}
    # 1. A model file replaced on disk while serving changes no answer (the session holds the graph).
    jpeg = {**server.header_dict, "Content-Type": "image/jpeg"}
    before = httpx.post(server.url + "/classify", content=data, headers=jpeg).json()
    target = args.models / "resnet18" / "model.onnx"
    saved = target.with_name("model.onnx.saved")
    shutil.copy2(target, saved)
    try:
        shutil.copy2(args.models / "resnet152" / "model.onnx", target.with_name("model.onnx.tmp"))
        os.replace(target.with_name("model.onnx.tmp"), target)
        after = httpx.post(server.url + "/classify", content=data, headers=jpeg).json()
    finally:
        os.replace(saved, target)
    result["replaced_file_same_answer"] = before == after
    # 2. SIGTERM under load: every request that reached the server is answered (200 if it was
    # running, 503 draining if it came after), the rest refused at connect. Its own server, logging
    # at info, so that its count of connections at SIGTERM is in its log.
    serve_args = (*args.serve_args, "--log-level", "info")
    with servers.start_service(args.models, "resnet18", serve_args, args.out / "sigterm", args.headers) as drained:
        result["sigterm_under_load"] = _sigterm_under_load(drained, data)
    # 3. kill -9 under load, then a restart: ready again and serving.
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out, args.headers) as second:
        loader = threading.Thread(target=lambda: _post_all(second, data, 32))
        loader.start()
        time.sleep(0.5)
        second.process.kill()
        loader.join()
    started = time.monotonic()
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out, args.headers) as third:
        result["restart_to_ready_s"] = time.monotonic() - started
        result["after_restart"] = _post_all(third, data, 4)
    return result
