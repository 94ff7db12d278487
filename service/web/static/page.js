// The page at /: classify images in the browser through the service's public API, as any client
// does: GET /models for the choices, POST /classify with the image as the raw body (docs/serving.md).
"use strict";

const AUTO = "auto"; // the depth cascade's model name (docs/cascade.md)

// What the page adds to the plain classification: the API key it was given (sent with every
// request; kept for this tab only), the heatmap and the abstention verdict of an answer.
const KEY_STORAGE = "resnet-serve-api-key";
const hooks = {
  requestHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  },
  // Where the model looked: the top prediction's heatmap over the crop it saw, beside the thumbnail.
  showHeatmap(card, answer) {
    const heat = card.querySelector(".heat");
    const top = answer.predictions[0];
    const located = top && top.cam_png && top.cam && top.cam.located; // a 1x1 map shows no place
    heat.hidden = !located;
    if (located) {
      heat.querySelector("img").src = `data:image/png;base64,${top.cam_png}`;
      heat.querySelector("figcaption").textContent = `where ${answer.model} saw "${top.label}"`;
    }
  },
  // Every answer says whether to trust it (abstain=true): an abstained one is marked, with why.
  showAbstained(card, answer) {
    const note = card.querySelector(".abstained");
    note.hidden = answer.abstained !== true;
    card.dataset.abstained = String(answer.abstained === true);
    if (answer.abstained === true) {
      note.textContent = `Not sure: ${answer.abstention.reason}. The top guesses are shown anyway.`;
    }
  },
};

const $ = (selector) => document.querySelector(selector);
const modelSelect = $("#model");
const budget = $("#budget");
const items = []; // {file, card, run}: every image on the page, newest first

// A 401 asks for a key: the field appears, and a key given reloads the choices with it.
function askForKey(message) {
  $("#key-box").hidden = false;
  showServiceError(message);
}

$("#key-use").addEventListener("click", () => {
  const key = $("#api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  $("#service-error").hidden = true;
  loadModels();
});

// --- the choices: every served model by name and depth, and auto -------------------------------

const explains = new Map(); // model name -> what GET /models says it can explain ("cam", "embedding")
let rungNames = []; // the ladder auto climbs

// A heatmap is asked for only where every model that may answer can draw one (older files cannot).
function explainsMaps(choice) {
  const names = choice === AUTO ? rungNames : [choice || modelSelect.value];
  return names.length > 0 && names.every((name) => (explains.get(name) || []).includes("cam"));
}

async function loadModels() {
  let response, body;
  try {
    response = await fetch("/models", { headers: hooks.requestHeaders() });
    body = await response.json();
  } catch (error) {
    showServiceError(`Could not reach the service (${error.message}). Is resnet-serve running?`);
    return;
  }
  if (response.status === 401) {
    askForKey(errorText(response, body));
    return;
  }
  if (!response.ok) {
    showServiceError(errorText(response, body));
    return;
  }
  modelSelect.replaceChildren();
  const rungs = body.ladder || [];
  explains.clear();
  for (const model of body.models) explains.set(model.name, model.explains || []);
  rungNames = rungs.map((rung) => rung.name);
  const ladder = new Set(rungs.map((rung) => rung.name));
  const models = [...body.models].sort((a, b) => a.depth - b.depth || a.name.localeCompare(b.name));
  for (const model of models) {
    const option = new Option(`${model.name} (depth ${model.depth}${model.precision === "fp32" ? "" : `, ${model.precision}`})`, model.name);
    option.dataset.note = modelNote(model, ladder.has(model.name));
    option.selected = model.name === body.default_model;
    modelSelect.add(option);
  }
  if (rungs.length > 1 && body.auto) {
    const path = rungs.map((rung) => rung.name).join(" → ");
    const option = new Option(`auto (${path}: only as deep as needed)`, AUTO);
    option.dataset.note = body.auto.calibrated
      ? `escalates on ${body.auto.signal}, with thresholds calibrated by ${body.auto.calibration}`
      : `escalates on ${body.auto.signal} below the default thresholds (uncalibrated)`;
    modelSelect.add(option);
  }
  modelSelect.disabled = false;
  modelChanged();
}

function modelNote(model, inLadder) {
  const parts = [`${model.num_classes} classes`, model.providers[0].replace("ExecutionProvider", "")];
  if (model.val_top1 !== null) parts.push(`val top-1 ${model.val_top1.toFixed(1)}%`);
  if (!inLadder) parts.push("not in the auto ladder");
  return parts.join(" · ");
}

function modelChanged() {
  const option = modelSelect.selectedOptions[0];
  $("#model-note").textContent = option ? option.dataset.note || "" : "";
  $("#budget-box").hidden = modelSelect.value !== AUTO;
  for (const item of items) classify(item);
}

function budgetMs() {
  return Number(budget.value) < Number(budget.max) ? Number(budget.value) : null;
}

function budgetShown() {
  const ms = budgetMs();
  $("#budget-value").textContent = ms === null ? "no limit" : `${ms} ms`;
}

// --- images in: drop, file picker, paste, examples ----------------------------------------------

function addFiles(files) {
  const added = [...files];
  for (const file of added.reverse()) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    card.dataset.name = file.name;
    card.querySelector(".name").textContent = file.name;
    const img = card.querySelector(".thumb img");
    img.alt = file.name;
    img.addEventListener("error", () => {
      const note = document.createElement("span");
      note.className = "no-preview";
      note.textContent = "no preview";
      img.replaceWith(note);
    });
    img.src = URL.createObjectURL(file);
    $("#cards").prepend(card);
    const item = { file, card, run: 0 };
    items.unshift(item);
    classify(item);
  }
  $("#toolbar").hidden = items.length === 0;
}

