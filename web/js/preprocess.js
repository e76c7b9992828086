// Pre- and post-processing equal to mouaadnet/serving/prepost.py, in plain JS (no DOM except the decoders).
//
// letterbox: scale = size / max(w, h); new size = round-half-even(w * scale), (h * scale) (Python's round);
// resize with Pillow's BILINEAR filter, reimplemented exactly (Resample.c: triangle filter whose support grows
// with the downscale factor, 22-bit fixed-point coefficients, horizontal pass then vertical pass, each rounded
// to 8 bits); paste centred on grey 114; then float32 CHW RGB / 255 computed as uint8 * float32(1/255) with one
// float32 rounding, as numpy does. tests/test_web_browser.py checks the tensor bit for bit against
// mouaadnet.serving.prepost.preprocess_one on real photos.

export const PAD_VALUE = 114;
export const DEFAULT_THRESHOLD = 0.3;
// Decompression-bomb bounds of prepost (MAX_PIXELS, MAX_SIDE).
export const MAX_PIXELS = 50_000_000;
export const MAX_SIDE = 16_384;
const PRECISION_BITS = 22; // Pillow: 32 - 8 - 2 bits for 8-bit images
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const INV255 = Math.fround(1 / 255);

/** Python's round() for x >= 0: half to even. */
export function roundHalfEven(x) {
  const r = Math.round(x); // half up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** prepost.letterbox_geometry: where a width x height image goes inside size x size. */
export function letterboxGeometry(width, height, size) {
  const scale = size / Math.max(width, height);
  const newW = Math.max(1, roundHalfEven(width * scale));
  const newH = Math.max(1, roundHalfEven(height * scale));
  return {
    scale, padX: Math.floor((size - newW) / 2), padY: Math.floor((size - newH) / 2),
    origW: width, origH: height, newW, newH,
  };
}

/** Pillow precompute_coeffs (bilinear) + normalize_coeffs_8bpc for inSize -> outSize. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale; // bilinear filter support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const w = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      weights[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { weights, bounds, ksize };
}

function clip8(v) {
  const q = v >> PRECISION_BITS;
  return q < 0 ? 0 : q > 255 ? 255 : q;
}

/** Horizontal pass on packed RGB rows: (inW x h) -> (outW x h). */
function resampleHorizontal(src, inW, h, outW) {
  const { weights, bounds, ksize } = coefficients(inW, outW);
  const out = new Uint8Array(outW * h * 3);
  for (let y = 0; y < h; y++) {
    const row = y * inW * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[2 * xx], xmax = bounds[2 * xx + 1], k0 = xx * ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let x = 0; x < xmax; x++) {
        const k = weights[k0 + x], p = row + (xmin + x) * 3;
        s0 += src[p] * k; s1 += src[p + 1] * k; s2 += src[p + 2] * k;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** Vertical pass on packed RGB: (w x inH) -> (w x outH). */
function resampleVertical(src, w, inH, outH) {
  const { weights, bounds, ksize } = coefficients(inH, outH);
  const out = new Uint8Array(w * outH * 3);
  const stride = w * 3;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[2 * yy], ymax = bounds[2 * yy + 1], k0 = yy * ksize;
    for (let x = 0; x < stride; x++) {
      let s = HALF;
      for (let y = 0; y < ymax; y++) s += src[(ymin + y) * stride + x] * weights[k0 + y];
      out[yy * stride + x] = clip8(s);
    }
  }
  return out;
}

/** Pillow Image.resize((outW, outH), BILINEAR) of a packed RGB image (same passes, same rounding). */
export function resizeBilinear(rgb, w, h, outW, outH) {
  if (outW === w && outH === h) return rgb;
  let img = rgb;
  if (outW !== w) img = resampleHorizontal(img, w, h, outW);
  if (outH !== h) img = resampleVertical(img, outW, h, outH);
  return img;
}

/** RGBA (canvas ImageData) -> packed RGB; transparency composited over the letterbox grey (prepost._to_rgb). */
export function rgbaToRgb(rgba, w, h) {
  const n = w * h;
  const out = new Uint8Array(n * 3);
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const a = rgba[j + 3];
    if (a === 255) {
      out[3 * i] = rgba[j]; out[3 * i + 1] = rgba[j + 1]; out[3 * i + 2] = rgba[j + 2];
    } else {
      for (let c = 0; c < 3; c++) out[3 * i + c] = Math.round((rgba[j + c] * a + PAD_VALUE * (255 - a)) / 255);
    }
  }
  return out;
}

/**
 * Packed RGB (w x h) -> {image: size x size x 3 uint8 letterboxed, box}; `box` (default: from w, h) is the
 * geometry of the full-size image when `rgb` is a reduced decode of it (prepost.letterbox_image's full_size).
 */
export function letterbox(rgb, w, h, size, box = letterboxGeometry(w, h, size)) {
  const resized = resizeBilinear(rgb, w, h, box.newW, box.newH);
  const out = new Uint8Array(size * size * 3).fill(PAD_VALUE);
  const rowBytes = box.newW * 3;
  for (let y = 0; y < box.newH; y++) {
    out.set(resized.subarray(y * rowBytes, (y + 1) * rowBytes), ((box.padY + y) * size + box.padX) * 3);
  }
  return { image: out, box };
}

/** size x size x 3 uint8 -> Float32Array [3, size, size] in [0, 1] (prepost.normalize). */
export function normalize(image, size) {
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    out[i] = image[3 * i] * INV255;
    out[plane + i] = image[3 * i + 1] * INV255;
    out[2 * plane + i] = image[3 * i + 2] * INV255;
  }
  return out;
}

