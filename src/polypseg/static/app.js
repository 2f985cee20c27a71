// polypseg web app: plain JS, no build step. It calls the same HTTP API as any other client; the
// token, when the server asks for one, travels in the cookie set when the page was opened with ?token=.
"use strict";

const $ = (id) => document.getElementById(id);
const GREEN = [0, 255, 0];
const ALPHA = 0.35; // the fill's opacity, as in polypseg.viz.overlay
const AMBER = "#ffb000"; // alerts, as in polypseg.video's border

async function api(path, options) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

// --- numbers a person compares ------------------------------------------------------------------

// A score and the cut-off it is compared with must never print alike ("1.00 >= 1.00"): 4 significant digits,
// more where fewer would print a number equal to one it is compared with, or as a round number it is not;
// trailing zeros dropped.
const sig = (x, digits) => String(Number(Number(x).toPrecision(digits)));
function digitsApart(x, others, digits = 4) {
  const clash = (d) => others.some((o) => o !== null && o !== undefined && Number(o) !== Number(x) && sig(o, d) === sig(x, d)) ||
    (!Number.isInteger(Number(x)) && Number.isInteger(Number(sig(x, d))));
  let d = digits;
  while (d < 17 && clash(d)) d++;
  return d;
}
// x printed apart from each of `others`
function fmt(x, ...others) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  return sig(x, digitsApart(x, others));
}
// [a, b] with the same number of digits, enough to tell them apart
function fmtPair(a, b) {
  const d = Math.max(digitsApart(a, [b]), digitsApart(b, [a]));
  return [sig(a, d), sig(b, d)];
}

// --- tabs and the model card -------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab, .panel").forEach((el) => el.classList.remove("active"));
    tab.classList.add("active");
    $(tab.dataset.tab).classList.add("active");
  });
}

// The model's three settings, named apart: the mask threshold (pixel probability: what is drawn), the operating
// point (polyp score: the frame's verdict; a site's when one is applied) and the alert rule (onset and release).
let model = null;
function describeModel(m) {
  const rule = m.alert_rule || {};
  const whose = m.site ? `site ${m.site}` : "the model's own";
  return `${m.name}: ${m.architecture}, input ${m.input.join("x")}; mask threshold ${fmt(m.mask_threshold)} (pixel probability)` +
    ` · operating point ${fmt(m.operating_point)} (polyp score, ${m.verdict}; ${whose})` +
    ` · alert after ${fmt(rule.onset_ms)} ms at or above it, ended after ${fmt(rule.release_ms)} ms below` +
    ` (${m.runtime || m.backend} on ${m.device}). Trained on ${m.training_data}.`;
}
async function loadModel() {
  model = await api("/api/v1/model");
  $("model").textContent = describeModel(model);
  return model;
}
loadModel().then((m) => setThreshold(m.mask_threshold))
  .catch((err) => { $("model").textContent = `model: ${err.message}`; });

// --- Images: the probability map comes once; the slider redraws in the browser ---------------------

// {name, bitmap, prob (Uint8Array, 0-255), width, height, verdict {present, score, point}, overlay canvas, stats element}
const frames = [];

function setThreshold(t) {
  $("threshold").value = t;
  $("threshold-value").textContent = Number(t).toFixed(2);
  frames.forEach(draw);
}
$("threshold").addEventListener("input", (e) => setThreshold(e.target.value));

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addImages(e.dataTransfer.files); });
$("image-files").addEventListener("change", (e) => addImages(e.target.files));

async function addImages(files) {
  let done = 0;
  for (const file of files) {
    $("images-status").textContent = `segmenting ${++done} of ${files.length}…`;
    try {
      frames.push(await segmentImage(file));
      draw(frames[frames.length - 1]);
    } catch (err) {
      const card = document.createElement("div");
      card.className = "card error";
      card.textContent = `${file.name}: ${err.message}`;
      $("results").prepend(card);
    }
  }
  $("images-status").textContent = `${frames.length} frame(s)`;
  $("zip").disabled = frames.length === 0;
}

