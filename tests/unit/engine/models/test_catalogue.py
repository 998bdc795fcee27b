from __future__ import annotations

from pathlib import Path

import pytest

from app.demo.build_store import DEMO_DEPLOYMENTS, DEMO_LINEUP
from app.engine.models.catalogue import CatalogueError, load_catalogue, runtime_label
from tests.conftest import REPO_ROOT

VALID_VARIANT = """
[[variant]]
name = "first"
path = "first"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "variants.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_catalogue_lists_the_demo_lineup() -> None:
    catalogue = load_catalogue(REPO_ROOT / "model_store" / "variants.toml")
    assert [variant.name for variant in catalogue.variants] == [variant.name for variant in DEMO_LINEUP] + [
        deployment.name for deployment in DEMO_DEPLOYMENTS
    ]
    assert catalogue.default_variant == "xlmr-mnli"
    assert {variant.intermediate_task for variant in catalogue.variants} == {"none", "squad", "hellaswag", "multitask"}
    ways = {(variant.path.name, variant.backend, variant.quantization) for variant in catalogue.variants}
    assert {("xlmr-mnli", "torch", "none"), ("xlmr-mnli", "onnxruntime", "none")} <= ways
    assert ("xlmr-mnli", "onnxruntime", "int8-dynamic") in ways  # one checkpoint, three ways to run it


def test_backend_and_guard_defaults(tmp_path: Path) -> None:
    (variant,) = load_catalogue(write(tmp_path, VALID_VARIANT)).variants
    assert (variant.backend, variant.quantization, variant.accuracy_guard) == ("torch", "none", True)
    assert (variant.min_top1_agreement, variant.max_probability_diff) == (0.95, 0.10)


def test_defaults_are_inherited_and_overridden(tmp_path: Path) -> None:
    catalogue = load_catalogue(
        write(
            tmp_path,
            """
default_variant = "second"
[defaults]
max_batch_size = 16
dtype = "bfloat16"
[[variant]]
name = "first"
path = "first"
[[variant]]
name = "second"
path = "/abs/second"
max_batch_size = 4
max_wait_ms = 2.5
intermediate_task = "squad"
""",
        )
    )
    first, second = catalogue.variants
    assert (first.max_batch_size, first.dtype, first.max_wait_ms) == (16, "bfloat16", 0.0)
    assert (second.max_batch_size, second.dtype, second.max_wait_ms) == (4, "bfloat16", 2.5)
    assert first.path == (tmp_path / "first").resolve()
    assert second.path == Path("/abs/second")
    assert catalogue.default_variant == "second"


def test_default_variant_falls_back_to_first_enabled(tmp_path: Path) -> None:
    text = VALID_VARIANT.replace("first", "off") + "enabled = false\n" + VALID_VARIANT
    assert load_catalogue(write(tmp_path, text)).default_variant == "first"


def test_subset_keeps_only_named_variants(tmp_path: Path) -> None:
    text = VALID_VARIANT + VALID_VARIANT.replace("first", "second")
    catalogue = load_catalogue(write(tmp_path, 'default_variant = "first"\n' + text), only=["second"])
    assert [variant.name for variant in catalogue.variants] == ["second"]
    assert catalogue.default_variant == "second"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not = [valid", "not valid TOML"),
        ("unexpected = 1\n" + VALID_VARIANT, "unknown top-level keys ['unexpected']"),
        ("[defaults]\nmax_batch_size = 0\n" + VALID_VARIANT, "[defaults]: max_batch_size"),
        ("", "no [[variant]] tables"),
        (VALID_VARIANT + "max_batchsize = 8\n", "variant 'first': max_batchsize: Extra inputs are not permitted"),
        (VALID_VARIANT + 'device = "tpu"\n', "variant 'first': device"),
        (VALID_VARIANT + 'dtype = "int4"\n', "variant 'first': dtype"),
        (VALID_VARIANT + "max_seq_len = 512\nmax_batch_tokens = 256\n", "must hold one sequence of max_seq_len 512"),
        ('[[variant]]\nname = "bad name!"\npath = "x"\n', "variant 'bad name!': name"),
        ('[[variant]]\npath = "x"\n', "variant #1: name: Field required"),
        ('[[variant]]\nname = "nopath"\n', "variant 'nopath': path: Field required"),
        (VALID_VARIANT + VALID_VARIANT, "repeated: ['first']"),
        (VALID_VARIANT + "enabled = false\n", "no enabled variant"),
        ('default_variant = "ghost"\n' + VALID_VARIANT, "default_variant 'ghost' is not an enabled variant"),
        (VALID_VARIANT + 'backend = "tensorflow"\n', "variant 'first': backend"),
        (VALID_VARIANT + 'quantization = "int4"\n', "variant 'first': quantization"),
        (VALID_VARIANT + 'quantization = "int8-dynamic"\n', "needs backend = 'onnxruntime'"),
        (
            VALID_VARIANT + 'backend = "onnxruntime"\nquantization = "int8-dynamic"\ndevice = "cuda"\n',
            "runs on CPU only",
        ),
        (
            VALID_VARIANT + 'backend = "onnxruntime"\ndtype = "float16"\n',
            "dtype 'float16' is offered by backend 'torch'",
        ),
        (VALID_VARIANT + "min_top1_agreement = 1.5\n", "variant 'first': min_top1_agreement"),
    ],
)
def test_bad_catalogue_fails_with_one_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    message = str(raised.value)
    assert message.startswith(f"catalogue {path}: ")
    assert expected in message


def test_missing_catalogue_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="file not found"):
        load_catalogue(tmp_path / "absent.toml")


def test_subset_naming_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"XNLI_SERVE_VARIANTS names unknown variants \['ghost'\]"):
        load_catalogue(write(tmp_path, VALID_VARIANT), only=["ghost"])


@pytest.mark.parametrize(
    ("metadata", "label"),
    [
        ({"backend": "torch", "quantization": "none", "dtype": "bfloat16"}, "torch bfloat16"),
        ({"backend": "onnxruntime", "quantization": "none", "dtype": "float32"}, "onnxruntime float32"),
        ({"backend": "onnxruntime", "quantization": "int8-dynamic", "dtype": "float32"}, "onnxruntime int8-dynamic"),
        ({"dtype": "float16"}, "torch float16"),  # metadata from a server older than backends
    ],
)
def test_runtime_label_tells_reports_how_a_variant_computes(metadata: dict[str, str], label: str) -> None:
    assert runtime_label(metadata) == label
