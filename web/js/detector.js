// The scene-mode ONNX in onnxruntime-web: execution-provider choice, session, one call per image.
//
// Providers: "webgpu" when the browser exposes a WebGPU adapter (falls back to WASM if the adapter or the
// session cannot be created), else "wasm" (SIMD; multi-threaded when the page is cross-origin isolated, which
// `mouaadnet web` makes it with COOP/COEP headers). The ONNX has decoding in the graph: outputs boxes [1,K,4]
// (input px), scores, gender (P(female)), age [1,K].

import { postprocess, preprocessRgb } from "./preprocess.js";

export const INPUT_NAME = "images";
export const OUTPUT_NAMES = ["boxes", "scores", "gender", "age"];

/** Threads used when none are asked for: every core up to 4 when isolated (SharedArrayBuffer), else 1. */
export function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

async function webgpuAdapter() {
  if (!("gpu" in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

/**
 * Create a detector. options: {modelUrl, ep: "auto"|"wasm"|"webgpu", threads}. Returns an object with
 * info (ep, threads, simd, isolated, fallback reason) and detect(rgb, w, h, threshold).
 */
export async function createDetector({ modelUrl, ep = "auto", threads = null }) {
  const wantGpu = ep === "webgpu" || ep === "auto";
  const adapter = wantGpu ? await webgpuAdapter() : null;
  let fallback = null;
  if (ep === "webgpu" && !adapter) fallback = "WebGPU requested but this browser offers no WebGPU adapter";
  // The WebGPU build also carries the WASM provider; the WASM-only build is smaller and loads faster.
  const ort = adapter ? await import("onnxruntime-web/webgpu") : await import("onnxruntime-web/wasm");
  const numThreads = threads ?? defaultThreads();
  ort.env.wasm.numThreads = numThreads;
  ort.env.logLevel = "error";

  const response = await fetch(modelUrl);
  if (!response.ok) throw new Error(`${modelUrl}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  const sha256 = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");

  const base = { graphOptimizationLevel: "all" };
  let session = null;
  let provider = "wasm";
  if (adapter) {
    try {
      session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ["webgpu"] });
      provider = "webgpu";
    } catch (error) {
      fallback = `WebGPU session failed (${error.message}); using WASM`;
    }
  }
  if (!session) session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ["wasm"] });

  const meta = session.inputMetadata?.[0];
  const shape = meta?.shape ?? [];
  const size = Number.isInteger(shape[2]) ? shape[2] : 320;
  const missing = OUTPUT_NAMES.filter((n) => !session.outputNames.includes(n));
  if (session.inputNames[0] !== INPUT_NAME || missing.length) {
    throw new Error(`not a scene-mode MouaadNet ONNX: inputs ${session.inputNames}, outputs ${session.outputNames}`);
  }

  const info = {
    ep: provider, threads: provider === "wasm" ? ort.env.wasm.numThreads : null,
    requestedThreads: numThreads, isolated: Boolean(globalThis.crossOriginIsolated), simd: true,
    size, sha256, bytes: bytes.length, ortVersion: ort.env.versions?.web ?? "?", fallback,
  };

  /** Run the ONNX on a preprocessed Float32Array [3,S,S]; returns raw outputs and the time in ms. */
  async function run(tensor) {
    const input = new ort.Tensor("float32", tensor, [1, 3, size, size]);
    const t0 = performance.now();
    const result = await session.run({ [INPUT_NAME]: input });
    const t1 = performance.now();
    const outputs = {};
    for (const name of OUTPUT_NAMES) {
      outputs[name] = result[name].cpuData ?? (await result[name].getData());
    }
    return { outputs, ms: t1 - t0 };
  }

  /** Packed RGB image -> {people, timings: {preprocess, inference, postprocess, total} ms, box}.
   *  `jpeg`: the pixels were decoded from a JPEG (see preprocessRgb). */
  async function detect(rgb, w, h, threshold, { jpeg = false } = {}) {
    const t0 = performance.now();
    const { tensor, box } = preprocessRgb(rgb, w, h, size, { jpeg });
    const t1 = performance.now();
    const { outputs, ms } = await run(tensor);
    const t2 = performance.now();
    const people = postprocess(outputs, box, threshold);
    const t3 = performance.now();
    return {
      people, box, outputs,
      timings: { preprocess: t1 - t0, inference: ms, postprocess: t3 - t2, total: t3 - t0 },
    };
  }

  return { info, run, detect, session };
}
