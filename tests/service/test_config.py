"""Settings from flags and RESNET_SERVE_* variables, the CLI's one-line errors, and no torch in service/."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from service.cli import main
from service.config import ConfigError, ServeConfig, available_cpus, parse
from service.engine.runtime import model_threads

# The names the deploy manifests are written against (deploy/): they must not drift.
STABLE_ENV = {
    "RESNET_SERVE_MODELS", "RESNET_SERVE_HOST", "RESNET_SERVE_PORT", "RESNET_SERVE_DEFAULT_MODEL",
    "RESNET_SERVE_MAX_BATCH_SIZE", "RESNET_SERVE_MAX_DELAY_MS", "RESNET_SERVE_QUEUE_SIZE",
    "RESNET_SERVE_MAX_BODY_BYTES", "RESNET_SERVE_MAX_PIXELS", "RESNET_SERVE_INTRA_OP_THREADS",
    "RESNET_SERVE_DECODE_THREADS", "RESNET_SERVE_REQUEST_TIMEOUT_S", "RESNET_SERVE_PROVIDERS",
}  # fmt: skip


def test_every_field_has_a_flag_and_a_stable_variable():
    names = {"RESNET_SERVE_" + f.name.upper() for f in fields(ServeConfig)}
    assert STABLE_ENV <= names
    for f in fields(ServeConfig):
        assert f.metadata["help"], f.name


def test_flags_beat_environment_beat_defaults():
    env = {"RESNET_SERVE_MODELS": "/env/models", "RESNET_SERVE_MAX_BATCH_SIZE": "4", "RESNET_SERVE_PROVIDERS": "cpu"}
    config = parse(["--max-batch-size", "12", "--max-delay-ms", "7.5"], env)
    assert config.models == Path("/env/models")
    assert config.max_batch_size == 12 and config.max_delay_ms == 7.5 and config.max_delay_s == 0.0075
    assert config.providers == ("cpu",)
    assert config.port == 8000 and config.default_model == "" and config.max_body_bytes == 20_000_000
    assert config.ladder == ()  # empty: the default ladder, whose shallowest rung is the default model
    assert parse(["--models", "m", "--providers", "CUDA, cpu"], {}).providers == ("cuda", "cpu")


def test_the_page_is_on_and_cors_off_by_default_and_both_are_settable():
    config = parse(["--models", "m"], {})
    assert config.ui is True and config.cors_origins == ()
    assert parse(["--models", "m", "--no-ui"], {}).ui is False
    assert parse(["--models", "m"], {"RESNET_SERVE_UI": "0"}).ui is False
    origins = "https://app.example.com, http://127.0.0.1:8080,http://[::1]:3000,https://*.example.org"
    assert parse(["--models", "m", "--cors-origins", origins], {}).cors_origins == (
        "https://app.example.com", "http://127.0.0.1:8080", "http://[::1]:3000", "https://*.example.org",
    )  # fmt: skip
    assert parse(["--models", "m"], {"RESNET_SERVE_CORS_ORIGINS": "*"}).cors_origins == ("*",)


def test_zero_threads_means_every_available_cpu_and_the_cpus_shared_between_models():
    config = parse(["--models", "m"], {})
    assert config.decode_threads == available_cpus() >= 1
    assert config.intra_op_threads == 0  # resolved by service.engine.runtime.model_threads
    assert model_threads(config) == available_cpus()
    assert model_threads(parse(["--models", "m", "--intra-op-threads", "3"], {})) == 3


@pytest.mark.parametrize(
    "argv, env, message",
    [
        ([], {}, "--models MODELS or RESNET_SERVE_MODELS is required"),
        (["--models", "m", "--port", "eighty"], {}, "--port must be an integer, got 'eighty'"),
        (
            ["--models", "m"],
            {"RESNET_SERVE_MAX_DELAY_MS": "soon"},
            "RESNET_SERVE_MAX_DELAY_MS must be a number, got 'soon'",
        ),
        (["--models", "m", "--max-batch-size", "0"], {}, "max_batch_size must be at least 1, got 0"),
        (["--models", "m", "--providers", "tpu"], {}, "providers must be a list of ('cuda', 'cpu'), got 'tpu'"),
        (["--models", "m", "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--models", "m", "--cors-origins", "https://app.example.com/"], {}, "got 'https://app.example.com/'"),
        (["--models", "m"], {"RESNET_SERVE_CORS_ORIGINS": "example.com"}, "cors_origins must be * or origins like"),
        (["--models", "m"], {"RESNET_SERVE_UI": "maybe"}, "RESNET_SERVE_UI must be true or false, got 'maybe'"),
    ],
)
def test_bad_settings_name_the_value(argv, env, message):
    with pytest.raises(ConfigError) as error:
        parse(argv, env)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-batch-size", "x"], "--max-batch-size must be an integer, got 'x'"),
        (["--models", "/no/such/folder"], "models folder '/no/such/folder' does not exist"),
        (["--models", "{empty}"], "holds no <name>/model.onnx"),
    ],
)
def test_the_cli_reports_one_line_and_exits_2(argv, message, tmp_path, capsys, monkeypatch):
    for name in STABLE_ENV:
        monkeypatch.delenv(name, raising=False)
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-serve: ") and message in err


def test_the_cli_refuses_a_missing_default_model(models_dir, capsys):
    assert main(["--models", str(models_dir), "--default-model", "resnet9000", "--providers", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "default model 'resnet9000' is not in" in err[0]


def test_the_service_never_imports_torch():
    code = (
        "import sys, service.cli, service.api.app, service.engine.pipeline, service.engine.runtime, artifact.preprocess;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout + done.stderr
