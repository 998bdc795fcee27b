"""The container image's install and entry point, run in a fresh venv exactly as the Dockerfile runs them
(no Docker engine on these machines; hadolint lints the Dockerfile itself in `make lint`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.support.helpers import ServerProcess, free_port

pytestmark = pytest.mark.integration

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
INSTALL = REPO_ROOT / "deploy" / "docker" / "install.sh"


def test_dockerfile_uses_the_install_script_and_runs_the_service() -> None:
    for target in ("cpu", "gpu"):
        assert re.search(rf"^FROM \S+ AS {target}$", DOCKERFILE, re.MULTILINE), target
    assert DOCKERFILE.count("install.sh /opt/venv /src deps") == 2
    assert DOCKERFILE.count("install.sh /opt/venv /src app") == 2
    assert DOCKERFILE.count('ENTRYPOINT ["xnli-serve", "serve"]') == 2
    assert DOCKERFILE.count("USER 10001:10001") == 2
    for instruction in ("EXPOSE 8000", "STOPSIGNAL SIGTERM", 'VOLUME ["/models"]', "HEALTHCHECK"):
        assert instruction in DOCKERFILE


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image") / "venv"
    for step in ("deps", "app"):
        subprocess.run(["sh", str(INSTALL), str(venv), str(REPO_ROOT), step], check=True, timeout=900)
    return venv


@pytest.fixture(scope="module")
def image_server(image_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("models")
    subprocess.run([str(image_venv / "bin" / "xnli-serve"), "build-demo-store", "--out", str(models)], check=True)
    port = free_port()
    env = {  # the image's ENV, with loopback instead of 0.0.0.0
        "PATH": f"{image_venv / 'bin'}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "XNLI_SERVE_HOST": "127.0.0.1",
        "XNLI_SERVE_PORT": str(port),
        "XNLI_SERVE_GRPC_PORT": str(free_port()),  # gRPC (issue #26): never the shared default 8001
        "XNLI_SERVE_CATALOGUE": str(models / "variants.toml"),
        "HOME": str(models),
    }
    log = models / "server.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(["xnli-serve", "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd="/")
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready()
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow  # a clean venv's install: `make test-slow` (CI runs it after `make test`)
def test_installed_entry_point_serves(image_venv: Path, image_server: ServerProcess) -> None:
    assert str(image_venv) in subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", "import app, sys; print(app.__file__)"],
        capture_output=True, text=True, check=True, cwd="/",  # not the checkout: the installed package
    ).stdout  # fmt: skip
    response = httpx.post(
        f"{image_server.base_url}/predict", json={"premise": "Il pleut.", "hypothesis": "Il fait beau."}
    )
    assert response.status_code == 200
    health = re.search(r'CMD \["python", "-c", "(.+)"\]', DOCKERFILE)
    assert health is not None
    command = health.group(1).replace("http://127.0.0.1:8000", image_server.base_url)
    subprocess.run([str(image_venv / "bin" / "python"), "-c", command], check=True, timeout=10)


@pytest.mark.slow
def test_sigterm_exits_zero(image_server: ServerProcess) -> None:
    image_server.process.terminate()
    assert image_server.process.wait(timeout=40) == 0
