// kneepain review: the case page. Plain JS, no libraries.
// The signed-in reviewer is the server's (cookie); the page never names a reviewer in a request.
// Every change of the lesion categories is saved at once (one SQLite transaction per save); the
// note is saved after a short pause in typing, when it loses focus, and when the page is hidden
// or closed (a keepalive request that outlives the tab). Saves are sent one at a time, each based
// on the version the previous one returned, so a quick series of keys never trips the server's
// stale-version check. The prediction is the server's to release: only after the label is saved.
"use strict";

const data = JSON.parse(document.getElementById("case-data").textContent);
const caseUrl = "/api/cases/" + encodeURIComponent(data.case_id);
const statusLine = document.getElementById("status");
const noteInput = document.getElementById("note");
const sliceInput = document.getElementById("slice");
const opacityInput = document.getElementById("opacity");
const revealButton = document.getElementById("reveal");
const boxes = data.categories.map((c) => document.getElementById("cat-" + c.key));

let version = 0;
let saving = null; // the save in flight, if any
let again = false; // another save was asked for while one was in flight
let noteTimer = null;
let dirty = false; // a change not yet acknowledged by the server

function say(text, kind) {
  statusLine.textContent = text;
  statusLine.className = kind || "";
}

function setVersion(v) {
  version = v;
  document.body.dataset.version = String(version);
  if (revealButton && !revealButton.hidden) {
    revealButton.disabled = !data.admin && version < 1;
    document.getElementById("reveal-hint").hidden = !revealButton.disabled;
  }
}

function setSlice(k) {
  k = Math.max(0, Math.min(data.n_slices - 1, k));
  sliceInput.value = String(k);
  const offset = k - 11;
  const best = k === data.best_slice ? " · highest mean CAM" : "";
  document.getElementById("slice-label").textContent =
    k + " (offset " + (offset > 0 ? "+" : "") + offset + ")" + best;
  for (const figure of document.querySelectorAll("figure.knee")) {
    const base = "/cases/" + encodeURIComponent(data.case_id) + "/slices/" + figure.dataset.side + "/" + k;
    figure.querySelector("img.mri").src = base + "/mri.png";
    figure.querySelector("img.cam").src = base + "/cam.png";
  }
}

function setOpacity(percent) {
  percent = Math.max(0, Math.min(100, percent));
  opacityInput.value = String(percent);
  for (const img of document.querySelectorAll("img.cam")) img.style.opacity = String(percent / 100);
}

function showRecord(record) {
  setVersion(record.version);
  const chosen = new Set(record.lesions);
  boxes.forEach((box) => { box.checked = chosen.has(box.value); });
  noteInput.value = record.note;
  if (record.saved_at) say("Saved (version " + version + ", " + record.saved_at + ")", "saved");
  else say("Not yet labelled by you (" + data.reviewer + ").");
}

async function load() {
  if (data.admin) {
    say("Admin view: read-only.");
    return;
  }
  const response = await fetch(caseUrl + "/review");
  if (!response.ok) {
    say("Could not load your label: " + (await detail(response)), "error");
    return;
  }
  showRecord(await response.json());
  if (data.revealed) reveal();
}

async function detail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return body.detail.map((d) => (d.loc || []).join(".") + ": " + d.msg).join("; ");
  } catch (error) {
    return response.status + " " + response.statusText;
  }
}

function body() {
  return JSON.stringify({
    lesions: boxes.filter((box) => box.checked).map((box) => box.value),
    note: noteInput.value,
    version: version,
  });
}

async function saveOnce() {
  say("Saving…");
  dirty = false;
  const response = await fetch(caseUrl + "/review", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body(),
  });
  if (response.ok) {
    const record = await response.json();
    setVersion(record.version);
    say("Saved (version " + version + ", " + record.saved_at + ")", "saved");
  } else {
    dirty = true;
    say("Not saved: " + (await detail(response)), "error");
  }
}