async function segmentImage(file) {
  const form = new FormData();
  form.append("file", file);
  const info = await api("/api/v1/segment?probability=true", { method: "POST", body: form });
  const bitmap = await createImageBitmap(file);
  const probImage = new Image();
  probImage.src = "data:image/png;base64," + info.probability_png;
  await probImage.decode();
  const { width, height } = info;
  const scratch = new OffscreenCanvas(width, height).getContext("2d");
  scratch.drawImage(probImage, 0, 0);
  const rgba = scratch.getImageData(0, 0, width, height).data;
  const prob = new Uint8Array(width * height);
  for (let i = 0; i < prob.length; i++) prob[i] = rgba[4 * i];

  const card = document.createElement("div");
  card.className = "card";
  const title = document.createElement("div");
  title.textContent = file.name;
  const pair = document.createElement("div");
  pair.className = "pair";
  const original = document.createElement("canvas");
  const overlay = document.createElement("canvas");
  for (const c of [original, overlay]) { c.width = width; c.height = height; pair.append(c); }
  original.getContext("2d").drawImage(bitmap, 0, 0, width, height);
  overlay.className = "overlay";
  const stats = document.createElement("div");
  stats.className = "stats";
  card.append(title, pair, stats);
  $("results").append(card);
  const verdict = { present: info.polyp_present, score: info.polyp_score, point: info.operating_point };
  return { name: file.name, bitmap, prob, width, height, verdict, overlay, stats };
}

// The slider moves the mask's threshold only; the frame's verdict is the server's, and with "no polyp"
// nothing is drawn, as the server draws nothing.
function maskAt(frame) {
  const cut = Math.round(Number($("threshold").value) * 255);
  const mask = new Uint8Array(frame.prob.length);
  if (!frame.verdict.present) return mask;
  for (let i = 0; i < mask.length; i++) mask[i] = frame.prob[i] >= cut ? 1 : 0;
  return mask;
}

// the frame's verdict: its polyp score against the operating point, printed apart
function verdictText({ present, score, point }) {
  const [s, p] = point === null ? [fmt(score), null] : fmtPair(score, point);
  const against = p === null ? "" : ` ${present ? "≥" : "<"} ${p}`;
  return present ? `<b>polyp</b> (score ${s}${against})` : `<b>no polyp</b>, score ${s}${against}`;
}

function draw(frame) {
  const { width: w, height: h } = frame;
  const mask = maskAt(frame);
  const ctx = frame.overlay.getContext("2d");
  ctx.drawImage(frame.bitmap, 0, 0, w, h);
  const image = ctx.getImageData(0, 0, w, h);
  const px = image.data;
  let area = 0, sum = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      area++;
      sum += frame.prob[i];
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      for (let c = 0; c < 3; c++) {
        px[4 * i + c] = edge ? GREEN[c] : px[4 * i + c] * (1 - ALPHA) + GREEN[c] * ALPHA;
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  const regions = countRegions(mask, w, h);
  frame.figures = { area: area / (w * h), regions, confidence: area ? sum / area / 255 : null };
  frame.stats.innerHTML = `${verdictText(frame.verdict)} · polyp area <b>${(100 * frame.figures.area).toFixed(1)}%</b> · regions <b>${regions}</b>` +
    ` · confidence <b>${area ? frame.figures.confidence.toFixed(2) : "–"}</b> (mean probability inside the mask)`;
}

function countRegions(mask, w, h) {
  // 8-connected regions, as polypseg.predict.describe counts them
  const seen = new Uint8Array(mask.length);
  const stack = [];
  let regions = 0;
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || seen[start]) continue;
    regions++;
    seen[start] = 1;
    stack.push(start);
    while (stack.length) {
      const i = stack.pop(), x = i % w, y = (i - x) / w;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx, ny = y + dy, j = ny * w + nx;
          if (nx >= 0 && ny >= 0 && nx < w && ny < h && mask[j] && !seen[j]) { seen[j] = 1; stack.push(j); }
        }
      }
    }
  }
  return regions;
}

