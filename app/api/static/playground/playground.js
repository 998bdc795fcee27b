// xnli-serve playground: asks the selected variants the same premise/hypothesis pairs through the service's own API.
// User text and server text are only ever inserted as text (textContent, Text nodes), never parsed as HTML.
"use strict";

(() => {
  const LABELS = ["entailment", "neutral", "contradiction"];
  const TIMINGS = [
    ["X-Queue-Time", "queue"],
    ["X-Tokenization-Time", "tokenization"],
    ["X-Inference-Time", "inference"],
    ["X-Total-Time", "total in service"],
  ];
  const state = { variants: [] };
  const byId = (id) => document.getElementById(id);

  // Builds an element; children that are strings become Text nodes.
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function setStatus(message, isError = false) {
    const status = byId("status");
    status.textContent = message;
    status.classList.toggle("error", isError);
  }

  function showAuth() {
    byId("auth").hidden = false;
  }

  function requestHeaders(hasBody) {
    const headers = { Accept: "application/json" };
    if (hasBody) headers["Content-Type"] = "application/json";
    const key = byId("api-key").value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  function errorMessage(status, payload) {
    const error = payload && payload.error;
    const detail = error && typeof error === "object" ? error.message : error;
    if (status === 401) {
      const told = byId("api-key").value.trim() ? "The API key was not accepted" : "This service needs an API key";
      return `401 Unauthorized: ${told}; enter it in the API key field above.${detail ? ` (${detail})` : ""}`;
    }
    return `${status}: ${detail || "the request failed"}`;
  }

  // Relative paths, so the page works behind a path prefix too.
  async function call(method, path, body) {
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: requestHeaders(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      return { ok: false, status: 0, message: `could not reach the service (${error.message})` };
    }
    const roundTripMs = performance.now() - started;
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (response.status === 401) showAuth();
    if (!response.ok) return { ok: false, status: response.status, message: errorMessage(response.status, payload) };
    return { ok: true, status: response.status, payload, headers: response.headers, roundTripMs };
  }

  const predictPath = (name) => `variants/${encodeURIComponent(name)}/predict`;
  const variantInfo = (name) => state.variants.find((variant) => variant.name === name);
  const percent = (value) => `${(value * 100).toFixed(1)}%`;

  function untrainedBadge(name) {
    const info = variantInfo(name);
    if (!info || !(info.untrained || info.demo)) return null;
    return el("span", {
      class: "badge",
      text: "untrained demo weights",
      title: "Built by xnli-serve build-demo-store with random weights: its answers are noise.",
    });
  }

  function renderVariantList() {
    const list = byId("variant-list");
    list.replaceChildren();
    for (const variant of state.variants) {
      const ready = variant.status === "ready";
      const details = [variant.backend, variant.quantization !== "none" ? variant.quantization : null, variant.dtype]
        .filter(Boolean)
        .join(", ");
      const box = el("input", { type: "checkbox", name: "variant", value: variant.name, checked: ready, disabled: !ready });
      list.append(
        el(
          "label",
          { class: "variant-choice" },
          box,
          el("span", { class: "variant-name", text: variant.name }),
          untrainedBadge(variant.name),
          el("span", { class: "meta", text: ready ? details : `${variant.status}${variant.error ? `: ${variant.error}` : ""}` }),
        ),
      );
    }
    const untrained = state.variants.filter((variant) => variant.untrained || variant.demo).map((variant) => variant.name);
    const notice = byId("demo-notice");
    notice.hidden = untrained.length === 0;
    notice.textContent = untrained.length
      ? `Demo weights are untrained: ${untrained.join(", ")} ${untrained.length === 1 ? "was" : "were"} built by ` +
        "xnli-serve build-demo-store with random weights, so their labels and probabilities are noise. Put " +
        "fine-tuned checkpoints in the model store for real answers."
      : "";
  }

  async function loadVariants() {
    setStatus("Loading variants…");
    const result = await call("GET", "variants");
    if (!result.ok) {
      state.variants = [];
      renderVariantList();
      setStatus(result.message, true);
      return;
    }
    state.variants = result.payload.variants.filter((variant) => variant.enabled);
    renderVariantList();
    const ready = state.variants.filter((variant) => variant.status === "ready").length;
    setStatus(
      ready === state.variants.length
        ? `${ready} variants ready.`
        : `${ready} of ${state.variants.length} variants ready; reload the list once the others have loaded.`,
    );
  }

  function selectedVariants() {
    return [...document.querySelectorAll('#variant-list input[name="variant"]:checked')].map((box) => box.value);
  }

  function timingList(result) {
    const list = el("dl", { class: "timings" });
    for (const [header, name] of TIMINGS) {
      const value = result.headers.get(header);
      list.append(
        el("dt", { title: `${header} response header`, text: name }),
        el("dd", { "data-header": header, text: value === null ? "–" : `${value} ms` }),
      );
    }
    list.append(el("dt", { text: "round trip" }), el("dd", { text: `${result.roundTripMs.toFixed(1)} ms` }));
    return list;
  }

  // kind: the NLI label (its colour), or "topic" for a zero-shot candidate label (user text, never a class name).
  function bar(label, value, kind = label) {
    const fill = el("div", { class: "fill" });
    fill.style.width = percent(value);
    return el(
      "div",
      { class: `bar-row ${kind}` },
      el("span", { class: "bar-name", dir: "auto", text: label }),
      el(
        "div",
        {
          class: `bar ${kind}`,
          role: "meter",
          "aria-label": `${label} probability`,
          "aria-valuemin": 0,
          "aria-valuemax": 1,
          "aria-valuenow": value,
          "data-label": label,
          "data-value": String(value),
        },
        fill,
      ),
      el("span", { class: "bar-value", text: percent(value) }),
    );
  }

  function errorCard(name, message) {
    return el(
      "article",
      { class: "card failed", "data-variant": name },
      el("h3", { text: name }),
      el("p", { class: "error-message", role: "alert", text: message }),
    );
  }

  function resultCard(name, result) {
    if (!result.ok) return errorCard(name, result.message);
    const prediction = result.payload.predictions[0];
    return el(
      "article",
      { class: "card", "data-variant": name },
      el("h3", { text: name }),
      untrainedBadge(name),
      el("p", { class: `label ${prediction.label}`, "data-label": prediction.label, text: prediction.label }),
      el("div", { class: "bars" }, ...LABELS.map((label) => bar(label, prediction.scores[label]))),
      prediction.truncated ? el("p", { class: "note", text: "Truncated to the variant's max_seq_len." }) : null,
      timingList(result),
    );
  }

  function askAll(names, body) {
    return Promise.all(names.map((name) => call("POST", predictPath(name), body)));
  }

  function setBusy(busy) {
    for (const id of ["single-submit", "batch-submit", "zero-shot-submit"]) byId(id).disabled = busy;
  }

  function checkedNames() {
    const names = selectedVariants();
    if (names.length === 0) setStatus("Select at least one ready variant.", true);
    return names;
  }

  async function submitSingle(event) {
    event.preventDefault();
    const premise = byId("premise").value;
    const hypothesis = byId("hypothesis").value;
    if (!premise.trim() || !hypothesis.trim()) {
      setStatus("Enter a premise and a hypothesis.", true);
      return;
    }
    const names = checkedNames();
    if (names.length === 0) return;
    setBusy(true);
    setStatus(`Asking ${names.length} variant(s)…`);
    const results = await askAll(names, { premise, hypothesis });
    setBusy(false);
    const pair = el(
      "dl",
      { class: "pair" },
      el("dt", { text: "Premise" }),
      el("dd", { dir: "auto", class: "user-text premise", text: premise }),
      el("dt", { text: "Hypothesis" }),
      el("dd", { dir: "auto", class: "user-text hypothesis", text: hypothesis }),
    );
    const cards = el("div", { class: "cards" }, ...names.map((name, index) => resultCard(name, results[index])));
    byId("results").replaceChildren(pair, cards);
    const failed = results.filter((result) => !result.ok);
    setStatus(failed.length ? failed[0].message : `${names.length} variant(s) answered.`, failed.length > 0);
  }

  // Lines of "premise<TAB>hypothesis[<TAB>ignored…]"; blank lines are skipped.
  function parseLines(text) {
    const pairs = [];
    const problems = [];
    text.split(/\r?\n/).forEach((line, index) => {
      if (!line.trim()) return;
      const [premise, hypothesis] = line.split("\t");
      if (hypothesis === undefined) problems.push(`line ${index + 1} has no tab between premise and hypothesis`);
      else if (!premise.trim() || !hypothesis.trim()) problems.push(`line ${index + 1} has an empty premise or hypothesis`);
      else pairs.push({ premise, hypothesis });
    });
    return { pairs, problems };
  }

  function batchTable(name, result, pairs, disagreements) {
    if (!result.ok) return errorCard(name, result.message);
    const body = el("tbody");
    result.payload.predictions.forEach((prediction, index) => {
      const disagree = disagreements[index];
      body.append(
        el(
          "tr",
          { class: disagree ? "disagree" : null, "data-disagree": disagree ? "true" : "false" },
          el("td", { text: index + 1 }),
          el("td", { dir: "auto", class: "user-text", text: pairs[index].premise }),
          el("td", { dir: "auto", class: "user-text", text: pairs[index].hypothesis }),
          el(
            "td",
            { class: `label ${prediction.label}`, "data-label": prediction.label },
            prediction.label,
            disagree ? el("span", { class: "marker", title: "the variants disagree on this pair", text: " ≠" }) : null,
          ),
          ...LABELS.map((label) => el("td", { class: "number", "data-value": prediction.scores[label], text: percent(prediction.scores[label]) })),
        ),
      );
    });
    const head = el("tr", {}, ...["#", "premise", "hypothesis", "label", ...LABELS].map((title) => el("th", { scope: "col", text: title })));
    return el(
      "section",
      { class: "variant-table", "data-variant": name },
      el("h3", { text: name }),
      untrainedBadge(name),
      timingList(result),
      el("div", { class: "table-scroll" }, el("table", {}, el("thead", {}, head), body)),
    );
  }

  async function submitBatch(event) {
    event.preventDefault();
    const { pairs, problems } = parseLines(byId("batch").value);
    if (problems.length || pairs.length === 0) {
      setStatus(problems.length ? `Cannot read the lines: ${problems.join("; ")}.` : "Paste at least one line.", true);
      return;
    }
    const names = checkedNames();
    if (names.length === 0) return;
    setBusy(true);
    setStatus(`Asking ${names.length} variant(s) about ${pairs.length} pair(s)…`);
    const results = await askAll(names, { inputs: pairs });
    setBusy(false);
    const answered = results.filter((result) => result.ok);
    const disagreements = pairs.map(
      (_, index) => new Set(answered.map((result) => result.payload.predictions[index].label)).size > 1,
    );
    const count = disagreements.filter(Boolean).length;
    const summary = el("p", {
      class: "summary",
      text:
        answered.length > 1
          ? `The variants disagree on ${count} of ${pairs.length} pair(s)${count ? " (highlighted, marked ≠)" : ""}.`
          : `${pairs.length} pair(s).`,
    });
    const tables = names.map((name, index) => batchTable(name, results[index], pairs, disagreements));
    byId("results").replaceChildren(summary, ...tables);
    const failed = results.filter((result) => !result.ok);
    setStatus(failed.length ? failed[0].message : `${names.length} variant(s) answered.`, failed.length > 0);
  }

  // Zero-shot mode (issue #26): POST variants/{name}/zero-shot, one bar per candidate label, best first.
  const zeroShotPath = (name) => `variants/${encodeURIComponent(name)}/zero-shot`;
  // Commas of several scripts separate labels: Latin, Arabic (،), CJK full-width (，) and enumeration (、).
  const splitLabels = (text) => text.split(/[,،，、]/).map((label) => label.trim()).filter(Boolean);

  function zeroShotCard(name, result) {
    if (!result.ok) return errorCard(name, result.message);
    const answer = result.payload.results[0];
    return el(
      "article",
      { class: "card zero-shot", "data-variant": name },
      el("h3", { text: name }),
      untrainedBadge(name),
      el("p", { class: "label topic", dir: "auto", "data-label": answer.labels[0], text: answer.labels[0] }),
      el("div", { class: "bars" }, ...answer.labels.map((label, index) => bar(label, answer.scores[index], "topic"))),
      el("p", { class: "template", dir: "auto", text: `Template: ${result.payload.hypothesis_template}` }),
      answer.truncated ? el("p", { class: "note", text: "Truncated to the variant's max_seq_len." }) : null,
      timingList(result),
    );
  }

  async function submitZeroShot(event) {
    event.preventDefault();
    const text = byId("zs-text").value;
    const labels = splitLabels(byId("zs-labels").value);
    if (!text.trim() || labels.length === 0) {
      setStatus("Enter a text and at least one candidate label.", true);
      return;
    }
    const names = checkedNames();
    if (names.length === 0) return;
    const body = { text, candidate_labels: labels, multi_label: byId("zs-multi").checked };
    const template = byId("zs-template").value.trim();
    if (template) body.hypothesis_template = template;
    setBusy(true);
    setStatus(`Asking ${names.length} variant(s) about ${labels.length} label(s)…`);
    const results = await Promise.all(names.map((name) => call("POST", zeroShotPath(name), body)));
    setBusy(false);
    const asked = el(
      "dl",
      { class: "pair" },
      el("dt", { text: "Text" }),
      el("dd", { dir: "auto", class: "user-text zs-text", text }),
      el("dt", { text: "Candidate labels" }),
      el("dd", { dir: "auto", class: "user-text zs-labels", text: labels.join(", ") }),
    );
    const cards = el("div", { class: "cards" }, ...names.map((name, index) => zeroShotCard(name, results[index])));
    byId("results").replaceChildren(asked, cards);
    const failed = results.filter((result) => !result.ok);
    setStatus(failed.length ? failed[0].message : `${names.length} variant(s) answered.`, failed.length > 0);
  }

  function switchMode() {
    const mode = document.querySelector('input[name="mode"]:checked').value;
    byId("single-form").hidden = mode !== "single";
    byId("batch-form").hidden = mode !== "batch";
    byId("zero-shot-form").hidden = mode !== "zero-shot";
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.apiKeys === "on") showAuth();
    byId("single-form").addEventListener("submit", submitSingle);
    byId("batch-form").addEventListener("submit", submitBatch);
    byId("zero-shot-form").addEventListener("submit", submitZeroShot);
    byId("api-key-apply").addEventListener("click", loadVariants);
    byId("api-key").addEventListener("keydown", (event) => {
      if (event.key === "Enter") loadVariants();
    });
    byId("reload-variants").addEventListener("click", loadVariants);
    for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", switchMode);
    switchMode();
    loadVariants();
  });
})();