function named(file, fallback) {
  // A pasted image arrives as "image.png" or with no name at all.
  return file.name ? file : new File([file], fallback, { type: file.type });
}

async function addExample(button) {
  const src = button.dataset.src;
  try {
    const response = await fetch(src);
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const blob = await response.blob();
    addFiles([new File([blob], src.split("/").pop(), { type: blob.type })]);
  } catch (error) {
    showServiceError(`Could not load the example ${src} (${error.message}).`);
  }
}

// --- one request per image: each card has its own answer, time and error ------------------------

async function classify(item) {
  const run = ++item.run; // a later run (another model chosen meanwhile) wins
  const { card } = item;
  const choice = modelSelect.disabled ? "" : modelSelect.value;
  const params = new URLSearchParams({ abstain: "true" });
  if (choice) params.set("model", choice);
  if (explainsMaps(choice)) {
    params.set("cam", "true");
    params.set("cam_png", "true");
  }
  if (choice === AUTO && budgetMs() !== null) params.set("budget_ms", String(budgetMs()));
  card.dataset.state = "busy";
  card.querySelector(".model").textContent = "";
  card.querySelector(".time").textContent = "classifying…";
  const headers = { "Content-Type": item.file.type || "application/octet-stream", ...hooks.requestHeaders() };
  const started = performance.now();
  let response, body;
  try {
    response = await fetch(`/classify?${params}`, { method: "POST", headers, body: item.file });
    body = await response.json().catch(() => null);
  } catch (error) {
    if (run === item.run) showCardError(item, `Could not reach the service (${error.message}).`);
    return;
  }
  const ms = performance.now() - started;
  if (run !== item.run) return;
  if (!response.ok || !body || !body.predictions) {
    showCardError(item, errorText(response, body), body && body.error);
    return;
  }
  showAnswer(card, body, ms);
}

function showAnswer(card, answer, ms) {
  card.querySelector(".error").hidden = true;
  card.querySelector(".model").textContent = answer.model;
  card.querySelector(".time").textContent = `answered in ${Math.round(ms)} ms`;
  card.querySelector(".time").dataset.ms = String(ms);
  const bars = card.querySelector(".bars");
  bars.replaceChildren(...answer.predictions.map(bar));
  const path = card.querySelector(".path");
  path.hidden = !answer.cascade;
  if (answer.cascade) showPath(path, answer.cascade);
  hooks.showHeatmap(card, answer);
  hooks.showAbstained(card, answer);
  card.dataset.state = "done";
}

