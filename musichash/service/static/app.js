// musichash's web page: plain DOM code over the HTTP API, no build step, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
let clip = null; // {name, file} for a picked file, or {name, pcm: Float32Array, rate} for a recording

function showError(message) {
  const el = $("error");
  el.textContent = message ? `Error: ${message}` : "";
  el.hidden = !message;
}

async function api(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const retry = r.headers.get("Retry-After");
    throw new Error((body && body.error) || `${r.status} ${r.statusText}` + (retry ? ` (retry in ${retry} s)` : ""));
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function clock(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

const seenTags = new Set(); // offered in the similar filters' inputs

function tagList(tags) {
  const span = el("span", { class: "tags" });
  for (const t of tags || []) {
    span.append(el("span", { class: "tag", text: `${t.tag} ${t.p.toFixed(2)}` }));
    if (!seenTags.has(t.tag)) { seenTags.add(t.tag); $("vocab").append(el("option", { value: t.tag })); }
  }
  return span;
}

function player(track, offset) {
  // starts at the matched offset; the server streams only library tracks, by id, with range requests
  const audio = el("audio", { controls: "", preload: "metadata", src: `/tracks/${track}/audio`,
                              "aria-label": `play track ${track} from ${clock(offset || 0)}` });
  audio.dataset.offset = String(offset || 0);
  audio.addEventListener("loadedmetadata", () => { audio.currentTime = offset || 0; }, { once: true });
  return audio;
}

function trackItem(h, withOffset) {
  const name = h.path.split("/").pop();
  const similar = el("button", { type: "button", class: "secondary similar", text: "Similar tracks",
                                 "aria-label": `tracks similar to ${name}` });
  similar.addEventListener("click", () => loadSimilar(h.track_id, name));
  const meta = [`score ${h.score.toFixed(2)}`];
  if (withOffset) meta.push(`at ${clock(h.offset_s)}`, `hamming ${h.hamming}`);
  const why = el("button", { type: "button", class: "secondary explain", text: "Why this tag?",
                             "aria-label": `what in ${name} made the tagger say its first tag` });
  why.addEventListener("click", () => showExplain(why, h, name, withOffset ? h.offset_s : 0));
  return el("li", { "data-track": h.track_id },
    el("div", { class: "path", text: h.path }),
    el("div", { class: "meta", text: meta.join(" · ") }),
    tagList(h.tags),
    player(h.track_id, withOffset ? h.offset_s : 0),
    similar, why);
}

async function showExplain(button, h, name, offset) {
  // the library's tagger's Grad-CAM for the track's first tag, over 30 s from where it matched
  const tag = h.tags && h.tags.length ? h.tags[0].tag : null;
  if (!tag) { showError(`${name} has no tags to explain`); return; }
  const params = new URLSearchParams({ tag, format: "png", seconds: "30", start: String(Math.max(0, offset || 0)) });
  await showFigure(button, `/tracks/${h.track_id}/explain?${params}`, {},
                   `Grad-CAM: where ${name}'s mel spectrogram made the tagger say '${tag}'`,
                   `evidence for '${tag}' (Grad-CAM over the mel spectrogram)`);
}

async function showFigure(button, url, init, alt, caption) {
  // the PNG the server makes at url, in place of the button that asked for it; its error in one line
  showError("");
  button.disabled = true;
  try {
    const r = await fetch(url, init);
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try { message = (await r.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    const img = el("img", { src: URL.createObjectURL(await r.blob()), alt });
    button.replaceWith(el("figure", { class: "explain" }, img, el("figcaption", { text: caption })));
  } catch (e) {
    button.disabled = false;
    showError(e.message);
  }
}

// ------------------------------------------------------------- clip

function drawWave(samples) {
  const c = $("clip-wave"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#0b57d0";
  const step = Math.max(1, Math.floor(samples.length / c.width));
  for (let x = 0; x < c.width; x++) {
    let lo = 0, hi = 0;
    for (let i = x * step; i < Math.min((x + 1) * step, samples.length); i++) {
      if (samples[i] < lo) lo = samples[i];
      if (samples[i] > hi) hi = samples[i];
    }
    const mid = c.height / 2;
    g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
}

async function decodeForThumbnail(arrayBuffer) {
  // the thumbnail only: the server decodes the clip itself, so a format the browser lacks still searches
  try {
    const ctx = new (window.AudioContext || window.webkitAudioContext)();
    const buf = await ctx.decodeAudioData(arrayBuffer);
    ctx.close();
    return buf;
  } catch (e) { return null; }
}

async function setClip(file) {
  clip = { name: file.name, file };
  $("clip-figure").hidden = false;
  $("clip-caption").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KB)`;
  const buf = await decodeForThumbnail(await file.arrayBuffer());
  if (buf) {
    drawWave(buf.getChannelData(0));
    $("clip-caption").textContent = `${file.name}: ${buf.duration.toFixed(1)} s`;
  }
}

function clipForm() {
  // the clip as the server takes it: the picked file, or a recording's raw float32 PCM and its rate
  const form = new FormData();
  if (clip.pcm) {
    form.append("pcm_rate", String(clip.rate));
    form.append("files", new Blob([clip.pcm.buffer], { type: "application/octet-stream" }), clip.name);
  } else {
    form.append("files", clip.file, clip.name);
  }
  return form;
}

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  if (!clip) { showError("pick, drop or record a clip first"); $("file").focus(); return; }
  const form = clipForm();
  form.append("top_k", $("top-k").value || "5");
  $("verdict").textContent = "searching…";
  $("results").replaceChildren();
  try {
    const r = await api("/search", { method: "POST", body: form });
    showResults(r);
  } catch (e) {
    $("verdict").textContent = "";
    showError(e.message);
  }
}

function showResults(r) {
  const verdict = $("verdict");
  verdict.replaceChildren(
    el("span", { class: r.match ? "match" : "nomatch", text: r.match ? "match" : "no match" }),
    ` for ${r.query} (${r.duration_s.toFixed(1)} s)` + (r.error ? `: ${r.error}` : ""));
  if (r.note) verdict.append(` (${r.note})`);
  if (r.error) showError(`${r.query}: ${r.error}`);
  const items = r.results.map((h) => trackItem(h, true));
  if (r.match && items.length) {  // the track the clip matched: why it matched there
    const h = r.results[0], name = h.path.split("/").pop();
    const why = el("button", { type: "button", class: "secondary explain-match", text: "Why this match?",
                               "aria-label": `what in ${name} made the clip match it` });
    why.addEventListener("click", () => showMatchExplain(why, h, name));
    items[0].append(why);
  }
  $("results").replaceChildren(...items);
}

async function showMatchExplain(button, h, name) {
  // Grad-CAM over the matched track's mel, for the segments the search aligned with the clip
  const form = clipForm();
  form.append("format", "png");
  await showFigure(button, `/tracks/${h.track_id}/explain-match`, { method: "POST", body: form },
                   `Grad-CAM: where in ${name}'s mel spectrogram the clip matched`,
                   `why the clip matches ${name} (Grad-CAM over the mel spectrogram)`);
}

// ------------------------------------------------------------- recording

let recorder = null;

async function record() {
  const button = $("record");
  if (recorder) { recorder.stop(); return; }
  showError("");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    showError(`cannot use the microphone (${e.name}); allow it for this page, or pick a file instead`);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    button.textContent = "Record";
    button.setAttribute("aria-pressed", "false");
    const buf = await decodeForThumbnail(await new Blob(chunks).arrayBuffer());
    if (!buf) { showError("the recording could not be decoded by this browser; pick a file instead"); return; }
    const pcm = new Float32Array(buf.getChannelData(0));
    clip = { name: "microphone", pcm, rate: buf.sampleRate };
    $("clip-figure").hidden = false;
    $("clip-caption").textContent = `microphone: ${buf.duration.toFixed(1)} s`;
    drawWave(pcm);
    search();
  };
  recorder.start();
  button.textContent = "Stop";
  button.setAttribute("aria-pressed", "true");
  const seconds = Math.min(30, Math.max(3, Number($("rec-s").value) || 8));
  setTimeout(() => { if (recorder) recorder.stop(); }, seconds * 1000);
}

// ------------------------------------------------------------- similar, dedup, stats

let similarSeed = null;

async function loadSimilar(id, name, event) {
  if (event) event.preventDefault();
  if (id !== undefined) similarSeed = { id, name };
  if (!similarSeed) return;
  showError("");
  const params = new URLSearchParams({ top_k: "10" });
  if ($("sim-tag").value.trim()) params.append("tag", $("sim-tag").value.trim());
  if ($("sim-exclude").value.trim()) params.append("exclude_tag", $("sim-exclude").value.trim());
  $("similar-section").hidden = false;
  $("similar-seed").textContent = `like ${similarSeed.name}:`;
  try {
    const r = await api(`/tracks/${similarSeed.id}/similar?${params}`);
    const items = r.results.map((h) => trackItem(h, false));
    if (!items.length) items.push(el("li", { text: "no tracks pass the filters" }));
    for (const p of r.excluded || []) items.push(el("li", { class: "meta", text: `left out (same recording): ${p}` }));
    $("similar").replaceChildren(...items);
  } catch (e) {
    $("similar").replaceChildren();
    showError(e.message);
  }
  $("similar-h").focus();
}

async function loadDedup() {
  showError("");
  const out = $("dedup");
  out.textContent = "comparing tracks…";
  try {
    const r = await api("/dedup");
    if (!r.groups.length) { out.textContent = "no duplicates found"; return; }
    out.replaceChildren(...r.groups.map((g, i) => el("div", { class: "group" },
      el("h3", { text: `group ${i + 1} (${g.tracks.length} files, score ${g.score.toFixed(2)})` }),
      el("ul", {}, ...g.tracks.map((m) => el("li", {},
        el("span", { class: "path", text: m.path }),
        el("span", { class: "meta", text: `  [${clock(m.span_s[0])} – ${clock(m.span_s[1])}]` })))))));
  } catch (e) {
    out.textContent = "";
    showError(e.message);
  }
}

async function loadStats() {
  try {
    const s = await api("/stats");
    $("stats").textContent = `${s.tracks} tracks, ${s.hours.toFixed(1)} h, ${s.segments} segments · ` +
      `${s.code_model} (${s.bits} bits, ${s.index_type} index)` + (s.errors ? ` · ${s.errors} files failed` : "");
  } catch (e) {
    $("stats").textContent = "";
    showError(e.message);
  }
}

// ------------------------------------------------------------- wiring

window.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) setClip(e.target.files[0]).then(() => search()); });
  $("record").addEventListener("click", record);
  if (!window.MediaRecorder || !navigator.mediaDevices) $("record").disabled = true;
  $("similar-form").addEventListener("submit", (e) => loadSimilar(undefined, undefined, e));
  $("dedup-load").addEventListener("click", loadDedup);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) setClip(f).then(() => search());
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  loadStats();
});
