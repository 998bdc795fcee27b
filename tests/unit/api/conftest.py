"""API behaviour in-process: the real app and engine over httpx's ASGI transport, no socket, no server process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from app.engine.engine import Engine
from app.engine.models.catalogue import load_catalogue
from app.settings import Settings
from tests.support.helpers import write_catalogue

API_KEY = "in-process-key-0123456789"


@pytest.fixture(scope="module")
def engine(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One tiny torch variant, loaded and warmed up once per module (the lifespan's job in a real server)."""
    catalogue = write_catalogue(
        tmp_path_factory.mktemp("catalogue") / "variants.toml",
        demo_store,
        [{"name": "xlmr-mnli"}, {"name": "small-queue", "max_queue_pairs": 8}],
    )
    loaded = Engine(load_catalogue(catalogue), tokenization_workers=1, torch_threads=1)
    loaded.preflight()
    loaded.load()
    yield loaded
    loaded.close()


def client_for(engine: Engine, **settings: Any) -> httpx.AsyncClient:
    app = create_app(Settings(**settings), engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as http:
        yield http


@pytest.fixture
async def keyed_client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, api_keys=API_KEY) as http:
        yield http
