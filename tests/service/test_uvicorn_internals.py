"""service/api/server.py subclasses uvicorn's h11 protocol and Server and reads their private state.
pyproject.toml bounds uvicorn to the versions checked; this test names the first internal a new
uvicorn moved, before any server test fails in a way that hides why."""

from __future__ import annotations

import inspect

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api import server


def test_the_h11_protocol_still_has_what_the_draining_subclass_overrides_and_reads():
    for method in ("connection_made", "connection_lost", "shutdown", "on_response_complete", "data_received"):
        assert callable(getattr(H11Protocol, method, None)), f"uvicorn {uvicorn.__version__}: H11Protocol.{method} is gone"
    init = inspect.signature(H11Protocol.__init__).parameters
    for name in ("config", "server_state", "app_state"):
        assert name in init, f"uvicorn {uvicorn.__version__}: H11Protocol(...) no longer takes {name}="
    source = inspect.getsource(H11Protocol)
    for attribute in ("self.conn", "self.cycle", "self.transport", "response_complete"):
        assert attribute in source, f"uvicorn {uvicorn.__version__}: H11Protocol no longer uses {attribute}"
    assert hasattr(h11.Connection(h11.SERVER), "trailing_data"), "h11.Connection.trailing_data is gone"


def test_the_server_still_has_the_state_the_draining_shutdown_walks():
    source = inspect.getsource(uvicorn.Server)
    for attribute in ("self.server_state", "self.servers", "self.lifespan", "async def shutdown"):
        assert attribute in source, f"uvicorn {uvicorn.__version__}: Server no longer has {attribute}"
    assert "connections" in inspect.getsource(uvicorn.server.ServerState)
    assert issubclass(server.DrainingServer, uvicorn.Server)
