"""Which protocol owns a path that no route matched (or that middleware answers before routing)."""

from __future__ import annotations

import pytest

from app.api.error_shapes import NATIVE, OIP, ErrorShape, Namespaces
from app.api.routes.open_inference import NAMESPACE


@pytest.mark.parametrize(
    ("path", "root_path", "shape"),
    [
        ("/v2", "", OIP),
        ("/v2/models/x/infer", "", OIP),
        ("/v2x", "", NATIVE),
        ("/predict", "", NATIVE),
        ("/", "", NATIVE),
        ("/nli/v2/models", "/nli", OIP),
        ("/nli/predict", "/nli", NATIVE),
    ],
)
def test_the_namespace_claims_its_paths(path: str, root_path: str, shape: ErrorShape) -> None:
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert Namespaces(NAMESPACE).shape_for(scope) is shape


def test_a_chosen_route_decides_over_the_path() -> None:
    scope = {"type": "http", "path": "/v2/models", "root_path": "", "route": object()}
    assert Namespaces(NAMESPACE).shape_for(scope) is NATIVE


@pytest.mark.parametrize(("shape", "body"), [(NATIVE, {"error": {"type": "t", "message": "m"}}), (OIP, {"error": "m"})])
def test_bodies(shape: ErrorShape, body: object) -> None:
    assert shape.body("t", "m") == body
