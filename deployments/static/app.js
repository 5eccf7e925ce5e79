// The try-it page: no build step, no CDN. Talks to /v1/classifiers, /v1/classify and, for
// several files at once, /v1/classify/batch.
"use strict";

const $ = (id) => document.getElementById(id);
let chosenFile = null;
let chosenFiles = [];  // two or more files: classified together in one batch request
let shownFaces = 0;  // bumped on each new preview or answer: a late image load draws only the latest faces

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

async function readJson(response) {
  // Error bodies from Serve's proxy or a reverse proxy may not be JSON: keep status and text.
  try { return await response.json(); }
  catch { return { error: { code: `http_${response.status}`, message: response.statusText || "not JSON" } }; }
}

function clearFaceBoxes() {
  shownFaces += 1;
  $("face-boxes").replaceChildren();
}

function clearPreview() {
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  clearFaceBoxes();
  img.removeAttribute("src");
  img.hidden = true;
  $("preview-wrap").hidden = true;
  $("drop-text").textContent = "Drop an image here, or";
}

function isHttpUrl(text) {
  try { return ["http:", "https:"].includes(new URL(text).protocol); } catch { return false; }
}

function showPreview(src) {
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  clearFaceBoxes();
  img.src = src;
  img.alt = "The image that will be classified";
  img.hidden = false;
  $("preview-wrap").hidden = false;
  $("drop-text").textContent = "Drop another image, or";
}

function pickFiles(files) {
  files = [...(files || [])];
  if (!files.length) return;
  $("url").value = "";
  if (files.length === 1) {
    chosenFile = files[0];
    chosenFiles = [];
    showPreview(URL.createObjectURL(files[0]));
    return;
  }
  chosenFile = null;
  chosenFiles = files;
  clearPreview();
  const names = files.slice(0, 3).map((f) => f.name).join(", ") + (files.length > 3 ? ", …" : "");
  $("drop-text").textContent = `${files.length} images chosen (${names}). Drop others, or`;
}

// Sent as "Authorization: Bearer <key>" when the service has API keys; kept only in the page.
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadClassifiers() {
  const box = $("classifiers");
  try {
    const response = await fetch("/v1/classifiers", { headers: authHeaders() });
    const body = await readJson(response);
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    box.replaceChildren(...body.classifiers.map((c) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      Object.assign(input, { type: "checkbox", name: "classifier", value: c.name, checked: true });
      label.append(input, document.createTextNode(c.name.replace("_", " ")));
      label.title = c.description;
      return label;
    }));
  } catch (err) {
    box.replaceChildren(Object.assign(document.createElement("p"),
      { className: "error", textContent: `Could not load classifiers: ${err.message}` }));
  }
}

function bar(label, score, unsafe) {
  const row = document.createElement("div");
  row.className = "bar";
  row.setAttribute("role", "listitem");
  const name = Object.assign(document.createElement("span"), { className: "label", textContent: label });
  const track = Object.assign(document.createElement("span"), { className: "track" });
  const fill = Object.assign(document.createElement("span"), { className: unsafe ? "fill unsafe" : "fill" });
  fill.style.width = `${(score * 100).toFixed(1)}%`;
  track.append(fill);
  const value = Object.assign(document.createElement("span"), { className: "value", textContent: score.toFixed(3) });
  row.setAttribute("aria-label", `${label}: ${score.toFixed(3)}${unsafe ? " (unsafe label)" : ""}`);
  row.append(name, track, value);
  return row;
}

function card(result) {
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.classifier = result.name;
  const title = document.createElement("h3");
  const badge = Object.assign(document.createElement("span"), {
    className: `badge ${result.flagged ? "flagged" : "clear"}`,
    textContent: result.flagged ? "FLAGGED" : "not flagged",
  });
  title.append(document.createTextNode(result.name.replace("_", " ")), badge);
  const verdict = Object.assign(document.createElement("p"), { className: "verdict" });
  verdict.textContent = `Top: ${result.top_label} (${result.top_score.toFixed(3)})` +
    (result.unsafe_labels.length ? ` · unsafe score ${result.unsafe_score.toFixed(3)} vs threshold ${result.threshold}`
                                 : ` · threshold ${result.threshold}, no unsafe labels`);
  const list = document.createElement("div");
  list.setAttribute("role", "list");
  Object.entries(result.scores).sort((a, b) => b[1] - a[1])
    .forEach(([label, score]) => list.append(bar(label, score, result.unsafe_labels.includes(label))));
  el.append(title, verdict, list);
  return el;
}

