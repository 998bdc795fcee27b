"""The service tests share the API tests' engine (one tiny torch variant and a small-queue one)."""

from tests.unit.api.conftest import engine as engine
