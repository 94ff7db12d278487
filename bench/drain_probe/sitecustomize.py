"""Where uvicorn's connections stand as its SIGTERM shutdown begins: a probe for the faults scenario.

    PYTHONPATH=bench/drain_probe:$PWD resnet-bench scenario faults --models models
    grep PROBE results/scenarios/sigterm/resnet-serve.log

Python imports `sitecustomize` at start-up from the path, so every process started with this folder
first on PYTHONPATH (the bench's resnet-serve included) wraps uvicorn's Server.shutdown. It prints one
line to the server's log: the listening socket's accept queue (Linux: tcp_info.tcpi_unacked holds a
listener's backlog length, include/uapi/linux/tcp.h) and each open connection's state: a request
running, between requests after a response, accepted with no byte read, or a head half read. Used for
docs/robustness.md (Faults) on the code before the drain fix; the fixed server logs most of this
itself (`draining: ...`).
"""

import socket
import struct
import sys

import uvicorn.server
from uvicorn.protocols.http import h11_impl

_data_received = h11_impl.H11Protocol.data_received
_shutdown = uvicorn.server.Server.shutdown


def _counting_data_received(self, data: bytes) -> None:
    self._probe_bytes = getattr(self, "_probe_bytes", 0) + len(data)
    _data_received(self, data)


async def _probing_shutdown(self, sockets=None) -> None:
    queue = [
        struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 24)[0]
        for server in self.servers
        for s in server.sockets
    ]
    states = {"running": 0, "between_after_response": 0, "no_bytes": 0, "head_incomplete": 0}
    for c in list(self.server_state.connections):
        if c.cycle is not None:
            states["between_after_response" if c.cycle.response_complete else "running"] += 1
        else:
            states["head_incomplete" if getattr(c, "_probe_bytes", 0) else "no_bytes"] += 1
    print("PROBE at SIGTERM: accept_queue", queue, "connections", states, file=sys.stderr, flush=True)
    await _shutdown(self, sockets)


h11_impl.H11Protocol.data_received = _counting_data_received
uvicorn.server.Server.shutdown = _probing_shutdown