// Face boxes over the preview, as percentages of the image's natural size: they follow the
// preview when the page is resized. The service's boxes are in the upright image's pixels (EXIF
// orientation applied), which is what naturalWidth/naturalHeight report with the default
// `image-orientation: from-image`.
function drawFaceBoxes(faces) {
  clearFaceBoxes();
  const token = shownFaces;
  const img = $("preview");
  const draw = () => {
    if (token !== shownFaces || !img.naturalWidth || !img.naturalHeight) return;
    const w = img.naturalWidth, h = img.naturalHeight;
    const pct = (v, of) => `${Math.min(100, Math.max(0, (v / of) * 100)).toFixed(3)}%`;
    $("face-boxes").replaceChildren(...faces.map((face, i) => {
      const [x, y, bw, bh] = face.box;
      const box = Object.assign(document.createElement("div"), { className: "face-box" });
      Object.assign(box.style, { left: pct(x, w), top: pct(y, h), width: pct(bw, w), height: pct(bh, h) });
      box.dataset.face = String(i + 1);
      box.title = `Face ${i + 1}: confidence ${face.confidence.toFixed(3)}`;
      box.append(Object.assign(document.createElement("span"), { className: "face-num", textContent: String(i + 1) }));
      return box;
    }));
  };
  if (!faces.length || img.hidden) return;
  if (img.complete && img.naturalWidth) draw();
  else img.addEventListener("load", draw, { once: true });
}

function facesCard(faces) {
  // Each face the service found (largest first): its number on the preview, box, confidence, attributes.
  const el = document.createElement("article");
  el.className = "card faces";
  const title = document.createElement("h3");
  const badge = Object.assign(document.createElement("span"), {
    className: "badge neutral",
    textContent: faces.length === 1 ? "1 face" : `${faces.length} faces`,
  });
  title.append(document.createTextNode("faces"), badge);
  el.append(title);
  if (!faces.length) {
    el.append(Object.assign(document.createElement("p"), { className: "verdict", textContent: "No faces found" }));
    return el;
  }
  faces.forEach((face, i) => {
    const section = document.createElement("section");
    section.className = "face";
    section.dataset.face = String(i + 1);
    const heading = Object.assign(document.createElement("h4"), { textContent: `Face ${i + 1}` });
    const [x, y, w, h] = face.box;
    const verdict = Object.assign(document.createElement("p"), {
      className: "verdict",
      textContent: `box x ${x}, y ${y}, ${w}×${h} px · confidence ${face.confidence.toFixed(3)}`,
    });
    const list = document.createElement("div");
    list.setAttribute("role", "list");
    Object.entries(face.attributes || {})
      .forEach(([name, score]) => list.append(bar(name.replaceAll("_", " "), score, false)));
    section.append(heading, verdict, list);
    el.append(section);
  });
  return el;
}

function actionText(body) {
  // Where the action came from: a hash bank and/or the configured policies that held.
  const parts = [];
  const policies = body.policies || [];
  if (body.action && (body.matches || []).some((m) => m.action === body.action)) parts.push(`hash bank: ${body.action}`);
  policies.forEach((p) => parts.push(`policy ${p.name}: ${p.action}`));
  if (body.action && !parts.length) parts.push(`action: ${body.action}`);
  return parts.length ? ` (${parts.join("; ")})` : "";
}

function matchesCard(body) {
  // The hash-bank entries the image matched (docs/banks.md): the bank, its action, how near.
  const el = document.createElement("article");
  el.className = "card banks";
  const title = document.createElement("h3");
  const badge = Object.assign(document.createElement("span"), {
    className: `badge ${body.action === "allow" ? "clear" : "flagged"}`,
    textContent: body.action.toUpperCase(),
  });
  title.append(document.createTextNode("known image"), badge);
  const list = document.createElement("ul");
  body.matches.forEach((m) => {
    const item = document.createElement("li");
    item.textContent = `${m.bank} (${m.action}): ${m.kind === "pdq" ? `PDQ ${m.distance} bits apart` : "same SHA-256"}` +
      (m.entry_id ? ` · entry ${m.entry_id}` : "");
    list.append(item);
  });
  el.append(title, list);
  return el;
}

function batchTable(body) {
  // One row per image, in the order sent: its decision, or its own error (one bad image never
  // fails the others), and each classifier's top label.
  const names = [...new Set(body.items.flatMap((item) => Object.keys(item.results || {})))];
  const table = Object.assign(document.createElement("table"), { className: "batch", id: "batch" });
  const head = table.createTHead().insertRow();
  ["#", "image", "decision", ...names.map((n) => n.replace("_", " "))].forEach((text) =>
    head.append(Object.assign(document.createElement("th"), { scope: "col", textContent: text })));
  const rows = table.createTBody();
  body.items.forEach((item) => {
    const row = rows.insertRow();
    row.dataset.index = String(item.index);
    row.insertCell().textContent = String(item.index + 1);
    row.insertCell().textContent = item.id || "";
    const decision = row.insertCell();
    if (item.error) {
      row.className = "error-row";
      decision.textContent = `Error ${item.error.status} ${item.error.code}: ${item.error.message}`;
      decision.colSpan = names.length + 1;
      return;
    }
    decision.append(Object.assign(document.createElement("span"), {
      className: `badge ${item.flagged ? "flagged" : "clear"}`,
      textContent: (item.flagged ? "FLAGGED" : "not flagged") + (item.action ? ` · ${item.action}` : ""),
    }));
    names.forEach((name) => {
      const result = item.results[name];
      const cell = row.insertCell();
      if (!result) return;
      cell.textContent = `${result.top_label} ${result.top_score.toFixed(3)}`;
      if (result.flagged) cell.className = "flagged-cell";
    });
  });
  return table;
}

