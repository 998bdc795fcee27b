"""A classic XLM-R checkpoint (sentencepiece.bpe.model, pytorch_model.bin, no tokenizer.json) through
`xnli-serve serve`: it serves, and a broken tokenizer stops start-up with exit 2 and one message before the port opens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.checkpoint_layouts import SENTENCEPIECE_MODEL
from tests.support.helpers import free_port, running_server, server_command, write_catalogue

pytestmark = pytest.mark.integration


def refused_start(catalogue: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `xnli-serve serve` on a catalogue that must be refused before the port opens (exit code 2)."""
    result = subprocess.run(
        server_command("serve", "--port", str(free_port())),
        env={**os.environ, "XNLI_SERVE_CATALOGUE": str(catalogue), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    return result


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_classic_xlmr_layout_serves(checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoint_layouts["classic-xlmr"]
    catalogue = write_catalogue(
        tmp_path / "variants.toml", folder.parent, [{"name": "classic", "checkpoint": folder.name}]
    )
    with running_server(catalogue, tmp_path) as server:
        assert "variant classic: converted sentencepiece.bpe.model to a fast tokenizer" in server.logs()
        inputs = [
            {"premise": "Старый маяк стоит на скале.", "hypothesis": "The lighthouse is on a rock."},
            {"premise": "老灯塔在岩石上。", "hypothesis": "Ο φάρος είναι καινούργιος."},
        ]
        response = httpx.post(f"{server.base_url}/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 2
        for prediction in predictions:
            assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def truncate_sentencepiece_model(folder: Path) -> None:
    model = folder / SENTENCEPIECE_MODEL
    model.write_bytes(model.read_bytes()[:100])


def name_slow_only_tokenizer_class(folder: Path) -> None:
    shutil.copy(folder / SENTENCEPIECE_MODEL, folder / "spiece.model")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "BertGenerationTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.slow  # a long end-to-end run: make test-slow
@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param(
            truncate_sentencepiece_model,
            "sentencepiece.bpe.model is not a readable SentencePiece model",
            id="truncated-sentencepiece",
        ),
        pytest.param(
            name_slow_only_tokenizer_class,
            "loads only as a slow Python tokenizer (BertGenerationTokenizer)",
            id="slow-only",
        ),
    ],
)
def test_broken_tokenizer_stops_start_up(
    checkpoint_layouts: dict[str, Path], tmp_path: Path, breakage: Callable[[Path], None], message: str
) -> None:
    folder = tmp_path / "classic"
    shutil.copytree(checkpoint_layouts["classic-xlmr"], folder)
    breakage(folder)
    catalogue = write_catalogue(tmp_path / "variants.toml", tmp_path, [{"name": "classic", "checkpoint": "classic"}])
    result = refused_start(catalogue)
    assert result.stderr.startswith("xnli-serve: cannot start: variant 'classic': "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one message, no transformers warnings