export class ImageError extends Error {}

export function checkSize(w, h) {
  if (w < 1 || h < 1) throw new ImageError(`image has no pixels (${w}x${h})`);
  if (w > MAX_SIDE || h > MAX_SIDE || w * h > MAX_PIXELS) {
    throw new ImageError(`image too large: ${w}x${h} (${(w * h / 1e6).toFixed(1)} MP); limits are ` +
      `${MAX_SIDE} px per side and ${MAX_PIXELS / 1e6} MP`);
  }
}

/** True for JPEG bytes (SOI marker). */
export function isJpeg(bytes) {
  return bytes.length > 2 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
}

/**
 * The DCT scale (1, 2, 4 or 8) at which prepost.decode_image has libjpeg decode a JPEG: Pillow's draft() picks
 * the largest that keeps at least the letterboxed size.
 */
export function draftScale(w, h, size) {
  const s = size / Math.max(w, h);
  if (s >= 1) return 1;
  const k = Math.min(Math.floor(w / Math.ceil(w * s)), Math.floor(h / Math.ceil(h * s)));
  return [8, 4, 2, 1].find((c) => k >= c);
}

/**
 * Approximation of libjpeg's scaled decoding: the mean of each sc x sc block (edges replicated), rounded.
 * A browser cannot decode at a reduced DCT scale; this keeps large JPEGs close to Python (docs/BENCHMARKS.md,
 * "Browser": measured differences), not equal.
 */
export function blockMean(rgb, w, h, sc) {
  const ow = Math.ceil(w / sc), oh = Math.ceil(h / sc);
  const out = new Uint8Array(ow * oh * 3);
  const n = sc * sc;
  for (let oy = 0; oy < oh; oy++) {
    for (let ox = 0; ox < ow; ox++) {
      let r = 0, g = 0, b = 0;
      for (let dy = 0; dy < sc; dy++) {
        const y = Math.min(oy * sc + dy, h - 1);
        for (let dx = 0; dx < sc; dx++) {
          const p = (y * w + Math.min(ox * sc + dx, w - 1)) * 3;
          r += rgb[p]; g += rgb[p + 1]; b += rgb[p + 2];
        }
      }
      const o = (oy * ow + ox) * 3;
      out[o] = Math.floor(r / n + 0.5); out[o + 1] = Math.floor(g / n + 0.5); out[o + 2] = Math.floor(b / n + 0.5);
    }
  }
  return { rgb: out, w: ow, h: oh };
}

/**
 * Packed RGB -> {tensor: Float32Array [3,S,S], box, letterboxed: Uint8Array, draft}. With `jpeg`, a photo large
 * enough for prepost to decode it at a reduced DCT scale is first block-averaged at that scale (`blockMean`);
 * the letterbox geometry always refers to the full size, as in prepost.letterbox_image(full_size=...).
 */
export function preprocessRgb(rgb, w, h, size, { jpeg = false } = {}) {
  checkSize(w, h);
  const draft = jpeg ? draftScale(w, h, size) : 1;
  const full = letterboxGeometry(w, h, size);
  const src = draft > 1 ? blockMean(rgb, w, h, draft) : { rgb, w, h };
  const { image, box } = letterbox(src.rgb, src.w, src.h, size, full);
  return { tensor: normalize(image, size), box, letterboxed: image, draft };
}

/**
 * Model outputs (input pixels) -> people in original-image pixels, score >= threshold, model order
 * (prepost.postprocess + to_people for one image).
 */
export function postprocess(outputs, box, threshold = DEFAULT_THRESHOLD) {
  const { boxes, scores, gender, age } = outputs;
  const people = [];
  const f = Math.fround;
  const scale = f(box.scale);
  for (let j = 0; j < scores.length; j++) {
    if (!(scores[j] >= threshold)) continue;
    const b = [0, 1, 2, 3].map((c) => f(f(boxes[4 * j + c] - (c % 2 ? box.padY : box.padX)) / scale));
    const clipped = b.map((v, c) => Math.min(Math.max(v, 0), c % 2 ? box.origH : box.origW));
    const pFemale = gender[j];
    people.push({
      box: clipped, score: scores[j], p_female: pFemale,
      gender: pFemale >= 0.5 ? "female" : "male", age: age[j],
    });
  }
  return people;
}

// ------------------------------------------------------------------------------------------------ decoders

function context2d(w, h) {
  const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(w, h)
    : Object.assign(document.createElement("canvas"), { width: w, height: h });
  return canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
}

/** Anything drawImage takes (ImageBitmap, video, canvas) -> packed RGB at w x h, no colour management. */
export function pixelsOf(source, w, h) {
  const ctx = context2d(w, h);
  ctx.drawImage(source, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h, { colorSpace: "srgb" }).data;
  return rgbaToRgb(data, w, h);
}

/**
 * Encoded bytes (Blob) -> {bitmap, rgb, w, h, jpeg}. EXIF orientation applied (as prepost does); embedded colour
 * profiles ignored (Pillow ignores them too), alpha not premultiplied before compositing.
 */
export async function decodeBlob(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
    });
  } catch (error) {
    throw new ImageError(`not an image, or a truncated/corrupt one (${blob.size} bytes, type ` +
      `'${blob.type || "unknown"}'): ${error.message}`);
  }
  checkSize(bitmap.width, bitmap.height);
  const jpeg = isJpeg(new Uint8Array(await blob.slice(0, 3).arrayBuffer()));
  return { bitmap, rgb: pixelsOf(bitmap, bitmap.width, bitmap.height), w: bitmap.width, h: bitmap.height, jpeg };
}