async function classifyMany(files, classifiers, labels) {
  const form = new FormData();
  files.forEach((file) => form.append("file", file, file.name));
  form.append("classifiers", JSON.stringify(classifiers));
  if (labels.length) form.append("labels", JSON.stringify(labels));
  const response = await fetch("/v1/classify/batch", { method: "POST", headers: authHeaders(), body: form });
  const body = await readJson(response);
  if (!response.ok) {
    const e = body.error || { code: "http_" + response.status, message: response.statusText };
    setStatus(`Error ${response.status} ${e.code}: ${e.message}`, true);
    return;
  }
  $("results").replaceChildren(batchTable(body));
  const flagged = body.items.filter((item) => item.flagged).length;
  setStatus(`${body.items.length} images: ${flagged} flagged, ${body.errors} ` +
            `${body.errors === 1 ? "error" : "errors"} · model ${body.model || "none"} · ${body.total_ms.toFixed(0)} ms`);
}

async function classify(event) {
  event.preventDefault();
  const url = $("url").value.trim();
  const classifiers = [...document.querySelectorAll("input[name=classifier]:checked")].map((i) => i.value);
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if ($("submit").getAttribute("aria-busy")) return;
  if (!chosenFile && !chosenFiles.length && !url) { setStatus("Choose an image file or enter a URL first.", true); return; }
  if (url && !isHttpUrl(url)) { setStatus("The URL must start with http:// or https://.", true); return; }
  if (!classifiers.length && labels.length < 2) {
    setStatus("Pick at least one classifier, or type two or more custom labels.", true); return;
  }
  if (!url && chosenFiles.length) {
    $("submit").setAttribute("aria-busy", "true");
    setStatus(`Classifying ${chosenFiles.length} images…`);
    $("results").replaceChildren();
    try { await classifyMany(chosenFiles, classifiers, labels); }
    catch (err) { setStatus(`Request failed: ${err.message}`, true); }
    finally { $("submit").removeAttribute("aria-busy"); }
    return;
  }
  let request;
  if (url) {
    const body = { url, classifiers };
    if (labels.length) body.labels = labels;
    request = { method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
                body: JSON.stringify(body) };
  } else {
    const form = new FormData();
    form.append("file", chosenFile);
    form.append("classifiers", JSON.stringify(classifiers));
    if (labels.length) form.append("labels", JSON.stringify(labels));
    request = { method: "POST", headers: authHeaders(), body: form };
  }
  $("submit").setAttribute("aria-busy", "true");
  setStatus("Classifying…");
  $("results").replaceChildren();
  clearFaceBoxes();
  try {
    const response = await fetch("/v1/classify", request);
    const body = await readJson(response);
    if (!response.ok) {
      const e = body.error || { code: "http_" + response.status, message: response.statusText };
      setStatus(`Error ${response.status} ${e.code}: ${e.message}`, true);
      return;
    }
    const cards = Object.values(body.results).map(card);
    if (Array.isArray(body.faces)) cards.unshift(facesCard(body.faces));
    if (body.matches && body.matches.length) cards.unshift(matchesCard(body));
    $("results").replaceChildren(...cards);
    if (Array.isArray(body.faces)) drawFaceBoxes(body.faces);
    setStatus(`${body.flagged ? "Flagged" : "Not flagged"}` + actionText(body) +
              ` · model ${body.model} · ${body.timing.total_ms.toFixed(0)} ms ` +
              (body.cached ? "(seen recently: from the cache)" : `(inference ${body.timing.inference_ms.toFixed(0)} ms)`));
  } catch (err) {
    setStatus(`Request failed: ${err.message}`, true);
  } finally {
    $("submit").removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => pickFiles(e.target.files));
  $("choose").addEventListener("click", () => $("file").click());
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); pickFiles(e.dataTransfer.files); });
  drop.addEventListener("click", (e) => { if (e.target === drop || e.target.id === "drop-text") $("file").click(); });
  $("url").addEventListener("change", (e) => {  // on commit, not per keystroke
    const url = e.target.value.trim();
    if (url) { chosenFile = null; chosenFiles = []; $("file").value = ""; }
    if (isHttpUrl(url)) showPreview(url); else if (!chosenFile && !chosenFiles.length) clearPreview();
  });
  $("form").addEventListener("submit", classify);
  $("api-key").addEventListener("change", loadClassifiers);  // a key may unlock the list
  loadClassifiers();
});
