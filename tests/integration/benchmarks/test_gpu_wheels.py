"""The wheel set for the GPU machine: its closure against the image, and the check that runs there after installing."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_wheels
from benchmarks.gpu_wheels import IMAGE_PACKAGES, WHEELS, canonical, check, closure_problems, requirement_name

pytestmark = pytest.mark.integration


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A wheel file with only its METADATA: enough for what gpu_wheels reads without installing."""
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "\n".join(lines) + "\n\nbody\n")
    return path


def test_carried_wheels_are_exactly_what_the_image_lacks() -> None:
    carried = {requirement_name(requirement) for requirement in WHEELS}
    assert not carried & IMAGE_PACKAGES
    assert {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings", "orjson"} <= carried
    assert {"httptools", "torch", "transformers", "uvloop", "prometheus-client", "typer"} - carried == {
        "torch", "transformers", "uvloop", "prometheus-client", "typer"
    }  # fmt: skip
    assert all("==" in requirement for requirement in WHEELS)  # one pinned version each


@pytest.mark.parametrize(
    ("requires", "problem"),
    [
        (["beta>=1", "torch", "gamma; extra == 'speed'", "winreg-helper; sys_platform == 'win32'"], None),
        (["beta>=1", "delta (>=2)"], "alpha needs delta (>=2): neither carried nor in the image"),
        (["Beta_Two; python_version >= '3.8'"], "alpha needs Beta_Two"),
    ],
)
def test_closure_finds_what_neither_the_set_nor_the_image_has(
    requires: list[str], problem: str | None, tmp_path: Path
) -> None:
    wheels = [fake_wheel(tmp_path, "alpha", "1.0", requires), fake_wheel(tmp_path, "beta", "1.2", [])]
    problems = closure_problems(wheels, frozenset({"torch"}))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problems[0].startswith(problem)


def test_closure_refuses_two_versions_and_what_the_image_has(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    wheels = [
        fake_wheel(tmp_path, "alpha", "1.0", []),
        fake_wheel(tmp_path / "a", "alpha", "2.0", []),
        fake_wheel(tmp_path, "torch", "2.11.0", []),
    ]
    assert closure_problems(wheels, frozenset({"torch"})) == ["two wheels of alpha", "torch is in the image already"]


@pytest.mark.parametrize(
    ("requires", "message"),
    [
        (["starlette>=0.1", "typing-extensions; python_version >= '3.0'", "missing-thing; extra == 'x'"], None),
        (["starlette>=99"], "needs starlette>=99"),
        (["surely-not-installed-package"], "surely-not-installed-package: not installed"),
    ],
)
def test_check_reads_each_carried_wheels_requirements_against_what_is_installed(
    requires: list[str], message: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_wheel(tmp_path, "fastapi", "0.0.1", requires)  # installed here, at whatever version
    if message is None:
        check(tmp_path)
        assert "every module imports" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit, match=message):
            check(tmp_path)


def test_check_names_a_carried_wheel_that_is_not_installed(tmp_path: Path) -> None:
    fake_wheel(tmp_path, "not-installed-anywhere", "1.0", [])
    with pytest.raises(SystemExit, match="not-installed-anywhere is not installed"):
        check(tmp_path)


def test_names_compare_canonically() -> None:
    assert canonical("Pydantic_Core") == canonical("pydantic.core") == "pydantic-core"
    assert requirement_name("typing_extensions>=4.8; python_version < '3.13'") == "typing-extensions"
    assert gpu_wheels.needed("x; platform_system == 'Windows'") is False
    assert gpu_wheels.needed("x; python_version >= '3.9'") is True


def test_every_project_dependency_is_in_the_image_or_carried() -> None:
    import tomllib

    from tests.conftest import REPO_ROOT

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    carried = {requirement_name(requirement) for requirement in WHEELS}
    missing = [
        dependency
        for dependency in project["dependencies"]
        if requirement_name(dependency) not in IMAGE_PACKAGES | carried
    ]
    assert missing == [], "add these to benchmarks/gpu_wheels.py WHEELS (the GPU image lacks them)"
