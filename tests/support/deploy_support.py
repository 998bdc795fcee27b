"""Helpers for tests of the files under deploy/."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules"


def dashboard_module() -> ModuleType:
    """deploy/grafana/dashboard.py is a script, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location("xnli_dashboard", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_files() -> list[Path]:
    return sorted(path for path in RULES.glob("*.yml") if path.name != "tests.yml")