function bar(prediction) {
  const row = document.createElement("li");
  row.className = "bar";
  row.dataset.label = prediction.label;
  row.dataset.probability = String(prediction.probability);
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = prediction.label;
  label.title = `${prediction.label} (${prediction.class_id})`;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${prediction.probability * 100}%`;
  track.append(fill);
  const pct = document.createElement("span");
  pct.className = "pct";
  pct.textContent = percent(prediction.probability);
  row.append(label, track, pct);
  return row;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function showPath(element, cascade) {
  // The rungs the image ran on, shallowest first; the last one answered (docs/cascade.md).
  const rungs = document.createElement("span");
  rungs.className = "rungs";
  rungs.textContent = cascade.path.join(" → ");
  const why = [];
  const answered = cascade.path[cascade.path.length - 1];
  const confidence = `${cascade.signal} ${cascade.confidence.toFixed(3)}`;
  if (cascade.path.length > 1) why.push(`${cascade.path.slice(0, -1).join(" and ")} unsure; ${answered}'s ${confidence}`);
  if (cascade.threshold === undefined) {
    if (cascade.path.length === 1) why.push(confidence);
  } else if (cascade.confidence < cascade.threshold) {
    why.push(`${confidence} < threshold ${cascade.threshold}`);
  } else if (cascade.path.length === 1) {
    why.push(`confident: ${confidence} ≥ threshold ${cascade.threshold}`);
  }
  if (cascade.escalation_skipped) why.push(`escalation skipped: ${cascade.escalation_skipped}`);
  if (cascade.calibrated === false) why.push("uncalibrated");
  element.replaceChildren("path: ", rungs, ` (${why.join("; ")})`);
  element.dataset.path = cascade.path.join(",");
}

// --- errors: the service's own message, never a stack trace or a blank -------------------------

function errorText(response, body) {
  if (body && body.error && body.error.message) return body.error.message;
  return `The service answered ${response.status} ${response.statusText || ""}`.trim();
}

function showCardError(item, message, error) {
  const { card } = item;
  card.querySelector(".model").textContent = "";
  card.querySelector(".time").textContent = "";
  card.querySelector(".bars").replaceChildren();
  card.querySelector(".path").hidden = true;
  const element = card.querySelector(".error");
  element.replaceChildren(message);
  if (error && error.code) {
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = ` (${error.status} ${error.code})`;
    element.append(code);
  }
  const retry = document.createElement("button");
  retry.type = "button";
  retry.className = "retry";
  retry.textContent = "Try again";
  retry.addEventListener("click", () => classify(item));
  element.append(" ", retry);
  element.hidden = false;
  card.dataset.state = "error";
}

function showServiceError(message) {
  const element = $("#service-error");
  element.textContent = message;
  element.hidden = false;
}

// --- wiring ---------------------------------------------------------------------------------

const drop = $("#drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
});
$("#files").addEventListener("change", (event) => {
  addFiles(event.target.files);
  event.target.value = ""; // the same file chosen again is a new image
});
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.files].map((file, i) => named(file, `pasted-${i + 1}.${(file.type.split("/")[1] || "bin")}`));
  if (files.length) {
    event.preventDefault();
    addFiles(files);
  }
});
for (const button of document.querySelectorAll(".example")) {
  button.addEventListener("click", () => addExample(button));
}
modelSelect.addEventListener("change", modelChanged);
budget.addEventListener("input", budgetShown);
budget.addEventListener("change", () => {
  if (modelSelect.value === AUTO) for (const item of items) classify(item);
});
$("#clear").addEventListener("click", () => {
  for (const item of items) URL.revokeObjectURL(item.card.querySelector(".thumb img")?.src);
  items.length = 0;
  $("#cards").replaceChildren();
  $("#toolbar").hidden = true;
});

budgetShown();
loadModels();
