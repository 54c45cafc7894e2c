// kneepain review: the case page. Plain JS, no libraries.
// Every change of the lesion categories is saved at once (one SQLite transaction per save);
// the note is saved after a short pause in typing and when it loses focus. Saves are sent one at
// a time, each based on the version the previous one returned, so a quick series of keys never
// trips the server's stale-version check.
"use strict";

const data = JSON.parse(document.getElementById("case-data").textContent);
const caseUrl = "/api/cases/" + encodeURIComponent(data.case_id);
const reviewerInput = document.getElementById("reviewer");
const statusLine = document.getElementById("status");
const noteInput = document.getElementById("note");
const sliceInput = document.getElementById("slice");
const opacityInput = document.getElementById("opacity");
const boxes = data.categories.map((c) => document.getElementById("cat-" + c.key));

let version = 0;
let saving = null; // the save in flight, if any
let again = false; // another save was asked for while one was in flight
let noteTimer = null;

function say(text, kind) {
  statusLine.textContent = text;
  statusLine.className = kind || "";
}

function reviewer() {
  return reviewerInput.value.trim();
}

function setSlice(k) {
  k = Math.max(0, Math.min(data.n_slices - 1, k));
  sliceInput.value = String(k);
  const offset = k - 11;
  const best = k === data.best_slice ? " · highest mean CAM" : "";
  document.getElementById("slice-label").textContent =
    k + " (offset " + (offset > 0 ? "+" : "") + offset + ")" + best;
  for (const [id, side] of [["knee-painful", data.painful_side], ["knee-other", data.other_side]]) {
    const base = "/cases/" + encodeURIComponent(data.case_id) + "/slices/" + side + "/" + k;
    const figure = document.getElementById(id);
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
  version = record.version;
  const chosen = new Set(record.lesions);
  boxes.forEach((box) => { box.checked = chosen.has(box.value); });
  noteInput.value = record.note;
  document.body.dataset.version = String(version);
  if (record.saved_at) say("Saved (version " + version + ", " + record.saved_at + ")", "saved");
  else say("Not yet reviewed by " + reviewer() + ".");
}

async function load() {
  if (!reviewer()) {
    say("Enter your reviewer name (top right) to record this case.", "error");
    return;
  }
  localStorage.setItem("kneepain-reviewer", reviewer());
  const response = await fetch(caseUrl + "/review?reviewer=" + encodeURIComponent(reviewer()));
  if (!response.ok) {
    say("Could not load the review: " + (await detail(response)), "error");
    return;
  }
  showRecord(await response.json());
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

async function saveOnce() {
  const body = {
    reviewer: reviewer(),
    lesions: boxes.filter((box) => box.checked).map((box) => box.value),
    note: noteInput.value,
    version: version,
  };
  say("Saving…");
  const response = await fetch(caseUrl + "/review", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.ok) {
    const record = await response.json();
    version = record.version;
    document.body.dataset.version = String(version);
    say("Saved (version " + version + ", " + record.saved_at + ")", "saved");
  } else {
    say("Not saved: " + (await detail(response)), "error");
  }
}

async function save() {
  if (!reviewer()) {
    say("Enter your reviewer name (top right) before recording.", "error");
    return;
  }
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
  const response = await fetch(caseUrl + "/prediction");
  if (!response.ok) return;
  const p = await response.json();
  const verdict = p.correct ? "correct" : "wrong";
  document.getElementById("prediction").textContent =
    "Model: P(right painful) = " + p.prob_right.toFixed(3) + " → " + p.predicted_side + " knee (" + verdict + ")";
}

async function go(link) {
  if (!link) return;
  clearTimeout(noteTimer);
  if (saving) await saving;
  window.location.href = link.href;
}

boxes.forEach((box) => box.addEventListener("change", () => { exclusive(box); save(); }));
noteInput.addEventListener("input", () => {
  clearTimeout(noteTimer);
  noteTimer = setTimeout(save, 800);
});
noteInput.addEventListener("blur", () => {
  if (noteTimer) { clearTimeout(noteTimer); noteTimer = null; save(); }
});
sliceInput.addEventListener("input", () => setSlice(Number(sliceInput.value)));
opacityInput.addEventListener("input", () => setOpacity(Number(opacityInput.value)));
reviewerInput.addEventListener("change", load);
document.getElementById("review").addEventListener("submit", (event) => { event.preventDefault(); save(); });
document.getElementById("reveal").addEventListener("click", reveal);

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text")
    || target === reviewerInput;
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
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

reviewerInput.value = data.reviewer || localStorage.getItem("kneepain-reviewer") || "";
setSlice(data.best_slice);
setOpacity(Number(opacityInput.value));
load();