$("zip").addEventListener("click", async () => {
  const t = Number($("threshold").value);
  const rows = ["image,width,height,threshold,polyp_score,polyp_present,area_fraction,regions,confidence"];
  const files = [];
  for (const f of frames) {
    const mask = maskAt(f);
    const canvas = new OffscreenCanvas(f.width, f.height);
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(f.width, f.height);
    for (let i = 0; i < mask.length; i++) {
      image.data.fill(mask[i] * 255, 4 * i, 4 * i + 3);
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    const png = new Uint8Array(await (await canvas.convertToBlob({ type: "image/png" })).arrayBuffer());
    const stem = f.name.replace(/\.[^.]*$/, "");
    files.push({ name: `masks/${stem}.png`, data: png });
    const g = f.figures;
    rows.push([JSON.stringify(f.name), f.width, f.height, t, f.verdict.score, f.verdict.present ? 1 : 0, g.area.toFixed(6), g.regions,
               g.confidence === null ? "" : g.confidence.toFixed(4)].join(","));
  }
  files.push({ name: "predictions.csv", data: new TextEncoder().encode(rows.join("\n") + "\n") });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(zip(files));
  link.download = "polypseg-masks.zip";
  link.click();
});

// A ZIP of stored (uncompressed) files: PNGs are compressed already, and this keeps the page build-free.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function zip(files) {
  const parts = [], central = [];
  let offset = 0;
  for (const { name, data } of files) {
    const nameBytes = new TextEncoder().encode(name);
    const crc = crc32(data);
    const header = (sig, extra) => {
      const b = new DataView(new ArrayBuffer(extra ? 46 : 30));
      let p = 0;
      const u32 = (v) => { b.setUint32(p, v, true); p += 4; }, u16 = (v) => { b.setUint16(p, v, true); p += 2; };
      u32(sig);
      if (extra) u16(20);
      u16(20); u16(0x0800); u16(0); u16(0); u16(0x21); u32(crc); u32(data.length); u32(data.length);
      u16(nameBytes.length); u16(0);
      if (extra) { u16(0); u16(0); u16(0); u32(0); u32(offset); }
      return new Uint8Array(b.buffer);
    };
    const local = header(0x04034b50, false);
    parts.push(local, nameBytes, data);
    central.push(header(0x02014b50, true), nameBytes);
    offset += local.length + nameBytes.length + data.length;
  }
  const size = central.reduce((n, p) => n + p.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true); end.setUint16(10, files.length, true);
  end.setUint32(12, size, true); end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, new Uint8Array(end.buffer)], { type: "application/zip" });
}

// --- Video: a job on the server, a progress bar, then the overlay video and its timeline -------------

