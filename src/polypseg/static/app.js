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

// --- tabs and the model card -------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab, .panel").forEach((el) => el.classList.remove("active"));
    tab.classList.add("active");
    $(tab.dataset.tab).classList.add("active");
  });
}

api("/api/v1/model").then((m) => {
  $("model").textContent = `${m.name}: ${m.architecture}, input ${m.input.join("x")}, threshold ${m.threshold}` +
    ` (${m.runtime || m.backend} on ${m.device}). Trained on ${m.training_data}.`;
  setThreshold(m.threshold);
}).catch((err) => { $("model").textContent = `model: ${err.message}`; });

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

function verdictText({ present, score, point }) {
  const against = point === null ? "" : ` ${present ? "≥" : "<"} ${point.toFixed(2)}`;
  return present ? `<b>polyp</b> (score ${score.toFixed(2)}${against})` : `<b>no polyp</b>, score ${score.toFixed(2)}${against}`;
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
    $("video-summary").textContent = `${r.frames} frames, polyp seen in ${r.polyp_frames}; ${s.alerts} alert(s),` +
      ` ${s.alerts_per_minute.toFixed(1)} per minute, alerted ${(100 * s.alerted_share).toFixed(0)}% of the time;` +
      ` ${r.fps} fps on the server`;
    $("video-player").src = job.video_url;
    $("video-csv").href = job.csv_url;
    $("video-events").href = job.events_url;
    $("video-csv").classList.remove("hidden");
    $("video-events").classList.remove("hidden");
    drawTimeline(r.timeline, r.alert);
    listAlerts(r.events);
  } catch (err) {
    status.textContent = `error: ${err.message}`;
    status.className = "error";
  }
});

// the verdict per frame in green, the frames under an alert as an amber band on top
function drawTimeline(timeline, alerts) {
  const canvas = $("timeline"), ctx = canvas.getContext("2d");
  ctx.fillStyle = "#2b3340";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const step = canvas.width / Math.max(1, timeline.length), band = Math.round(canvas.height / 3);
  ctx.fillStyle = "#3fbf5f";
  timeline.forEach((seen, i) => { if (seen) ctx.fillRect(i * step, band, Math.max(1, step), canvas.height - band); });
  ctx.fillStyle = AMBER;
  alerts.forEach((on, i) => { if (on) ctx.fillRect(i * step, 0, Math.max(1, step), band); });
  canvas.onclick = (e) => {
    const video = $("video-player");
    if (video.duration) video.currentTime = (e.offsetX / canvas.clientWidth) * video.duration;
  };
}

const clock = (ms) => `${Math.floor(ms / 60000)}:${(ms / 1000 % 60).toFixed(1).padStart(4, "0")}`;

function listAlerts(events) {
  const list = $("video-alerts");
  for (const e of events) {
    const item = document.createElement("li");
    if (e.thumbnail_url) {
      const img = document.createElement("img");
      img.src = e.thumbnail_url;
      img.alt = `alert ${e.index}`;
      item.append(img);
    }
    item.append(`${clock(e.start_ms)}–${clock(e.end_ms)} · ${(e.duration_ms / 1000).toFixed(1)} s · peak ${e.peak_score.toFixed(2)}`);
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
  $("live-score").textContent = answer.polyp_score.toFixed(2);
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
  ctx.fillRect(0, 0, 210, 22);
  ctx.fillStyle = answer.polyp_present ? "rgb(0, 255, 0)" : "#fff";
  ctx.font = "14px system-ui";
  ctx.fillText(`polyp ${(100 * answer.area_fraction).toFixed(1)}% · score ${answer.polyp_score.toFixed(2)}`, 6, 16);
}
