"""The service's web pages in a real headless Chromium against a real server: self-hosted API docs that render with
every non-loopback request blocked, and the playground (cards, pasted lines, scripts, markup as text, API keys)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from app.engine.tasks.nli import LABELS
from app.samples import sample_pairs
from tests.integration.browser.conftest import SCREENSHOT_DIR, VARIANTS, Browser
from tests.integration.conftest import API_KEY
from tests.support.helpers import ServerProcess

# Long end-to-end runs (the pages in Chromium): make test-slow (CI runs it after make test).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 30
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Sentences written for this project (app/demo/sample_pairs.tsv), one pair per language.
PAIRS = {language: (premise, hypothesis) for language, premise, hypothesis, _ in reversed(sample_pairs())}
XSS = "<img src=x onerror=alert(1)>"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def wait_for(browser: Browser, condition: Any, message: str) -> Any:
    return WebDriverWait(browser.driver, WAIT_S).until(lambda _: condition(), message)


def find(browser: Browser, selector: str) -> list[WebElement]:
    return browser.driver.find_elements(By.CSS_SELECTOR, selector)


def status_text(browser: Browser) -> str:
    return browser.driver.find_element(By.ID, "status").text


def open_playground(browser: Browser, server: ServerProcess, key: str | None = API_KEY) -> None:
    """GET / as a browser (redirected to the playground), then the key typed and applied."""
    browser.forget_logs()
    browser.driver.get(f"{server.base_url}/")
    assert browser.driver.current_url == f"{server.base_url}/playground"
    wait_for(browser, lambda: status_text(browser).split("…")[0] not in ("", "Loading variants"), "no variants")
    if key is not None:
        field = browser.driver.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key)
        browser.driver.find_element(By.ID, "api-key-apply").click()
        wait_for(browser, lambda: len(find(browser, "#variant-list input:checked")) == len(VARIANTS), "no variants")


def page_errors(browser: Browser) -> list[str]:
    """Console errors, less the 401 the page gets before its key is typed in (open_playground types it after)."""
    return [message for message in browser.severe_console() if "status of 401 (Unauthorized)" not in message]


def fill(browser: Browser, element_id: str, text: str) -> None:
    field = browser.driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def submit_pair(browser: Browser, premise: str, hypothesis: str) -> list[WebElement]:
    browser.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="single"]').click()
    fill(browser, "premise", premise)
    fill(browser, "hypothesis", hypothesis)
    browser.driver.execute_script("document.getElementById('results').replaceChildren()")
    browser.driver.find_element(By.ID, "single-submit").click()
    wait_for(browser, lambda: len(find(browser, "#results .card")) == len(VARIANTS), "no result cards")
    return find(browser, "#results .card")


def direction(browser: Browser, element: WebElement) -> str:
    value: str = browser.driver.execute_script("return getComputedStyle(arguments[0]).direction", element)
    return value


def predict(server: ServerProcess, variant: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    body = {
        "variant": variant,
        "inputs": [{"premise": premise, "hypothesis": hypothesis} for premise, hypothesis in pairs],
    }
    response = httpx.post(f"{server.base_url}/predict", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        pytest.param("/docs", '.opblock-post .opblock-summary-path[data-path="/predict"]', id="swagger-ui"),
        pytest.param("/redoc", '[data-section-id="tag/inference/operation/predict_predict_post"]', id="redoc"),
    ],
)
def test_docs_render_with_only_loopback_reachable(
    browser: Browser, keyed_server: ServerProcess, path: str, rendered: str
) -> None:
    browser.forget_logs()
    browser.driver.get(f"{keyed_server.base_url}{path}")
    wait_for(browser, lambda: any(element.is_displayed() for element in find(browser, rendered)), f"{path} is blank")
    assert "Classify premise/hypothesis pairs" in browser.driver.find_element(By.TAG_NAME, "body").text
    assert browser.foreign_requests() == []
    assert any("/static/docs/" in url for url in browser.urls()), browser.urls()
    # ReDoc's sidebar logo points at its vendor's CDN: /redoc's policy stops the browser from even asking.
    assert set(browser.blocked_by_policy()) <= {REDOC_LOGO}
    assert browser.severe_console() == []


def test_playground_asks_for_the_key(browser: Browser, keyed_server: ServerProcess) -> None:
    open_playground(browser, keyed_server, key=None)
    assert browser.driver.find_element(By.ID, "auth").is_displayed()
    assert "401" in status_text(browser)
    assert "needs an API key" in status_text(browser)
    assert find(browser, "#variant-list input") == []

    fill(browser, "api-key", "wrong-key")
    browser.driver.find_element(By.ID, "api-key-apply").click()
    wait_for(browser, lambda: "not accepted" in status_text(browser), "a wrong key was not reported")

    fill(browser, "api-key", API_KEY)
    browser.driver.find_element(By.ID, "api-key-apply").click()
    wait_for(
        browser, lambda: len(find(browser, "#variant-list input:checked")) == len(VARIANTS), "the key did not work"
    )
    assert [box.get_attribute("value") for box in find(browser, "#variant-list input:checked")] == list(VARIANTS)
    notice = browser.driver.find_element(By.ID, "demo-notice")
    assert notice.is_displayed()
    assert "untrained" in notice.text
    assert browser.foreign_requests() == []
    assert browser.blocked_by_policy() == []


def test_a_german_pair_shows_each_variants_answer(
    browser: Browser, keyed_server: ServerProcess, tmp_path: Path
) -> None:
    premise, hypothesis = PAIRS["de"]
    open_playground(browser, keyed_server)
    cards = submit_pair(browser, premise, hypothesis)

    assert [card.get_attribute("data-variant") for card in cards] == list(VARIANTS)
    for card in cards:
        (expected,) = predict(keyed_server, str(card.get_attribute("data-variant")), [(premise, hypothesis)])
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [bar.get_attribute("data-label") for bar in bars] == list(LABELS)
        shown = {str(bar.get_attribute("data-label")): float(str(bar.get_attribute("aria-valuenow"))) for bar in bars}
        assert shown == pytest.approx(expected["scores"], abs=1e-6)
        assert card.find_element(By.CSS_SELECTOR, ".label").get_attribute("data-label") == expected["label"]
        assert "untrained" in card.text
        timings = {
            str(cell.get_attribute("data-header")): cell.text for cell in card.find_elements(By.CSS_SELECTOR, "dd")
        }
        for header in ("X-Queue-Time", "X-Tokenization-Time", "X-Inference-Time", "X-Total-Time"):
            assert timings[header].endswith(" ms")
            assert float(timings[header].removesuffix(" ms")) >= 0
    assert browser.foreign_requests() == []
    assert browser.blocked_by_policy() == []
    assert page_errors(browser) == []

    screenshot = browser.screenshot(tmp_path / "playground.png")
    assert screenshot.stat().st_size > 10_000
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, SCREENSHOT_DIR / "playground.png")


def test_pasted_lines_in_three_scripts_make_a_table_per_variant(browser: Browser, keyed_server: ServerProcess) -> None:
    pairs = [PAIRS["fr"], PAIRS["ar"], PAIRS["zh"]]
    open_playground(browser, keyed_server)
    browser.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="batch"]').click()
    # A paste: the lines land in the box at once, tabs included (typing a tab would move the focus instead).
    browser.driver.execute_script(
        "const box = document.getElementById('batch'); box.value = arguments[0];"
        "box.dispatchEvent(new Event('input', {bubbles: true}));",
        "\n".join(f"{premise}\t{hypothesis}" for premise, hypothesis in pairs) + "\n",
    )
    browser.driver.find_element(By.ID, "batch-submit").click()
    wait_for(browser, lambda: len(find(browser, "#results .variant-table")) == len(VARIANTS), "no tables")

    expected = {variant: predict(keyed_server, variant, pairs) for variant in VARIANTS}
    disagree = [len({expected[variant][row]["label"] for variant in VARIANTS}) > 1 for row in range(len(pairs))]
    for table in find(browser, "#results .variant-table"):
        variant = str(table.get_attribute("data-variant"))
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 3
        for row, (premise, hypothesis), answer, differs in zip(rows, pairs, expected[variant], disagree, strict=True):
            cells = row.find_elements(By.TAG_NAME, "td")
            assert (cells[1].text, cells[2].text) == (premise, hypothesis)
            assert cells[3].get_attribute("data-label") == answer["label"]
            shown = [float(str(cell.get_attribute("data-value"))) for cell in cells[4:]]
            assert shown == pytest.approx([answer["scores"][label] for label in LABELS], abs=1e-6)
            assert row.get_attribute("data-disagree") == ("true" if differs else "false")
            assert ("disagree" in str(row.get_attribute("class"))) == differs
        assert [direction(browser, row.find_elements(By.TAG_NAME, "td")[1]) for row in rows] == ["ltr", "rtl", "ltr"]
    summary = browser.driver.find_element(By.CSS_SELECTOR, "#results .summary").text
    assert f"disagree on {sum(disagree)} of 3" in summary
    assert browser.foreign_requests() == []
    assert browser.blocked_by_policy() == []
    assert page_errors(browser) == []


@pytest.mark.parametrize("language", ["ar", "ur"])
def test_right_to_left_premise_renders_right_to_left(
    browser: Browser, keyed_server: ServerProcess, language: str
) -> None:
    premise, hypothesis = PAIRS[language]
    open_playground(browser, keyed_server)
    submit_pair(browser, premise, hypothesis)
    assert direction(browser, browser.driver.find_element(By.ID, "premise")) == "rtl"
    shown = browser.driver.find_element(By.CSS_SELECTOR, "#results .pair .premise")
    assert shown.text == premise
    assert direction(browser, shown) == "rtl"
    fill(browser, "premise", PAIRS["de"][0])
    assert direction(browser, browser.driver.find_element(By.ID, "premise")) == "ltr"


def test_markup_in_a_premise_is_shown_as_text(browser: Browser, keyed_server: ServerProcess) -> None:
    open_playground(browser, keyed_server)
    browser.driver.execute_script("window.__alerts = []; window.alert = (message) => window.__alerts.push(message);")
    submit_pair(browser, XSS, "Nothing runs.")
    assert browser.driver.find_element(By.CSS_SELECTOR, "#results .pair .premise").text == XSS
    assert find(browser, "#results img") == []
    with pytest.raises(NoAlertPresentException):
        _ = browser.driver.switch_to.alert.text
    assert browser.driver.execute_script("return window.__alerts") == []
    assert browser.foreign_requests() == []
    assert browser.blocked_by_policy() == []
    assert page_errors(browser) == []


def zero_shot(server: ServerProcess, variant: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.base_url}/variants/{variant}/zero-shot", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_zero_shot_mode_shows_a_bar_per_label_per_variant(
    browser: Browser, keyed_server: ServerProcess, multi_label: bool
) -> None:
    """issue #26: a Russian text and labels (written for this test), a template, one card per variant with a bar per
    label in the order and with the scores that /zero-shot answers."""
    text, labels, template = "Сборная выиграла матч в дополнительное время.", ["спорт", "политика", "погода"], "Это {}."
    open_playground(browser, keyed_server)
    browser.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="zero-shot"]').click()
    assert browser.driver.find_element(By.ID, "zero-shot-form").is_displayed()
    assert not browser.driver.find_element(By.ID, "single-form").is_displayed()
    fill(browser, "zs-text", text)
    fill(browser, "zs-labels", " , ".join(labels))
    fill(browser, "zs-template", template)
    if multi_label:
        browser.driver.find_element(By.ID, "zs-multi").click()
    browser.driver.find_element(By.ID, "zero-shot-submit").click()
    wait_for(browser, lambda: len(find(browser, "#results .card.zero-shot")) == len(VARIANTS), "no zero-shot cards")

    body = {"text": text, "candidate_labels": labels, "hypothesis_template": template, "multi_label": multi_label}
    for card in find(browser, "#results .card.zero-shot"):
        (expected,) = zero_shot(keyed_server, str(card.get_attribute("data-variant")), body)["results"]
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [bar.get_attribute("data-label") for bar in bars] == expected["labels"]
        shown = [float(str(bar.get_attribute("aria-valuenow"))) for bar in bars]
        assert shown == pytest.approx(expected["scores"], abs=1e-6)
        assert card.find_element(By.CSS_SELECTOR, ".label").text == expected["labels"][0]
        assert template in card.find_element(By.CSS_SELECTOR, ".template").text
        assert "untrained" in card.text
        assert float(card.find_element(By.CSS_SELECTOR, 'dd[data-header="X-Inference-Time"]').text[:-3]) >= 0
    if not multi_label:
        assert sum(shown) == pytest.approx(1.0, abs=1e-5)
    assert browser.foreign_requests() == []
    assert browser.blocked_by_policy() == []
    assert page_errors(browser) == []