$("video-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const status = $("video-status");
  status.className = "";
  $("video-progress").value = 0;
  $("video-csv").classList.add("hidden");
  $("video-events").classList.add("hidden");
  $("video-alerts").replaceChildren();
  try {
    status.textContent = "uploading…";
    const form = new FormData();
    form.append("file", file);
    let job = await api("/api/v1/videos", { method: "POST", body: form });
    while (job.status === "queued" || job.status === "running") {
      status.textContent = job.status === "queued" ? "waiting for the worker…" :
        `segmenting: frame ${job.frames_done}${job.frames_total ? " of " + job.frames_total : ""}`;
      $("video-progress").value = job.progress || 0;
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/v1/videos/${job.id}`);
    }
    if (job.status !== "done") throw new Error(job.error || job.status);
    $("video-progress").value = 1;
    const r = job.result;
    status.textContent = "done";
    const s = r.summary;
    const clip = s.source_fps ? ` (${(s.duration_ms / 1000).toFixed(1)} s at ${s.source_fps.toFixed(0)} fps)` : "";
    const [peak, point] = s.peak_score === null || s.peak_score === undefined ? ["–", fmt(s.operating_point)] :
      fmtPair(s.peak_score, s.operating_point);
    $("video-summary").textContent = `${r.frames} frames${clip}, polyp seen in ${r.polyp_frames}; ${s.alerts} alert(s),` +
      ` ${s.alerts_per_minute.toFixed(1)} per minute, alerted ${(100 * s.alerted_share).toFixed(0)}% of the time;` +
      ` highest polyp score ${peak}, operating point ${point};` +
      ` processed at ${r.processing_fps} frames/s on the server`;
    $("video-player").src = job.video_url;
    $("video-csv").href = job.csv_url;
    $("video-events").href = job.events_url;
    $("video-csv").classList.remove("hidden");
    $("video-events").classList.remove("hidden");
    drawTimeline(r.timeline, r.alert, r.time_ms, s.duration_ms);
    listAlerts(r.events, s.operating_point);
  } catch (err) {
    status.textContent = `error: ${err.message}`;
    status.className = "error";
  }
});

// The verdict per frame in green, the frames under an alert as an amber band on top, each frame placed
// by its timestamp over the clip's duration (ms), with a time axis in seconds under it.
function drawTimeline(timeline, alerts, times, durationMs) {
  const canvas = $("timeline"), ctx = canvas.getContext("2d");
  ctx.fillStyle = "#2b3340";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const n = timeline.length;
  const start = (i) => (times ? times[i] : (i * durationMs) / Math.max(1, n));
  const x = (ms) => (ms / Math.max(1, durationMs)) * canvas.width;
  const band = Math.round(canvas.height / 3);
  const span = (i, top, height) => {
    const left = x(start(i)), right = i + 1 < n ? x(start(i + 1)) : canvas.width;
    ctx.fillRect(left, top, Math.max(1, right - left), height);
  };
  ctx.fillStyle = "#3fbf5f";
  timeline.forEach((seen, i) => { if (seen) span(i, band, canvas.height - band); });
  ctx.fillStyle = AMBER;
  alerts.forEach((on, i) => { if (on) span(i, 0, band); });
  drawAxis(durationMs);
  canvas.onclick = (e) => {
    const video = $("video-player");
    if (video.duration) video.currentTime = (e.offsetX / canvas.clientWidth) * video.duration;
  };
}

// Labels at a round step of seconds (at most about 8 of them), from 0 to the clip's end.
function drawAxis(durationMs) {
  const axis = $("timeline-axis"), seconds = durationMs / 1000;
  axis.replaceChildren();
  if (!(seconds > 0)) return;
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const step = steps.find((s) => seconds / s <= 8) || 7200;
  const label = (t) => (step >= 60 ? clock(t * 1000).replace(/\.0$/, "") : `${step < 1 ? t.toFixed(1) : t.toFixed(0)} s`);
  for (let k = 0; k * step <= seconds + 1e-9; k++) {
    const t = k * step, at = t / seconds;
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.textContent = label(t);
    tick.style.left = `${100 * at}%`;
    // the first label starts at its mark, the last ends at it, the others are centred on theirs
    const shift = at === 0 ? 0 : at > 0.95 ? 100 : 50;
    tick.style.transform = `translateX(-${shift}%)`;
    tick.style.setProperty("--mark", `${shift}%`);
    axis.append(tick);
  }
}

const clock = (ms) => `${Math.floor(ms / 60000)}:${(ms / 1000 % 60).toFixed(1).padStart(4, "0")}`;

function listAlerts(events, point) {
  const list = $("video-alerts");
  for (const e of events) {
    const item = document.createElement("li");
    if (e.thumbnail_url) {
      const img = document.createElement("img");
      img.src = e.thumbnail_url;
      img.alt = `alert ${e.index}`;
      item.append(img);
    }
    item.append(`${clock(e.start_ms)}–${clock(e.end_ms)} · ${(e.duration_ms / 1000).toFixed(1)} s · peak score ${fmt(e.peak_score, point)}`);
    item.addEventListener("click", () => { $("video-player").currentTime = e.start_ms / 1000; });
    list.append(item);
  }
}

// --- Live: camera -> JPEG over a WebSocket, at most one frame in flight ---------------------------

const live = { ws: null, stream: null, busy: false, sentAt: 0, answers: [], cameraFrames: 0, sent: 0, dropped: 0 };
const capture = document.createElement("canvas");
capture.width = 384; capture.height = 288;

$("live-start").addEventListener("click", async () => {
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 384, height: 288 }, audio: false });
  } catch (err) {
    $("live-status").textContent = `no camera: ${err.message}`;
    return;
  }
  const video = $("live-video");
  video.srcObject = live.stream;
  await video.play();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  live.ws = new WebSocket(`${scheme}://${location.host}/api/v1/live`);
  live.ws.onopen = () => { $("live-status").textContent = "streaming"; tick(); };
  live.ws.onclose = () => { $("live-status").textContent = "closed"; };
  live.ws.onmessage = onAnswer;
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
});

$("live-stop").addEventListener("click", () => {
  showAlert(false);
  live.ws?.close();
  live.stream?.getTracks().forEach((t) => t.stop());
  live.ws = live.stream = null;
  live.busy = false;
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
});

function tick() {
  if (!live.ws) return;
  const video = $("live-video");
  live.cameraFrames++;
  if (live.busy || video.readyState < 2) {
    live.dropped += live.busy ? 1 : 0; // the newest camera frame waits for no one: it is skipped
  } else {
    live.busy = true;
    capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
    capture.toBlob((blob) => {
      live.sentAt = performance.now();
      live.ws?.readyState === WebSocket.OPEN ? live.ws.send(blob) : (live.busy = false);
    }, "image/jpeg", 0.7);
  }
  $("live-dropped").textContent = live.dropped;
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
  else requestAnimationFrame(tick);
}

// The alert: the server's tracker decides (onset and release in ms); the page frames the picture in amber
// and, when asked, beeps as an alert starts (WebAudio, made on the click that turns the sound on).
let audio = null;
$("live-sound").addEventListener("change", (e) => {
  if (e.target.checked) { audio = audio || new AudioContext(); audio.resume(); }
});

function beep() {
  if (!audio || !$("live-sound").checked) return;
  const osc = audio.createOscillator(), gain = audio.createGain(), now = audio.currentTime;
  osc.frequency.value = 880;
  gain.gain.setValueAtTime(0.25, now);
  gain.gain.exponentialRampToValueAtTime(0.001, now + 0.25);
  osc.connect(gain).connect(audio.destination);
  osc.start(now);
  osc.stop(now + 0.25);
}

function showAlert(on) {
  $("live-frame").classList.toggle("alert", on);
  $("live-alert").hidden = !on;
}

function onAnswer(event) {
  const answer = JSON.parse(event.data);
  const now = performance.now();
  live.busy = false;
  if (answer.busy || answer.error) {
    live.dropped++;
    if (answer.error) $("live-status").textContent = answer.error;
    return;
  }
  live.answers.push(now);
  while (live.answers.length && now - live.answers[0] > 2000) live.answers.shift();
  const fps = live.answers.length > 1 ? (live.answers.length - 1) / ((now - live.answers[0]) / 1000) : 0;
  $("live-fps").textContent = fps.toFixed(1);
  $("live-latency").textContent = (now - live.sentAt).toFixed(0);
  $("live-server").textContent = answer.server_ms.toFixed(0);
  const [score, point] = fmtPair(answer.polyp_score, answer.operating_point);
  $("live-score").textContent = score;
  $("live-versus").textContent = answer.polyp_present ? "≥" : "<";
  $("live-point").textContent = point;
  showAlert(answer.alert);
  if (answer.alert_started) beep();

  // the overlay is drawn on the very frame that was analysed
  const canvas = $("live-canvas"), ctx = canvas.getContext("2d");
  ctx.drawImage(capture, 0, 0, canvas.width, canvas.height);
  const sx = canvas.width / answer.width, sy = canvas.height / answer.height;
  ctx.fillStyle = `rgba(0, 255, 0, ${ALPHA})`;
  ctx.strokeStyle = "rgb(0, 255, 0)";
  ctx.lineWidth = 2;
  for (const polygon of answer.polygons) {
    ctx.beginPath();
    polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * sx, y * sy) : ctx.moveTo(x * sx, y * sy)));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
  }
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(0, 0, 250, 22);
  ctx.fillStyle = answer.polyp_present ? "rgb(0, 255, 0)" : "#fff";
  ctx.font = "14px system-ui";
  ctx.fillText(`polyp ${(100 * answer.area_fraction).toFixed(1)}% · score ${score} ${answer.polyp_present ? "≥" : "<"} ${point}`, 6, 16);
}

