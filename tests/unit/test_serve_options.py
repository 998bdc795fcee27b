"""`xnli-serve serve`'s options reach the settings the server runs with, over the XNLI_SERVE_* environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--port", "8123", "--grpc-port", "9123"], {"port": 8123, "grpc_port": 9123}),
        (["--grpc-port", "9124"], {"port": 7000, "grpc_port": 9124}),  # the option over the environment
        ([], {"port": 7000, "grpc_port": 9000}),
    ],
)
def test_serve_options_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, demo_catalogue: Path, options: list[str], expected: dict[str, int]
) -> None:
    served: list[Settings] = []

    def run_server(settings: Settings, engine: Any, api_keys: Any = None) -> None:
        served.append(settings)
        engine.close()

    monkeypatch.setattr("app.api.server.run_server", run_server)
    monkeypatch.setattr("app.logs.configure_logging", lambda *args, **kwargs: None)
    environment = {
        "XNLI_SERVE_CATALOGUE": str(demo_catalogue),
        "XNLI_SERVE_PORT": "7000",
        "XNLI_SERVE_GRPC_PORT": "9000",
    }
    result = CliRunner().invoke(cli, ["serve", *options], env=environment)
    assert result.exit_code == 0, (result.output, result.exception)
    (settings,) = served
    assert {"port": settings.port, "grpc_port": settings.grpc_port} == expected
