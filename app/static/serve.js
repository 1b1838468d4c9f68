// The bsegn serve page: no framework, nothing fetched from elsewhere; every text from the server is set
// with textContent (a class name can hold any characters).
"use strict";
const $ = (id) => document.getElementById(id);
const timings = (window.bsegnTimings = []);
let model = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function call(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  return { ok: response.ok, status: response.status, body };
}

function bar(fraction, kind) {
  const outer = el("div", "bar " + (kind || ""));
  const inner = el("span");
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  outer.appendChild(inner);
  return outer;
}

function showModel(info) {
  model = info;
  $("state").textContent = "ready";
  $("state").className = "state ready";
  $("model-name").textContent = `${info.benchmark} · ${info.path_name}`;
  const facts = $("card-facts");
  facts.replaceChildren();
  const m = info.metrics || {};
  const metric = (k) => (typeof m[k] === "number" ? m[k].toFixed(1) : "–");
  const rows = [
    ["backbone", info.backbone ? info.backbone.model_name : "–"],
    ["input", (info.input_size || []).join("×")],
    ["benchmark", info.benchmark],
    ["T1 / U / S / H", `${metric("T1")} / ${metric("U")} / ${metric("S")} / ${metric("H")}` + (m.protocol ? ` (${m.protocol})` : "")],
    ["mode", `${info.mode}, gate ${info.gate.kind} (threshold ${Number(info.gate.threshold).toPrecision(3)})`],
  ];
  for (const [key, value] of rows) { facts.appendChild(el("dt", "", key)); facts.appendChild(el("dd", "", value)); }
  for (const which of ["seen", "unseen"]) {
    const list = $(which);
    list.replaceChildren();
    const classes = info.classes.filter((c) => c.seen === (which === "seen"));
    $(`${which}-count`).textContent = `(${classes.length})`;
    for (const c of classes) list.appendChild(el("li", c.added ? "added" : "", c.name + (c.added ? " (new)" : "")));
  }
  $("attr-names").textContent = (info.attribute_names || []).slice(0, 12).join(", ") +
    ((info.attribute_names || []).length > 12 ? ", …" : "") + ` (${info.semantic_dim} values)`;
  $("save-button").disabled = !info.saving;
  if (!info.saving) $("save-message").textContent = "Saving is off: start bsegn serve with --save-dir DIR.";
}

async function waitForModel() {
  for (;;) {
    const answer = await call("/model");
    if (answer.ok) return showModel(answer.body);
    if (answer.status !== 503) {
      $("state").textContent = answer.body.error;
      $("state").className = "state failed";
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function renderExplain(box, explain) {
  if (!explain) return;
  if (explain.note) { box.appendChild(el("div", "note", explain.note)); return; }
  const wrap = el("div", "explain");
  wrap.appendChild(el("div", "note", `attributes read from the image (purple) vs the class's own values (grey); cosine ${explain.cosine}`));
  const scale = Math.max(1e-6, ...explain.attributes_read.map((a) => Math.max(Math.abs(a.read), Math.abs(a.class_value))));
  for (const a of explain.attributes_read) {
    const row = el("div", "row explain-row");
    row.appendChild(el("span", "", a.attribute));
    const bars = el("div");
    bars.appendChild(bar(a.read / scale, "read"));
    bars.appendChild(bar(a.class_value / scale, "value"));
    row.appendChild(bars);
    row.appendChild(el("span", "", `${a.read.toFixed(2)} / ${a.class_value.toFixed(2)}`));
    wrap.appendChild(row);
  }
  box.appendChild(wrap);
}

function renderAnswer(box, result) {
  const best = result.top[0];
  const head = el("div", "answer");
  if (result.unknown) {  // the open-world rule: none of the model's classes; the classes below are the nearest
    head.appendChild(el("span", "top-class", "unknown"));
    head.appendChild(el("span", "badge unknown", "NONE OF THESE"));
  } else {
    head.appendChild(el("span", "top-class", best.class));
    head.appendChild(el("span", "badge " + (best.seen ? "seen" : "unseen"), best.seen ? "SEEN" : "UNSEEN"));
  }
  head.appendChild(el("span", "p-unseen", `p(unseen) ${(100 * result.p_unseen).toFixed(1)}%`));
  if (result.p_unknown !== undefined) {
    head.appendChild(el("span", "p-unseen", `p(unknown) ${(100 * result.p_unknown).toFixed(1)}%`));
  }
  box.appendChild(head);
  if (result.unknown) box.appendChild(el("p", "note", "none of the model's classes; the nearest:"));
  for (const t of result.top) {
    const row = el("div", "row");
    row.appendChild(el("span", "", t.class + (t.seen ? "" : " (unseen)")));
    row.appendChild(bar(t.probability, t.seen ? "" : "unseen"));
    row.appendChild(el("span", "", `${(100 * t.probability).toFixed(1)}%`));
    box.appendChild(row);
  }
  renderExplain(box, result.explain);
}

async function classify(file, started) {
  const card = el("div", "result");
  const thumb = el("img");
  thumb.alt = "";
  thumb.src = URL.createObjectURL(file);
  card.appendChild(thumb);
  const box = el("div", "body");
  box.appendChild(el("div", "name", file.name || "pasted image"));
  card.appendChild(box);
  $("results").prepend(card);
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  form.append("top_k", "5");
  form.append("explain", "1");
  let answer;
  try { answer = await call("/predict", { method: "POST", body: form }); }
  catch (e) { answer = { ok: false, body: { error: String(e) } }; }
  if (answer.ok) renderAnswer(box, answer.body);
  else box.appendChild(el("div", "error", answer.body.error));
  const ms = performance.now() - started;
  card.dataset.ms = ms.toFixed(1);
  card.classList.add(answer.ok ? "done" : "failed");
  box.appendChild(el("div", "timing", `answered in ${ms.toFixed(0)} ms`));
  timings.push(ms);
}

function take(files) {
  const started = performance.now();
  const images = Array.from(files || []).filter((f) => f && f.size !== undefined);
  images.forEach((file) => classify(file, started));
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
  for (const kind of ["dragenter", "dragover"]) drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); take(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []);
    if (files.length) { e.preventDefault(); take(files); }
  });
}

async function postJson(path, payload) {
  return call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
}

function setUpForms() {
  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const message = $("add-message");
    const csv = $("add-csv").files[0];
    const payload = csv ? { csv: await csv.text() } : { name: $("add-name").value.trim(), attributes: $("add-values").value };
    message.className = "message";
    message.textContent = "adding (refitting the classifier)…";
    const answer = await postJson("/classes", payload);
    if (answer.ok) {
      message.textContent = `added ${answer.body.added.join(", ")} (in memory; Save keeps it)`;
      showModel(answer.body.model);
      $("add-form").reset();
    } else {
      message.className = "message error";
      message.textContent = answer.body.error;
    }
  });
  $("save-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const message = $("save-message");
    const answer = await postJson("/save", { name: $("save-name").value.trim() });
    message.className = answer.ok ? "message" : "message error";
    message.textContent = answer.ok ? `saved as ${answer.body.saved} (${answer.body.classes} classes) in the save folder` : answer.body.error;
  });
}

setUpDrop();
setUpForms();
waitForModel();