// --- Settings: a site's operating point, chosen on its own polyp-free clip ----------------------------

// the profile shown, the slider's stops (rows of the curve, and the profile's own point), the stop shown,
// and where each stop is drawn on the canvas (for clicks)
const site = { profile: null, rows: [], index: 0, pixels: [] };
const targetKind = (profile) => ("false_alerts_per_minute" in profile.target ? "false_alerts_per_minute" : "flagged_share");
const siteUrl = (name, tail = "") => `/api/v1/sites/${encodeURIComponent(name)}${tail}`;

$("site-file").addEventListener("change", (e) => {
  $("site-file-name").textContent = e.target.files[0]?.name || "no clip chosen";
});
$("site-target-kind").addEventListener("change", (e) => {
  $("site-target").value = e.target.value === "flagged_share" ? 5 : 1;
});

async function listSites(selected) {
  const answer = await api("/api/v1/sites");
  const list = $("site-list");
  list.replaceChildren(...answer.sites.map((name) => new Option(name, name)));
  if (selected) list.value = selected;
  $("site-open").disabled = answer.sites.length === 0;
  $("site-applied").textContent = answer.applied ? `this server applies site ${answer.applied}` :
    `this server applies the model's own operating point, ${fmt(answer.model_operating_point)} (polyp score, ${answer.verdict})`;
  return answer;
}
listSites().catch((err) => { $("site-applied").textContent = `sites: ${err.message}`; });

