"""The key and limit refusals (service/gate/access.py) take the app's one error path, so Litestar's CORS
middleware, outermost, puts its headers on them: a browser client on an allowed origin reads the
real 401 or 429, and a preflight passes without a key. In-process, on a small Litestar app with the
service's error handler and a CORSConfig (the service's own CORS settings live in app.py)."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.config.cors import CORSConfig
from litestar.middleware import DefineMiddleware
from litestar.testing import TestClient

from service import trace
from service.api import app as service_app
from service.gate import access, keys, limits

KEY = "alice-0123456789abcdef0123456789abcdef"
ORIGIN = {"Origin": "https://app.example"}


@get("/models")
async def models() -> dict:
    return {"models": []}


def test_preflight_passes_and_401_and_429_carry_the_cors_headers(tmp_path):
    (tmp_path / "keys").write_text(f"alice {KEY}\n")
    gate = access.Gate(keys.KeysFile(tmp_path / "keys"), limits.Limiter(rate=0.01, burst=1))
    app = Litestar(
        [models], middleware=[trace.TraceContext, DefineMiddleware(access.Guard, gate=gate)],
        exception_handlers={Exception: service_app.error_response},
        cors_config=CORSConfig(allow_origins=[ORIGIN["Origin"]], allow_headers=["Authorization"]),
    )  # fmt: skip
    with TestClient(app) as client:
        preflight = client.options("/models", headers={
            **ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization",
        })  # fmt: skip
        assert preflight.status_code == 204
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = client.get("/models", headers=ORIGIN)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["access-control-allow-origin"] == ORIGIN["Origin"]
        assert refused.headers["X-Trace-ID"]
        bearer = {**ORIGIN, "Authorization": f"Bearer {KEY}"}
        assert client.get("/models", headers=bearer).status_code == 200
        limited = client.get("/models", headers=bearer)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["access-control-allow-origin"] == ORIGIN["Origin"]
