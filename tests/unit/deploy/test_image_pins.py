"""The images install exactly what the lock files pin, with a torch that the installed transformers accepts."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
LOCKS = REPO_ROOT / "deploy" / "requirements"


def pins(lock: Path) -> dict[str, Version]:
    text = lock.read_text(encoding="utf-8")
    return {
        name.lower().replace("_", "-"): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)
    }


def transformers_minimum_torch() -> Version:
    from transformers.utils import import_utils

    source = inspect.getsource(import_utils.is_torch_available)
    found = re.search(r'parsed_version < version\.parse\("([\d.]+)"\)', source)
    assert found, "transformers changed how it checks torch's version: update this test"
    return Version(found.group(1))


def image_torch_versions() -> dict[str, Version]:
    cpu = re.search(r"^ARG TORCH_SPEC=torch==([\d.]+)$", DOCKERFILE, re.MULTILINE)
    assert cpu, "the CPU stage must pin TORCH_SPEC=torch==X.Y.Z"
    return {"cpu": Version(cpu.group(1)), "gpu": pins(LOCKS / "gpu.lock")["torch"]}


@pytest.mark.parametrize("image", ["cpu", "gpu"])
def test_image_torch_is_one_transformers_accepts(image: str) -> None:
    """transformers >= 5 silently disables torch < 2.6: an image with an older torch could load no model."""
    assert image_torch_versions()[image] >= transformers_minimum_torch()


def test_both_images_run_the_same_torch() -> None:
    versions = image_torch_versions()
    assert versions["cpu"] == versions["gpu"]
    assert "torch" not in pins(LOCKS / "cpu.lock")  # the CPU image takes torch from PyTorch's CPU index


@pytest.mark.parametrize("image", ["cpu", "gpu"])
def test_lock_satisfies_every_dependency(image: str) -> None:
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        dependencies = [Requirement(text) for text in tomllib.load(handle)["project"]["dependencies"]]
    pinned = pins(LOCKS / f"{image}.lock")
    for requirement in dependencies:
        name = requirement.name.lower().replace("_", "-")
        if name == "torch" and image == "cpu":
            continue
        assert name in pinned, f"{name} missing from {image}.lock: run sh deploy/requirements/lock.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{image}.lock pins {name}=={pinned[name]}, pyproject asks {requirement}: re-run the lock script"
        )
    text = (LOCKS / f"{image}.lock").read_text(encoding="utf-8")
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1]):
        assert "--hash=sha256:" in block, f"unhashed entry in {image}.lock: {block[:80]}"


def test_base_images_are_pinned_by_digest() -> None:
    images = re.findall(r"^ARG \w+_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert images
    assert all(re.search(r"@sha256:[0-9a-f]{64}$", image) for image in images), images
    assert DOCKERFILE.count("install.sh /opt/venv /src deps") == 2
    for lock in ("cpu.lock", "gpu.lock"):
        assert f"COPY deploy/requirements/{lock}" in DOCKERFILE
