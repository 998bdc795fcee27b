"""Binary tensors and the model repository against a real server, driven by tritonclient with its defaults; and a live
swap: variants loaded, reloaded and unloaded under steady traffic, with no failed request and the memory given back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.api.binary_tensors import HEADER_LENGTH
from benchmarks.common import resident_mb
from tests.support.checkpoint_edits import perturbed_copy, relabelled_copy, shift_classifier_bias, widened_copy
from tests.support.helpers import ServerProcess, running_server, write_catalogue
from tests.support.triton_support import triton_inputs as tensors

pytestmark = pytest.mark.integration

# Written for these tests.
SCRIPTS = {
    "latin": ("Le boulanger a vendu tout son pain avant midi.", "Il ne reste plus de pain."),
    "greek": ("Τα παιδιά παίζουν στην παραλία.", "Τα παιδιά είναι στο σπίτι."),
    "hangul": ("도서관은 밤 열 시에 문을 닫는다.", "도서관은 밤새 열려 있다."),
    "thai": ("แมวนอนหลับอยู่บนโซฟา", "แมวกำลังวิ่งเล่นในสวน"),
}


@dataclass
class Repository:
    server: ServerProcess
    client: triton.InferenceServerClient
    catalogue: Path
    store: Path
    alpha: Path  # alpha's own checkpoint folder


@pytest.fixture(scope="module")
def repository(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    folder = tmp_path_factory.mktemp("repository")
    alpha = perturbed_copy(demo_store / "xlmr-mnli", folder / "alpha", (0.0, 0.0, 0.0))
    catalogue = write_catalogue(
        folder / "variants.toml",
        demo_store,
        [{"name": "alpha", "path": str(alpha)}, {"name": "beta", "checkpoint": "xlmr-squad-mnli"}],
    )
    with running_server(catalogue, folder) as server:
        client = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
        yield Repository(server, client, catalogue, demo_store, alpha)
        client.close()


@pytest.mark.parametrize("count", [1, 64])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_default_binary_tensors_equal_json(repository: Repository, script: str, count: int) -> None:
    premise, hypothesis = SCRIPTS[script]
    pairs = [(f"{premise} {index}", hypothesis) for index in range(count)]
    binary = repository.client.infer("beta", tensors(pairs))  # tritonclient's defaults: binary in and out
    assert all("data" not in output for output in binary.get_response()["outputs"])
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")]
    as_json = repository.client.infer("beta", tensors(pairs, binary=False), outputs=outputs)
    assert all("data" in output for output in as_json.get_response()["outputs"])
    np.testing.assert_allclose(binary.as_numpy("probabilities"), as_json.as_numpy("probabilities"), atol=1e-6)
    assert binary.as_numpy("probabilities").shape == (count, 3)
    assert [label.decode() for label in binary.as_numpy("label")] == list(as_json.as_numpy("label"))


def test_tritonclient_repository_calls(repository: Repository) -> None:
    client = repository.client
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert {name: entry["state"] for name, entry in index.items()} == {"alpha": "READY", "beta": "READY"}
    write_catalogue(
        repository.catalogue,
        repository.store,
        [
            {"name": "alpha", "path": str(repository.alpha)},
            {"name": "beta", "checkpoint": "xlmr-squad-mnli"},
            {"name": "gamma", "checkpoint": "xlmr-hellaswag-mnli"},
        ],
    )
    assert not client.is_model_ready("gamma")
    assert {entry["name"]: entry["state"] for entry in client.get_model_repository_index()}["gamma"] == "UNAVAILABLE"
    client.load_model("gamma")
    assert client.is_model_ready("gamma")
    assert client.infer("gamma", tensors([SCRIPTS["greek"]])).as_numpy("probabilities").shape == (1, 3)
    client.unload_model("gamma")
    assert not client.is_model_ready("gamma")
    assert {entry["name"]: entry["reason"] for entry in client.get_model_repository_index()}["gamma"] == "unloaded"
    assert client.is_model_ready("alpha")
    assert client.is_server_ready()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "bfloat16", "max_probability_diff": 0.0, "min_top1_agreement": 1.0}, "accuracy guard failed"),
        ({"path": "relabelled"}, "labels cannot be mapped by name"),
    ],
    ids=["accuracy-guard", "unmappable-labels"],
)
def test_a_failing_load_leaves_the_previous_state_serving(
    repository: Repository, tmp_path: Path, change: dict[str, str | float], message: str
) -> None:
    client = repository.client
    before = client.infer("alpha", tensors([SCRIPTS["hangul"]])).as_numpy("probabilities")
    entry: dict[str, object] = {"name": "alpha", "path": str(repository.alpha), **change}
    if change.get("path") == "relabelled":
        labels = {"0": "yes", "1": "maybe", "2": "no"}
        entry["path"] = str(relabelled_copy(repository.alpha, tmp_path / "relabelled", labels))
    write_catalogue(repository.catalogue, repository.store, [entry, {"name": "beta", "checkpoint": "xlmr-squad-mnli"}])
    with pytest.raises(InferenceServerException, match=message):
        client.load_model("alpha")
    assert client.is_model_ready("alpha")
    assert client.is_server_ready()
    after = client.infer("alpha", tensors([SCRIPTS["hangul"]])).as_numpy("probabilities")
    np.testing.assert_array_equal(after, before)
    reason = {entry["name"]: entry["reason"] for entry in client.get_model_repository_index()}["alpha"]
    assert "the last load failed, this version still serves" in reason
    assert message in reason


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    status: int
    probabilities: np.ndarray | None
    error: str = ""

    def matches(self, reference: np.ndarray) -> bool:
        return self.probabilities is not None and np.allclose(self.probabilities, reference, atol=1e-5)


TRAFFIC_PAIRS = [SCRIPTS["latin"], SCRIPTS["thai"]]
CLIENTS = 16


def steady_traffic(base_url: str, stop: threading.Event, answers: list[Answer]) -> None:
    """16 clients, each sending tritonclient's default binary request for alpha again as soon as it is answered."""
    body, header_length = triton.InferenceServerClient.generate_request_body(tensors(TRAFFIC_PAIRS))
    headers = {HEADER_LENGTH: str(header_length)}

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await http.post("/v2/models/alpha/infer", content=body, headers=headers)
            except httpx.HTTPError as error:
                answers.append(Answer(sent, time.monotonic(), 0, None, repr(error)))
                continue
            received = time.monotonic()
            if response.status_code != 200:
                answers.append(Answer(sent, received, response.status_code, None, response.text[:300]))
                continue
            result = triton.InferenceServerClient.parse_response_body(
                response.content, header_length=int(response.headers[HEADER_LENGTH])
            )
            answers.append(Answer(sent, received, 200, result.as_numpy("probabilities")))

    async def run() -> None:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
            await asyncio.gather(*(client(http) for _ in range(CLIENTS)))

    asyncio.run(run())


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_live_swap_under_steady_traffic(demo_store: Path, tmp_path: Path) -> None:
    """Load a new B from an edited catalogue, reload A with a changed checkpoint, unload B, while 16 clients call A."""
    alpha = perturbed_copy(demo_store / "xlmr-mnli", tmp_path / "alpha", (0.0, 0.0, 0.0))
    # B: the tiny network with a 1M-row embedding table served in bfloat16 (converted, so resident: ~128 MB).
    wide = widened_copy(demo_store / "xlmr-squad-mnli", tmp_path / "wide", vocab_size=1_000_000)
    small_batches = {"max_batch_size": 8, "max_batch_tokens": 512, "max_seq_len": 64}
    beta = {"name": "beta", "path": str(wide), "dtype": "bfloat16", "accuracy_guard": False, **small_batches}
    catalogue = write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "alpha", "path": str(alpha)}])
    with running_server(catalogue, tmp_path) as server:
        client = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
        old = client.infer("alpha", tensors(TRAFFIC_PAIRS)).as_numpy("probabilities")
        stop = threading.Event()
        answers: list[Answer] = []
        traffic = threading.Thread(target=steady_traffic, args=(server.base_url, stop, answers))
        traffic.start()
        try:
            time.sleep(1.0)
            rss_before = resident_mb(server.process.pid)
            write_catalogue(catalogue, demo_store, [{"name": "alpha", "path": str(alpha)}, beta])
            client.load_model("beta")
            assert client.is_model_ready("beta")
            rss_loaded = resident_mb(server.process.pid)
            time.sleep(0.5)
            shift_classifier_bias(alpha, (4.0, -4.0, 0.0))  # the checkpoint changes on disk under the server
            reload_started = time.monotonic()
            client.load_model("alpha")
            reload_finished = time.monotonic()
            time.sleep(0.5)
            client.unload_model("beta")
            assert not client.is_model_ready("beta")
            rss_after = resident_mb(server.process.pid)
            time.sleep(1.0)
        finally:
            stop.set()
            traffic.join(60)
        new = client.infer("alpha", tensors(TRAFFIC_PAIRS)).as_numpy("probabilities")
        client.close()

    failed = [answer for answer in answers if answer.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, first: {failed[0]}"
    assert not np.allclose(old, new, atol=1e-3)
    old_answers = [answer for answer in answers if answer.matches(old)]
    new_answers = [answer for answer in answers if answer.matches(new)]
    assert len(old_answers) + len(new_answers) == len(answers), "an answer from neither checkpoint"
    assert old_answers
    assert new_answers
    # One switch point: every old answer was asked for before any new answer arrived, within the reload call.
    last_old_sent = max(answer.sent for answer in old_answers)
    first_new_received = min(answer.received for answer in new_answers)
    assert last_old_sent < first_new_received
    assert reload_started < first_new_received
    assert last_old_sent < reload_finished
    # B's memory came and went: RSS back within 10% of its level before B was loaded.
    assert rss_loaded - rss_before > 64, (rss_before, rss_loaded)
    assert abs(rss_after - rss_before) <= 0.10 * rss_before, (rss_before, rss_loaded, rss_after)
    print(
        f"live swap: {len(answers)} requests from {CLIENTS} clients, 0 failed, {len(old_answers)} old then "
        f"{len(new_answers)} new answers (switch between {last_old_sent - reload_started:+.3f}s and "
        f"{first_new_received - reload_started:+.3f}s of the reload call, which took "
        f"{reload_finished - reload_started:.3f}s); RSS {rss_before:.0f} MB before B, {rss_loaded:.0f} MB with B, "
        f"{rss_after:.0f} MB after unloading B"
    )
