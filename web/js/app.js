// The page: pick a photo / sample / webcam -> detector -> boxes with P(female) and age, runtime facts, latency.
// Query parameters: ?model=NAME&ep=auto|wasm|webgpu&threads=N (threads and provider are fixed per page load:
// onnxruntime-web starts its WASM threads once). window.mouaadnet is the hook the browser tests drive.

import { createDetector } from "./detector.js";
import { decodeBlob, DEFAULT_THRESHOLD, ImageError, pixelsOf, preprocessRgb } from "./preprocess.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { detector: null, config: null, threshold: Number(params.get("threshold") ?? DEFAULT_THRESHOLD),
                source: null, last: null, webcam: null, recent: [] };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function colour(person) {
  return person.gender === "female" ? "rgb(230,60,160)" : "rgb(40,140,240)";
}

function draw(source, w, h, people) {
  const canvas = $("view");
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, w, h);
  const line = Math.max(2, Math.round(Math.max(w, h) / 300));
  const fontPx = Math.max(12, Math.round(Math.max(w, h) / 45));
  ctx.font = `${fontPx}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const p of people) {
    const [x1, y1, x2, y2] = p.box;
    ctx.strokeStyle = colour(p);
    ctx.lineWidth = line;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `P(f) ${p.p_female.toFixed(2)} · ${p.age.toFixed(0)} y`;
    const tw = ctx.measureText(label).width + 6;
    const ty = Math.max(0, y1 - fontPx - 4);
    const tx = Math.max(0, Math.min(x1, w - tw)); // keep the label inside the picture
    ctx.fillStyle = colour(p);
    ctx.fillRect(tx, ty, tw, fontPx + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, tx + 3, ty + 2);
  }
}

function showPeople(people) {
  const body = $("people").querySelector("tbody");
  body.replaceChildren(...people.map((p, i) => {
    const row = document.createElement("tr");
    for (const v of [i + 1, p.score.toFixed(3), p.p_female.toFixed(3), p.age.toFixed(1)]) {
      const cell = document.createElement("td");
      cell.textContent = v;
      row.append(cell);
    }
    return row;
  }));
}

function p50(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

function showLatency(t) {
  state.recent.push(t.total);
  if (state.recent.length > 30) state.recent.shift();
  $("latency").textContent = `${t.total.toFixed(1)} ms/frame (model ${t.inference.toFixed(1)}, pre ` +
    `${t.preprocess.toFixed(1)}, post ${t.postprocess.toFixed(1)}); p50 of last ${state.recent.length}: ` +
    `${p50(state.recent).toFixed(1)} ms`;
}

/** Run on packed RGB and show the result; `source` is what gets drawn (bitmap, video). */
async function runOn(rgb, w, h, source, jpeg = false) {
  const result = await state.detector.detect(rgb, w, h, state.threshold, { jpeg });
  state.last = { rgb, w, h, source, jpeg, result };
  draw(source, w, h, result.people);
  showPeople(result.people);
  showLatency(result.timings);
  return result;
}

async function runBlob(blob, name) {
  stopWebcam();
  try {
    const { bitmap, rgb, w, h, jpeg } = await decodeBlob(blob);
    const result = await runOn(rgb, w, h, bitmap, jpeg);
    setStatus(`${name}: ${w}x${h}, ${result.people.length} ${result.people.length === 1 ? "person" : "people"} ` +
      `at score >= ${state.threshold.toFixed(2)}`);
    return result;
  } catch (error) {
    setStatus(error instanceof ImageError ? `${name}: ${error.message}` : `${name}: ${error}`, true);
    throw error;
  }
}

async function fetchBlob(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.blob();
}

// ------------------------------------------------------------------------------------------------ webcam

async function startWebcam() {
  const video = $("video");
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  video.srcObject = stream;
  await video.play();
  state.webcam = { stream, frames: 0 };
  $("webcam").textContent = "Stop webcam";
  setStatus("webcam: running");
  const loop = async () => {
    if (!state.webcam) return;
    const w = video.videoWidth, h = video.videoHeight;
    if (w && h) {
      const result = await runOn(pixelsOf(video, w, h), w, h, video);
      state.webcam && (state.webcam.frames += 1);
      setStatus(`webcam ${w}x${h}: ${result.people.length} ${result.people.length === 1 ? "person" : "people"}`);
    }
    requestAnimationFrame(loop); // one frame in flight at a time: a slow model drops frames, never queues them
  };
  requestAnimationFrame(loop);
}

function stopWebcam() {
  if (!state.webcam) return;
  for (const track of state.webcam.stream.getTracks()) track.stop();
  state.webcam = null;
  $("webcam").textContent = "Start webcam";
}

// ------------------------------------------------------------------------------------------------ set-up

function reloadWith(key, value) {
  const next = new URLSearchParams(location.search);
  if (value) next.set(key, value); else next.delete(key);
  location.search = next.toString();
}

async function main() {
  const config = await (await fetch("api/config")).json();
  state.config = config;
  const names = config.models.map((m) => m.name);
  const chosen = config.models.find((m) => m.name === params.get("model")) ?? config.models[0];
  $("model").replaceChildren(...config.models.map((m) => new Option(`${m.name} (${m.precision})`, m.name)));
  $("model").value = chosen.name;
  $("ep").value = params.get("ep") ?? "auto";
  $("threads").value = params.get("threads") ?? "";
  $("threshold").value = state.threshold;
  $("threshold-value").textContent = state.threshold.toFixed(2);
  for (const sample of config.samples) {
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: sample.name,
                                                                       className: "secondary" });
    button.addEventListener("click", async () => runBlob(await fetchBlob(sample.url), sample.name).catch(() => {}));
    $("samples").append(button);
  }

  const threads = params.get("threads") ? Number(params.get("threads")) : null;
  state.detector = await createDetector({ modelUrl: chosen.url, ep: params.get("ep") ?? "auto", threads });
  const info = state.detector.info;
  info.model = chosen;
  info.shaMatches = info.sha256 === chosen.sha256;
  $("model-name").textContent = `${chosen.file} · ${chosen.precision} · ${chosen.version} · ` +
    `${(info.bytes / 1e6).toFixed(2)} MB · input ${info.size}px`;
  $("model-sha").textContent = info.sha256 + (info.shaMatches ? "  ✓ matches the server's" : "  ✗ differs from the server's");
  $("provider").textContent = info.ep === "webgpu" ? "WebGPU"
    : `WASM SIMD, ${info.threads} thread${info.threads === 1 ? "" : "s"}` +
      (info.isolated ? " (cross-origin isolated)" : " (not cross-origin isolated: 1 thread)");
  if (info.fallback) $("provider").textContent += ` — ${info.fallback}`;
  $("provider").textContent += ` · onnxruntime-web ${info.ortVersion}`;
  setStatus(`Ready (${names.length > 1 ? names.length + " models" : chosen.name}). Choose a photo, a sample or the webcam.`);

  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) runBlob(file, file.name).catch(() => {});
  });
  $("webcam").addEventListener("click", () => {
    if (state.webcam) stopWebcam();
    else startWebcam().catch((error) => setStatus(`webcam: ${error.message}`, true));
  });
  $("threshold").addEventListener("input", () => {
    state.threshold = Number($("threshold").value);
    $("threshold-value").textContent = state.threshold.toFixed(2);
    if (state.last && !state.webcam) runOn(state.last.rgb, state.last.w, state.last.h, state.last.source, state.last.jpeg);
  });
  $("model").addEventListener("change", () => reloadWith("model", $("model").value));
  $("ep").addEventListener("change", () => reloadWith("ep", $("ep").value === "auto" ? "" : $("ep").value));
  $("threads").addEventListener("change", () => reloadWith("threads", $("threads").value));
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

const ready = main();
ready.catch((error) => setStatus(`could not start: ${error.message ?? error}`, true));

// Hooks for tests and benchmarks (tests/test_web_browser.py, mouaadnet/apps/web_bench.py).
window.mouaadnet = {
  ready: ready.then(() => state.detector.info),
  /** The float32 [3,S,S] input tensor the page builds for an image URL, base64 of its little-endian bytes. */
  async preprocess(url) {
    await ready;
    const { rgb, w, h, jpeg } = await decodeBlob(await fetchBlob(url));
    const { tensor, box, draft } = preprocessRgb(rgb, w, h, state.detector.info.size, { jpeg });
    return { tensor: toBase64(new Uint8Array(tensor.buffer)), box, draft };
  },
  /** Detections for an image URL, as shown on the page. */
  async detect(url, threshold = DEFAULT_THRESHOLD) {
    await ready;
    state.threshold = threshold;
    const result = await runBlob(await fetchBlob(url), url.split("/").pop());
    return { people: result.people, timings: result.timings, box: result.box };
  },
  /** Model-call latency in ms for `runs` calls on one image after `warmup` calls. */
  async bench(url, runs = 50, warmup = 5) {
    await ready;
    const { rgb, w, h, jpeg } = await decodeBlob(await fetchBlob(url));
    const { tensor } = preprocessRgb(rgb, w, h, state.detector.info.size, { jpeg });
    const times = [];
    for (let i = 0; i < warmup + runs; i++) {
      const { ms } = await state.detector.run(tensor);
      if (i >= warmup) times.push(ms);
    }
    return times;
  },
  webcamFrames: () => state.webcam?.frames ?? 0,
  startWebcam: () => startWebcam(),
  stopWebcam: () => stopWebcam(),
};
