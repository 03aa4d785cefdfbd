"""Deploying the web service: `serve` settings from flags and environment variables within
their bounds, a busy port, several workers, CORS, the bearer token and the Docker entrypoint."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from mobile_sam.cli import main
from mobile_sam.cli import serve as serve_cli
from mobile_sam.serve import create_app

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@pytest.fixture
def no_serve_env(monkeypatch):
    """No MOBILE_SAM_* setting inherited from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("MOBILE_SAM_") and name != "MOBILE_SAM_HOME":
            monkeypatch.delenv(name)


@pytest.fixture
def uvicorn_calls(monkeypatch, no_serve_env):
    import uvicorn

    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("argv, env, message", [
    (["--max-upload-mb", "inf"], {},
     "--max-upload-mb must be a number of MiB in (0, 2048], got 'inf'"),
    (["--cache-mb", "inf"], {}, "--cache-mb must be a number of MiB in (0, 1.04858e+06], got 'inf'"),
    (["--cache-mb", "nan"], {}, "--cache-mb must be a number of MiB in (0, 1.04858e+06], got 'nan'"),
    ([], {"MOBILE_SAM_MAX_UPLOAD_MB": "-1"},
     "MOBILE_SAM_MAX_UPLOAD_MB must be a number of MiB in (0, 2048], got '-1'"),
    (["--max-pixels", "1e12"], {}, "--max-pixels must be an integer in [1, 1000000000], got '1e12'"),
    (["--workers", "0"], {}, "--workers must be an integer in [1, 64], got '0'"),
    ([], {"MOBILE_SAM_WORKERS": "many"}, "MOBILE_SAM_WORKERS must be an integer in [1, 64], "
                                         "got 'many'"),
    (["--everything-timeout", "0"], {},
     "--everything-timeout must be a number in [1, 86400], got '0'"),
    (["--everything-queue", "-1"], {},
     "--everything-queue must be an integer in [0, 1000], got '-1'"),
    (["--cors-origins", "example.com"], {},
     "--cors-origins: origins are '*' or start with http:// or https://, got 'example.com'"),
    (["--token", " secret"], {}, "--token must be printable without surrounding spaces"),
])
def test_settings_out_of_bounds_exit_2_with_one_line(uvicorn_calls, monkeypatch, capsys, argv,
                                                     env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 2
    assert capsys.readouterr().err == f"mobile-sam serve: error: {message}\n"
    assert not uvicorn_calls


def test_settings_come_from_the_environment_and_flags_win(uvicorn_calls, monkeypatch,
                                                          fixture_checkpoint):
    monkeypatch.setenv("MOBILE_SAM_MODEL", str(fixture_checkpoint))
    monkeypatch.setenv("MOBILE_SAM_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("MOBILE_SAM_CACHE_ITEMS", "5")
    monkeypatch.setenv("MOBILE_SAM_EVERYTHING_TIMEOUT", "30")
    monkeypatch.setenv("MOBILE_SAM_PORT", "0")
    monkeypatch.setenv("MOBILE_SAM_TOKEN", "s3cret")
    assert main(["serve", "--cache-items", "7", "--everything-queue", "0"]) == 0
    (app, kwargs), = uvicorn_calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 0
    assert kwargs["timeout_graceful_shutdown"] == serve_cli.GRACEFUL_SHUTDOWN_S
    assert app.state.limits["max_upload_bytes"] == 3 * 2**20
    assert app.state.limits["everything_timeout"] == 30.0
    assert app.state.cache.max_items == 7  # the flag, not the variable
    assert (app.state.jobs.workers, app.state.jobs.queue) == (1, 0)
    with TestClient(app) as client:
        assert client.get("/v1/images/abc/embedding").status_code == 401


def test_busy_port_is_one_line_and_exit_1(uvicorn_calls, capsys, fixture_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--model", str(fixture_checkpoint), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"mobile-sam serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "is another server using the port?" in err
    assert not uvicorn_calls


def test_workers_run_the_worker_factory_with_the_same_settings(uvicorn_calls, monkeypatch,
                                                               fixture_checkpoint):
    monkeypatch.setenv(serve_cli.WORKER_CONFIG_ENV, "")  # restored after the test
    assert main(["serve", "--model", str(fixture_checkpoint), "--port", "0", "--workers", "3",
                 "--max-pixels", "1000000", "--cors-origins", "https://a.example/"]) == 0
    (target, kwargs), = uvicorn_calls
    assert target == "mobile_sam.cli.serve:worker_app"
    assert kwargs["factory"] is True and kwargs["workers"] == 3
    config = json.loads(os.environ[serve_cli.WORKER_CONFIG_ENV])
    assert config["model"] == str(fixture_checkpoint)
    app = serve_cli.worker_app()
    assert app.state.limits["max_pixels"] == 1_000_000
    with TestClient(app) as client:
        preflight = client.options("/v1/images", headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
        miss = client.get("/v1/images/abc/embedding")  # e.g. uploaded through another worker
    assert preflight.headers["access-control-allow-origin"] == "https://a.example"
    assert miss.status_code == 404
    assert "upload it again with POST /v1/images" in miss.json()["detail"]
    assert "each server worker has its own cache" in miss.json()["detail"]


# ------------------------------------------------------------------------------ CORS, token


def preflight(client, origin: str, method: str = "POST", headers: str = ""):
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options("/v1/images", headers=request_headers)


def test_cors_allows_only_the_given_origins(tiny_sam):
    with TestClient(create_app(tiny_sam, cors_origins=["https://app.example"])) as client:
        allowed = preflight(client, "https://app.example", headers="authorization,content-type")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        refused = preflight(client, "https://evil.example")
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        health = client.get("/health", headers={"Origin": "https://evil.example"})
        assert health.status_code == 200
        assert "access-control-allow-origin" not in health.headers
        health = client.get("/health", headers={"Origin": "https://app.example"})
        assert health.headers["access-control-allow-origin"] == "https://app.example"
    with TestClient(create_app(tiny_sam)) as client:  # no origins: no CORS at all
        response = preflight(client, "https://app.example")
        assert response.status_code == 405
        assert "access-control-allow-origin" not in response.headers


def test_token_guards_the_api_only(tiny_sam):
    app = create_app(tiny_sam, token="s3cret", cors_origins=["https://app.example"])
    with TestClient(app) as client:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]:
            response = client.get("/v1/images/abc/embedding", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == 'Bearer realm="mobile-sam"'
            body = response.json()
            assert body["field"] == "Authorization"
            assert "send the header 'Authorization: Bearer <token>'" in body["detail"]
        good = {"Authorization": "Bearer s3cret"}
        response = client.get("/v1/images/abc/embedding", headers=good)
        assert response.status_code == 404  # through the guard: an unknown image
        for open_path in ["/health", "/", "/docs", "/openapi.json", "/static/app.js"]:
            assert client.get(open_path).status_code == 200, open_path
        # A browser's preflight carries no credentials; the 401 is readable cross-origin.
        assert preflight(client, "https://app.example", headers="authorization").status_code == 200
        denied = client.get("/v1/images/abc/embedding", headers={"Origin": "https://app.example"})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
    with pytest.raises(ValueError, match="token must be a non-empty printable string"):
        create_app(tiny_sam, token="")


# ------------------------------------------------------------------------------ Docker


@pytest.fixture
def fake_mobile_sam(tmp_path) -> dict[str, str]:
    """An environment whose `mobile-sam` prints its arguments and MOBILE_SAM_HOST."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mobile-sam"
    fake.write_text('#!/bin/sh\necho "host=$MOBILE_SAM_HOST token=${MOBILE_SAM_TOKEN:-} '
                    'args=$*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILE_SAM_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def run_entrypoint(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True,
                            text=True, timeout=30, check=True)
    return result.stdout.strip()


def test_entrypoint_serves_on_all_interfaces_and_passes_settings(fake_mobile_sam):
    env = fake_mobile_sam
    assert run_entrypoint(env) == "host=0.0.0.0 token= args=serve"
    assert run_entrypoint(env, "--workers", "2") == "host=0.0.0.0 token= args=serve --workers 2"
    assert run_entrypoint({**env, "MOBILE_SAM_HOST": "10.0.0.5", "MOBILE_SAM_TOKEN": "t"}) == \
        "host=10.0.0.5 token=t args=serve"
    assert run_entrypoint(env, "everything", "/data", "--out", "/data/out") == \
        "host=0.0.0.0 token= args=everything /data --out /data/out"
    assert run_entrypoint(env, "--print-command", "--port", "9000") == \
        "MOBILE_SAM_HOST=0.0.0.0 mobile-sam serve --port 9000"


def test_dockerfile_runs_as_a_user_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "\nUSER sam\n" in text
    assert "/health" in text.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["mobile-sam-entrypoint"]' in text
    assert "COPY docker/entrypoint.sh /usr/local/bin/mobile-sam-entrypoint" in text
    assert os.access(ENTRYPOINT, os.X_OK)