async function save() {
  if (data.admin) return;
  dirty = true;
  if (saving) {
    again = true;
    return saving;
  }
  saving = (async () => {
    do {
      again = false;
      await saveOnce();
    } while (again);
  })();
  try {
    await saving;
  } finally {
    saving = null;
  }
}

function saveBeforeLeaving() {
  // the tab may be gone before a normal request finishes: keepalive lets this one outlive it
  if (data.admin || !(dirty || noteTimer) || saving) return;
  clearTimeout(noteTimer);
  noteTimer = null;
  dirty = false;
  fetch(caseUrl + "/review", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body(),
    keepalive: true,
  });
}

function toggle(index) {
  const box = boxes[index];
  box.checked = !box.checked;
  exclusive(box);
  save();
}

function exclusive(box) {
  // "none" excludes every lesion, and a lesion excludes "none"
  if (!box.checked) return;
  for (const other of boxes) {
    if (other !== box && (box.value === "none" || other.value === "none")) other.checked = false;
  }
}

async function reveal() {
  if (!revealButton || revealButton.disabled || revealButton.hidden) return;
  const response = await fetch(caseUrl + "/prediction");
  if (!response.ok) {
    say(await detail(response), "error");
    return;
  }
  const p = await response.json();
  const parts = [];
  if (p.painful_side) {
    const sideOf = { a: p.knee_a, b: p.knee_a === "left" ? "right" : "left" };
    for (const figure of document.querySelectorAll("figure.knee")) {
      const side = sideOf[figure.dataset.side];
      const caption = figure.querySelector("figcaption");
      caption.textContent += " = " + side + (side === p.painful_side ? " (painful)" : " (other)");
    }
    parts.push("Painful knee: " + p.painful_side);
  }
  if (p.predicted_side) {
    const verdict = p.correct ? "correct" : "wrong";
    parts.push("Model: P(right painful) = " + p.prob_right.toFixed(3) + " → " + p.predicted_side +
      " knee (" + verdict + ")");
  }
  document.getElementById("prediction").textContent = parts.join(" · ");
  revealButton.hidden = true; // shown for good: the server has recorded the reveal
  document.getElementById("reveal-hint").hidden = true;
}

async function go(link) {
  if (!link) return;
  clearTimeout(noteTimer);
  if (noteTimer) { noteTimer = null; save(); }
  if (saving) await saving;
  window.location.href = link.href;
}

boxes.forEach((box) => box.addEventListener("change", () => { exclusive(box); save(); }));
noteInput.addEventListener("input", () => {
  clearTimeout(noteTimer);
  noteTimer = setTimeout(() => { noteTimer = null; save(); }, 800);
});
noteInput.addEventListener("blur", () => {
  if (noteTimer) { clearTimeout(noteTimer); noteTimer = null; save(); }
});
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") saveBeforeLeaving();
});
window.addEventListener("pagehide", saveBeforeLeaving);
sliceInput.addEventListener("input", () => setSlice(Number(sliceInput.value)));
opacityInput.addEventListener("input", () => setOpacity(Number(opacityInput.value)));
document.getElementById("review").addEventListener("submit", (event) => { event.preventDefault(); save(); });
if (revealButton) revealButton.addEventListener("click", reveal);

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text");
  if (typing || event.ctrlKey || event.metaKey || event.altKey || data.admin && /^[1-9]$/.test(event.key)) return;
  const number = Number(event.key);
  if (Number.isInteger(number) && number >= 1 && number <= boxes.length) toggle(number - 1);
  else if (event.key === "ArrowRight") setSlice(Number(sliceInput.value) + 1);
  else if (event.key === "ArrowLeft") setSlice(Number(sliceInput.value) - 1);
  else if (event.key === "]") setOpacity(Number(opacityInput.value) + 10);
  else if (event.key === "[") setOpacity(Number(opacityInput.value) - 10);
  else if (event.key === "n") go(document.getElementById("next"));
  else if (event.key === "p") go(document.getElementById("previous"));
  else if (event.key === "r") reveal();
  else return;
  event.preventDefault();
});

setVersion(0);
setSlice(data.best_slice);
setOpacity(Number(opacityInput.value));
load();
