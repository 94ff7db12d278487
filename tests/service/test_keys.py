"""API keys through a real resnet-serve process: who gets in, revoking and adding keys while it serves
(an edit in place, a rename over the file, a Kubernetes Secret's symlink swap), a bad edit kept out,
keys never in the logs, start-up refusals, and a fuzz of the Authorization header."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from service.gate.keys import KeysFileError, parse

from .conftest import _resnet_serve, encode, photo, start_server

ALICE = "alice-0123456789abcdef0123456789abcdef"
BOB = "bob-fedcba9876543210fedcba9876543210"
CAROL = "carol-00112233445566778899aabbccddeeff"
DAVE = "dave-ffeeddccbbaa99887766554433221100"
WRONG = "mallory-0000000000000000000000000000000"
RELOAD_S = 5.0  # the promised delay of a key change


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class SecretVolume:
    """A folder laid out as the kubelet mounts a Secret: keys -> ..data/keys, ..data -> ..<version>."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.version = root, 0
        self.swap(text)
        (root / "keys").symlink_to("..data/keys")

    @property
    def path(self) -> Path:
        return self.root / "keys"

    @property
    def target(self) -> Path:
        return self.path.resolve()

    def swap(self, text: str) -> None:
        """The kubelet's update: a new version folder, then an atomic rename of the ..data link."""
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        (folder / "keys").write_text(text)
        (folder / "keys").chmod(0o644)  # world-readable, as a Secret without defaultMode is: warned about
        (self.root / "..data_tmp").symlink_to(folder.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")


@pytest.fixture(scope="module")
def keyed(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("secret")
    volume = SecretVolume(root, f"# who may call\n{'alice':<8}{ALICE}\n\nbob\t{BOB}\n")
    server = start_server(models_dir, root, "--api-keys-file", str(volume.path), "--providers", "cpu")
    yield server, volume
    server.stop()


def status(server, path: str, key: str | None, method: str = "GET", **kwargs) -> int:
    headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs).status_code


def wait_for(server, key: str, expected: int) -> float:
    """Seconds until GET /models with `key` answers `expected`; fails after RELOAD_S."""
    started = time.monotonic()
    while (got := status(server, "/models", key)) != expected:
        assert time.monotonic() - started < RELOAD_S, f"still {got}, not {expected}, {RELOAD_S} s after the change"
        time.sleep(0.1)
    return time.monotonic() - started


def test_without_a_key_classify_models_and_oip_model_routes_answer_401_with_the_usual_error_body(keyed):
    server, _ = keyed
    image = encode(photo("coffee.png").convert("RGB"))
    for method, path, kwargs in [
        ("POST", "/classify", {"content": image, "headers": {"Content-Type": "image/jpeg"}}),
        ("POST", "/models/resnet18/classify", {"content": image, "headers": {"Content-Type": "image/jpeg"}}),
        ("GET", "/models", {}),
        ("GET", "/models/resnet18", {}),
        ("GET", "/v2/models/resnet18", {}),
        ("POST", "/v2/models/resnet18/infer", {"json": {"inputs": []}}),
    ]:
        for headers in ({}, bearer(WRONG), {"Authorization": f"Basic {ALICE}"}, {"Authorization": "Bearer"}):
            response = httpx.request(method, server.url + path, headers={**kwargs.get("headers", {}), **headers},
                                     timeout=30, **{k: v for k, v in kwargs.items() if k != "headers"})  # fmt: skip
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = response.json()
            if path.startswith("/v2"):  # the Open Inference Protocol's own error shape
                assert set(body) == {"error"} and "API key" in body["error"]
            else:
                assert body["error"]["code"] == "unauthorized"
                assert body["error"]["request_id"] == response.headers["X-Request-ID"]
            if method == "POST":  # refused before its body was read: the connection is not reused
                assert response.headers["Connection"] == "close"
    response = httpx.get(server.url + "/models", headers=bearer(WRONG))
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def access_line(server, request_id: str, timeout_s: float = 10.0) -> str:
    """The request's access-log line: written after the response is sent, so it may lag the answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in server.log().splitlines() if request_id in line and '"service.access"' in line]
        if lines or time.monotonic() > deadline:
            (line,) = lines
            return line
        time.sleep(0.05)


def test_each_listed_key_is_accepted_and_named_in_the_access_log_and_metrics(keyed):
    server, _ = keyed
    image = encode(photo("coffee.png").convert("RGB"))
    for key, name in ((ALICE, "alice"), (BOB, "bob")):
        response = httpx.post(server.url + "/classify", content=image,
                              headers={**bearer(key), "Content-Type": "image/jpeg"}, timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "resnet18"
        request_id = response.headers["X-Request-ID"]
        line = access_line(server, request_id)
        assert f'"key": "{name}"' in line
        assert status(server, "/models", key) == 200
    assert status(server, "/models", f" {ALICE.upper()} ".strip()) == 401  # compared exactly
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'^resnet_api_requests_total\{key="alice",outcome="admitted"\} [1-9]', metrics, re.M)
    assert re.search(r'^resnet_api_requests_total\{key="-",outcome="unauthorized"\} [1-9]', metrics, re.M)


def test_health_metrics_schema_and_cors_preflight_stay_open(keyed):
    server, _ = keyed
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics",
                 "/schema/openapi.json"):  # fmt: skip
        assert status(server, path, None) == 200, path
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert status(server, "/classify", None, "OPTIONS", headers=preflight) != 401


def test_a_key_is_revoked_and_added_by_editing_renaming_over_and_swapping_the_file_while_serving(keyed):
    server, volume = keyed
    assert status(server, "/models", ALICE) == 200 and status(server, "/models", CAROL) == 401
    # 1. An edit in place (same inode): alice revoked, carol added.
    with open(volume.target, "w") as file:
        file.write(f"bob {BOB}\ncarol {CAROL}\n")
    took = [wait_for(server, ALICE, 401), wait_for(server, CAROL, 200)]
    assert status(server, "/models", BOB) == 200
    # 2. A rename over it, as an editor or a config tool writes: carol revoked, dave added.
    replacement = volume.target.with_name("keys.new")
    replacement.write_text(f"bob {BOB}\ndave {DAVE}\n")
    os.replace(replacement, volume.target)
    took += [wait_for(server, CAROL, 401), wait_for(server, DAVE, 200)]
    # 3. A Kubernetes Secret update: the ..data symlink swapped to a new folder; dave revoked, alice back.
    volume.swap(f"alice {ALICE}\nbob {BOB}\n")
    took += [wait_for(server, DAVE, 401), wait_for(server, ALICE, 200)]
    print(f"key changes took effect in {', '.join(f'{s:.1f}' for s in took)} s")
    assert '"removed": ["alice"]' in server.log() and '"added": ["dave"]' in server.log()


def test_a_bad_edit_keeps_the_last_good_keys_and_logs_one_error_line(keyed):
    server, volume = keyed
    assert status(server, "/models", BOB) == 200
    with open(volume.target, "a") as file:
        file.write(f"eve {ALICE} extra-field\n")
    deadline = time.monotonic() + RELOAD_S
    while "API keys not reloaded" not in server.log():
        assert time.monotonic() < deadline, "the bad edit was not noticed"
        time.sleep(0.1)
    time.sleep(2.5)  # two more polls of the unchanged bad file
    errors = [line for line in server.log().splitlines() if "API keys not reloaded" in line]
    assert len(errors) == 1, errors
    assert "line 3" in errors[0] and '"level": "error"' in errors[0]
    assert status(server, "/models", BOB) == 200 and status(server, "/models", ALICE) == 200
    volume.swap(f"alice {ALICE}\nbob {BOB}\n")


def test_no_key_ever_appears_in_the_logs_only_names(keyed):
    server, _ = keyed
    log = server.log()
    assert "world-readable" in log or "readable by every user" in log  # the 0644 file was warned about
    for key in (ALICE, BOB, CAROL, DAVE, WRONG):
        assert key not in log and key.upper() not in log
    assert '"key": "alice"' in log and '"key": "bob"' in log


@given(value=st.one_of(
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00\x7f", exclude_categories=("Cc",)), max_size=80),
    st.builds(lambda s, k: f"{s} {k}", st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", ""]),
              st.one_of(st.sampled_from([ALICE, BOB, ALICE[:-1], ALICE + "x", WRONG]),
                        st.text("abcdef0123456789-._~+/=", max_size=60))),
))  # fmt: skip
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzing_the_authorization_header_gives_401_or_200_never_a_5xx(keyed, value):
    server, _ = keyed
    raw = value.strip(" \t").encode("latin-1")
    response = httpx.get(server.url + "/models", headers={"Authorization": raw}, timeout=30)
    scheme, _, token = raw.partition(b" ")
    right = scheme.lower() == b"bearer" and token.strip() in (ALICE.encode(), BOB.encode())
    assert response.status_code == (200 if right else 401), (value, response.text)


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read the API keys file"),
    ("alice\n", "line 1: expected NAME KEY separated by whitespace, got 1 fields"),
    (f"alice {ALICE}\nbob short\n", "line 2: a key must be at least 16 characters"),
    (f"alice {ALICE}\nalice {BOB}\n", "line 2: the name is also on line 1"),
])  # fmt: skip
def test_a_keys_file_that_cannot_be_read_or_parsed_refuses_to_start_with_one_line_and_exit_2(
    models_dir, tmp_path, content, expected
):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
    env["RESNET_SERVE_API_KEYS_FILE"] = str(path)  # the variable, as a Kubernetes pod sets it
    done = subprocess.run([*_resnet_serve(), "--models", str(models_dir), "--providers", "cpu", "--port", "0"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("resnet-serve: error:")]
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], done.stderr[-2000:]
    assert ALICE not in done.stderr and BOB not in done.stderr


def test_a_line_written_key_first_is_refused_without_repeating_the_key():
    with pytest.raises(KeysFileError) as error:
        parse(f"{ALICE.replace('-', '')} alice\n", "keys")
    assert ALICE.replace("-", "") not in str(error.value)
    assert parse("# none yet\n\n", "keys").digests == ()


def test_with_metrics_need_key_metrics_takes_a_key_and_health_stays_open(models_dir, tmp_path):
    (tmp_path / "keys").write_text(f"prometheus {ALICE}\n")
    (tmp_path / "keys").chmod(0o600)
    server = start_server(models_dir, tmp_path, "--api-keys-file", str(tmp_path / "keys"), "--metrics-need-key",
                          "--providers", "cpu")  # fmt: skip
    try:
        assert status(server, "/metrics", None) == 401 and status(server, "/metrics", WRONG) == 401
        assert status(server, "/metrics", ALICE) == 200
        assert status(server, "/health/ready", None) == 200
        assert "readable by every user" not in server.log()  # 0600: no warning
    finally:
        server.stop()
