"""`xnli-serve evaluate` refuses what it cannot read or reach with one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.local_server import free_port


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("premise,hypothesis,label\nA dog runs.,An animal moves.,entailment\n", "not a format this reads; expected"),
        ('{"premise": "Es schneit.", "hypothesis": "Es ist kalt.", "label": 7}\n', "label 7 is not 0, 1 or 2"),
    ],
)
def test_unreadable_data_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "de.csv" if content.startswith("premise") else tmp_path / "de.jsonl"
    data.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.sockets
def test_unreachable_service_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "de.jsonl"
    data.write_text('{"premise": "Es schneit.", "hypothesis": "Es ist kalt.", "label": 1}\n', encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--url", url, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"cannot reach {url}" in result.output
