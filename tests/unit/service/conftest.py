"""The service tests share the API tests' engine (one tiny torch variant and a small-queue one) and client."""

from tests.unit.api.conftest import client as client
from tests.unit.api.conftest import engine as engine
