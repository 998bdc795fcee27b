"""One definition of "a text with content" (app.service.texts) that the published schema, read with ECMAScript regex
semantics as every OpenAPI tool reads it, and the service's validators (/predict, /variants/{name}/predict, /v2 JSON
and binary tensors) apply identically to every white-space and control character of Unicode; and one length rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import regress

from app.service.texts import BLANK_CHARACTERS, CONTENT_PATTERN, MAX_TEXT_CHARS
from tests.support.triton_support import triton_inputs
from tests.unit.api.test_binary_tensors import post_triton

# The characters the issue names, and every other code point some engine treats as white space.
WALKED = sorted(
    {chr(code) for code in range(0x00, 0xA1)}
    | {chr(code) for code in (0x1680, 0x180E, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF)}
    | {chr(code) for code in range(0x2000, 0x200C)}
)


def schema_patterns(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every string property with a pattern in the published schema: (where, property)."""
    found = []
    for name, component in schema["components"]["schemas"].items():
        for field, spec in component.get("properties", {}).items():
            if "pattern" in spec:
                found.append((f"{name}.{field}", spec))
    return found


@pytest.fixture(scope="module")
def published_pattern() -> str:
    from app.api.app import create_app
    from app.settings import Settings

    class Unused:  # create_app only reads the engine when serving
        pass

    schema = create_app(Settings(), Unused()).openapi()  # type: ignore[arg-type]
    fields = schema_patterns(schema)
    # premise and hypothesis of /predict, and zero-shot's one text (issue #26; its lists' items publish it too)
    assert {where.split(".")[1] for where, _ in fields} == {"premise", "hypothesis", "text"}, fields
    patterns = {spec["pattern"] for _, spec in fields}
    lengths = {spec["maxLength"] for _, spec in fields}
    assert patterns == {CONTENT_PATTERN}, patterns  # every text field of every body publishes the one rule
    assert lengths == {MAX_TEXT_CHARS}
    return CONTENT_PATTERN


def test_the_blank_set_is_what_ecmascript_or_python_calls_white_space() -> None:
    ecmascript_space = regress.Regex(r"^\s$")
    every = (chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)
    white = {char for char in every if char.isspace() or ecmascript_space.find(char) is not None}
    assert white == BLANK_CHARACTERS


def ecmascript_says_valid(pattern: str, text: str) -> bool:
    return 1 <= len(text) <= MAX_TEXT_CHARS and regress.Regex(pattern).find(text) is not None


async def service_says_valid(client: httpx.AsyncClient, text: str) -> list[bool]:
    """Whether each protocol lets ``text`` through (as a premise, or a hypothesis on the per-variant route) or refuses
    it as input (422 / 400)."""
    verdicts = []
    answers = [
        await client.post("/predict", json={"premise": text, "hypothesis": "b"}),
        await client.post("/variants/xlmr-mnli/predict", json={"inputs": [{"premise": "a", "hypothesis": text}]}),
        await client.post(
            "/v2/models/xlmr-mnli/infer",
            json={
                "inputs": [
                    {"name": "premise", "shape": [1], "datatype": "BYTES", "data": [text]},
                    {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["b"]},
                ]
            },
        ),
    ]
    answers.append(await post_triton(client, triton_inputs([(text, "b")])))  # binary tensors
    for answer in answers:
        assert answer.status_code in (200, 400, 422), answer.text
        # A pair the text rule let through may still be too many tokens for the variant (a long hypothesis).
        verdicts.append(answer.status_code == 200 or "max_seq_len" in answer.text)
    return verdicts


@pytest.mark.parametrize("char", WALKED, ids=lambda char: f"U+{ord(char):04X}")
async def test_schema_and_service_agree(client: httpx.AsyncClient, published_pattern: str, char: str) -> None:
    for text in (char, char * 3):
        expected = ecmascript_says_valid(published_pattern, text)
        assert expected == (char not in BLANK_CHARACTERS)
        assert await service_says_valid(client, text) == [expected] * 4, repr(text)


@pytest.mark.parametrize(("length", "valid"), [(MAX_TEXT_CHARS, True), (MAX_TEXT_CHARS + 1, False)])
async def test_one_length_rule_for_every_protocol(client: httpx.AsyncClient, length: int, valid: bool) -> None:
    assert await service_says_valid(client, "a" * length) == [valid] * 4


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/predict", '{"premise": "a\\ud800b", "hypothesis": "b"}', 422, "unicode string"),
        ("/variants/xlmr-mnli/predict", '{"inputs": [{"premise": "a", "hypothesis": "\\udfff"}]}', 422, "unicode"),
        (
            "/v2/models/xlmr-mnli/infer",
            '{"inputs": [{"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["a\\ud800"]},'
            ' {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["b"]}]}',
            400,
            "hex escape",  # /v2 bodies are parsed by pydantic's own JSON reader, which refuses it already
        ),
    ],
)
async def test_a_lone_surrogate_is_refused_as_input(
    client: httpx.AsyncClient, path: str, body: str, status: int, says: str
) -> None:
    """JSON may escape half a UTF-16 pair, and Python's json keeps it; no tokenizer can read it (TypeError), so each
    protocol must refuse it as input before the engine sees it: the pattern check does, and /v2's JSON reader."""
    answer = await client.post(path, content=body.encode("ascii"), headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert says in answer.text