function siteError(where, err) {
  $(where).textContent = `error: ${err.message}`;
  $(where).className = "error";
}

$("site-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = $("site-status");
  status.className = "";
  const file = $("site-file").files[0];
  try {
    if (!file) throw new Error("choose a clip of the site's polyp-free video first");
    const kind = $("site-target-kind").value;
    const value = Number($("site-target").value) / (kind === "flagged_share" ? 100 : 1);
    const form = new FormData();
    form.append("file", file);
    form.append("name", $("site-name").value.trim());
    form.append(kind, String(value));
    $("site-run").disabled = true;
    $("site-progress").value = 0;
    status.textContent = "uploading…";
    let job = await api("/api/v1/sites", { method: "POST", body: form });
    while (job.status === "queued" || job.status === "running") {
      status.textContent = job.status === "queued" ? "waiting for the worker…" :
        `scoring the clip: frame ${job.frames_done}${job.frames_total ? " of " + job.frames_total : ""}`;
      $("site-progress").value = job.progress || 0;
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/v1/sites/jobs/${job.id}`);
    }
    if (job.status !== "done") throw new Error(job.error || job.status);
    $("site-progress").value = 1;
    status.textContent = `saved beside the model as ${job.result.file}`;
    await listSites(job.result.name);
    showSite(job.result);
  } catch (err) {
    siteError("site-status", err);
  } finally {
    $("site-run").disabled = false;
  }
});

$("site-open").addEventListener("click", async () => {
  const name = $("site-list").value;
  if (!name) return;
  try {
    showSite(await api(siteUrl(name)));
  } catch (err) {
    siteError("site-status", err);
  }
});

// The slider's stops: the curve's points (each measured on the clip at the profile's onset) and the
// profile's own point with what it costs there; the slider starts at the profile's point.
function showSite(profile) {
  site.profile = profile;
  const m = profile.measured;
  const own = { operating_point: profile.operating_point, flagged_share: m.flagged_share, own: true,
                false_alerts_per_minute: m.false_alerts_per_minute, sensitivity: m.validation_sensitivity };
  site.rows = [...profile.curve.filter((r) => r.operating_point !== own.operating_point), own]
    .sort((a, b) => a.operating_point - b.operating_point);
  const slider = $("site-point");
  slider.max = site.rows.length - 1;
  $("site-result").hidden = false;
  $("site-apply-status").textContent = "";
  moveTo(site.rows.indexOf(own));
}

$("site-point").addEventListener("input", (e) => moveTo(Number(e.target.value)));

// What the point at stop i costs, in numbers a person can compare with the target and with other stops.
function moveTo(i) {
  site.index = i;
  $("site-point").value = i;
  const p = site.profile, row = site.rows[i], kind = targetKind(p);
  const points = site.rows.map((r) => r.operating_point);
  const point = fmt(row.operating_point, points[i - 1], points[i + 1], p.operating_point);
  const verdict = p.verdict || (model && model.verdict) || "polyp score";
  const target = kind === "flagged_share" ? `at most ${fmt(100 * p.target.flagged_share)}% of polyp-free frames flagged` :
    `at most ${fmt(p.target.false_alerts_per_minute)} false alerts per minute`;
  const sensitivity = row.sensitivity === null || row.sensitivity === undefined ?
    "sensitivity on polyp frames <b>unknown</b> (the model's validation frames are not on this server)" :
    `sensitivity <b>${fmt(100 * row.sensitivity)}%</b> of the model's ${p.measured.validation_polyp_frames ?? ""} validation polyp frames`;
  const saved = row.own ? "the profile's point" : `the profile holds ${fmt(p.operating_point, row.operating_point)}`;
  $("site-costs").innerHTML = `site <b>${p.name}</b>: operating point <b id="site-point-value">${point}</b> (polyp score, ${verdict};` +
    ` ${saved}) · alert onset ${fmt(p.onset_ms)} ms · <b>${fmt(row.false_alerts_per_minute)}</b> false alerts per minute` +
    ` · <b>${fmt(100 * row.flagged_share)}%</b> of the clip's ${p.measured.frames} polyp-free frames flagged · ${sensitivity}` +
    ` · chosen for ${target}${p.movable ? "" : " (this server did not calibrate it: only its own point can be applied)"}`;
  drawSiteCurve();
}

// x: the target's cost, y: the sensitivity on validation polyp frames where it is known; else x: the
// operating point, y: the target's cost.
function siteAxes(p) {
  const kind = targetKind(p);
  const cost = kind === "flagged_share" ?
    { key: "flagged_share", label: "polyp-free frames flagged", f: (v) => `${fmt(100 * v)}%`, zero: true } :
    { key: "false_alerts_per_minute", label: "false alerts per minute", f: (v) => fmt(v), zero: true };
  const target = p.target[kind];
  if (site.rows.some((r) => r.sensitivity !== null && r.sensitivity !== undefined)) {
    return { x: cost, y: { key: "sensitivity", label: "sensitivity", f: (v) => `${fmt(100 * v)}%`, zero: true, one: true },
             target: { axis: "x", value: target } };
  }
  return { x: { key: "operating_point", label: `operating point (polyp score, ${p.verdict})`, f: (v) => fmt(v) }, y: cost,
           target: { axis: "y", value: target } };
}

function drawSiteCurve() {
  const canvas = $("site-curve"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const pad = { left: 62, right: 16, top: 14, bottom: 42 };
  const axes = siteAxes(site.profile);
  const known = (v) => v !== null && v !== undefined && Number.isFinite(v);
  ctx.fillStyle = "#1d2229";
  ctx.fillRect(0, 0, W, H);
  const xs = site.rows.map((r) => r[axes.x.key]).filter(known), ys = site.rows.map((r) => r[axes.y.key]).filter(known);
  if (axes.target.axis === "x") xs.push(axes.target.value); else ys.push(axes.target.value);
  const range = (values, axis) => {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (axis.zero) lo = Math.min(0, lo);
    if (axis.one) hi = Math.max(1, hi);
    if (!(hi > lo)) hi = lo + 1;
    return [lo, hi];
  };
  const [x0, x1] = range(xs, axes.x), [y0, y1] = range(ys, axes.y);
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (W - pad.left - pad.right);
  const py = (y) => H - pad.bottom - ((y - y0) / (y1 - y0)) * (H - pad.top - pad.bottom);

  // axes, three labelled ticks each, and their names
  ctx.strokeStyle = "#667";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(pad.left, pad.top);
  ctx.lineTo(pad.left, H - pad.bottom);
  ctx.lineTo(W - pad.right, H - pad.bottom);
  ctx.stroke();
  ctx.fillStyle = "#aab";
  ctx.font = "11px system-ui";
  for (const k of [0, 0.5, 1]) {
    const x = x0 + k * (x1 - x0), y = y0 + k * (y1 - y0);
    ctx.textAlign = k === 0 ? "left" : k === 1 ? "right" : "center";
    ctx.fillText(axes.x.f(x), px(x), H - pad.bottom + 14);
    ctx.textAlign = "right";
    ctx.fillText(axes.y.f(y), pad.left - 5, py(y) + 4);
  }
  ctx.textAlign = "center";
  ctx.fillText(axes.x.label, pad.left + (W - pad.left - pad.right) / 2, H - 8);
  ctx.save();
  ctx.translate(13, pad.top + (H - pad.top - pad.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(axes.y.label, 0, 0);
  ctx.restore();

  // the target, dashed
  ctx.strokeStyle = "#d0d0d0";
  ctx.setLineDash([5, 4]);
  ctx.beginPath();
  if (axes.target.axis === "x") {
    ctx.moveTo(px(axes.target.value), pad.top);
    ctx.lineTo(px(axes.target.value), H - pad.bottom);
  } else {
    ctx.moveTo(pad.left, py(axes.target.value));
    ctx.lineTo(W - pad.right, py(axes.target.value));
  }
  ctx.stroke();
  ctx.setLineDash([]);

  // the curve, one dot per stop
  site.pixels = site.rows.map((r) => (known(r[axes.x.key]) && known(r[axes.y.key]) ? [px(r[axes.x.key]), py(r[axes.y.key])] : null));
  ctx.strokeStyle = "#5aa0e6";
  ctx.lineWidth = 2;
  ctx.beginPath();
  let started = false;
  for (const xy of site.pixels) {
    if (!xy) continue;
    if (started) ctx.lineTo(...xy); else ctx.moveTo(...xy);
    started = true;
  }
  ctx.stroke();
  ctx.fillStyle = "#5aa0e6";
  for (const xy of site.pixels) if (xy) ctx.fillRect(xy[0] - 1.5, xy[1] - 1.5, 3, 3);

  // the profile's point (amber ring) and the slider's (green dot, with guides to the axes)
  const own = site.pixels[site.rows.findIndex((r) => r.own)];
  if (own) {
    ctx.strokeStyle = AMBER;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(own[0], own[1], 8, 0, 2 * Math.PI);
    ctx.stroke();
  }
  const now = site.pixels[site.index];
  if (now) {
    ctx.strokeStyle = "rgba(63, 191, 95, 0.6)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(now[0], H - pad.bottom);
    ctx.lineTo(now[0], now[1]);
    ctx.lineTo(pad.left, now[1]);
    ctx.stroke();
    ctx.fillStyle = "#3fbf5f";
    ctx.beginPath();
    ctx.arc(now[0], now[1], 5, 0, 2 * Math.PI);
    ctx.fill();
  }
}

// a click on the curve moves the slider to the nearest stop
$("site-curve").addEventListener("click", (e) => {
  const canvas = e.currentTarget;
  const x = (e.offsetX * canvas.width) / canvas.clientWidth, y = (e.offsetY * canvas.height) / canvas.clientHeight;
  let best = -1, distance = Infinity;
  site.pixels.forEach((xy, i) => {
    if (!xy) return;
    const d = Math.hypot(xy[0] - x, xy[1] - y);
    if (d < distance) { best = i; distance = d; }
  });
  if (best >= 0) moveTo(best);
});

// Apply: the point moved to is saved in the profile (costs measured again on the server), and the server
// judges new frames, videos and live connections with the profile from now on.
$("site-apply").addEventListener("click", async () => {
  const p = site.profile, row = site.rows[site.index], status = $("site-apply-status");
  status.className = "";
  try {
    $("site-apply").disabled = true;
    let profile = p;
    if (row.operating_point !== p.operating_point) {
      profile = await api(siteUrl(p.name, "/point"), { method: "PUT", headers: { "Content-Type": "application/json" },
                                                       body: JSON.stringify({ operating_point: row.operating_point }) });
    }
    model = await api(siteUrl(p.name, "/apply"), { method: "POST", body: "" });
    $("model").textContent = describeModel(model);
    showSite(profile);
    await listSites(p.name);
    status.textContent = `applied: this server now flags frames at operating point ${fmt(model.operating_point)} (site ${model.site})`;
  } catch (err) {
    siteError("site-apply-status", err);
  } finally {
    $("site-apply").disabled = false;
  }
});
