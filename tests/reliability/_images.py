"""Image bytes for the bad-input matrix: good photos, corrupt files, bombs and odd-but-valid encodings."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def good_jpeg() -> bytes:
    return encode(photo(), "JPEG", quality=90)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height with a tiny body: a decompression-bomb stand-in."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + png_chunk(b"IEND", b""))


def png_bad_idat_crc() -> bytes:
    """A valid PNG whose first IDAT chunk's CRC is wrong (the pixel data itself would still inflate)."""
    data = bytearray(encode(photo(), "PNG"))
    pos = data.find(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    crc_at = pos + 8 + length
    data[crc_at] ^= 0xFF
    return bytes(data)


def png_damaged_idat() -> bytes:
    """One byte of compressed pixel data flipped (its CRC now fails too)."""
    data = bytearray(encode(photo(), "PNG"))
    pos = data.find(b"IDAT")
    data[pos + 4 + 300] ^= 0x55
    return bytes(data)


def jpeg_zeroed() -> bytes:
    """2000 bytes zeroed a third of the way into the entropy-coded data (libjpeg: premature end of segment)."""
    data = bytearray(good_jpeg())
    start = len(data) // 3
    data[start:start + 2000] = b"\0" * 2000
    return bytes(data)


def jpeg_truncated() -> bytes:
    data = good_jpeg()
    return data[: len(data) // 3]


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=90)


def png16_and_png8() -> tuple[bytes, bytes]:
    """The same grey picture as a 16-bit and an 8-bit PNG (values v and v * 257)."""
    grey = np.asarray(Image.fromarray(photo()).convert("L"))
    return encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), encode(grey, "PNG")


def rgba_png() -> bytes:
    rgba = np.dstack([photo(), np.full(photo().shape[:2], 128, np.uint8)])
    return encode(rgba, "PNG")


def animated_gif() -> bytes:
    frames = [Image.fromarray(photo()).convert("P"), Image.fromarray(photo()[::-1].copy()).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 320x200 JPEG tagged orientation 6 (rotate 90° clockwise to view): upright it is 200x320."""
    image = Image.fromarray(np.asarray(Image.fromarray(photo()).resize((320, 200))))
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


def ppm() -> bytes:
    return encode(photo(), "PPM")


def tiny_png(w: int = 1, h: int = 1) -> bytes:
    return encode(np.full((h, w, 3), 200, np.uint8), "PNG")


def huge_png() -> bytes:
    """16384 x 3051 (50 MP, just inside the per-image limit) but only ~260 KB: expensive to decode."""
    array = np.zeros((3051, 16384, 3), np.uint8)
    array[::7] = 200
    array[:, ::13, 1] = 90
    return encode(array, "PNG", compress_level=1)


# Crafted damage that keeps every checksum the container has (issue 24): the pixel data itself is wrong.
def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_with_idat(idat: bytes, source: bytes) -> bytes:
    keep = [(tag, body) for tag, body in _png_chunks(source) if tag not in (b"IDAT", b"IEND")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(t, b) for t, b in keep + [(b"IDAT", idat), (b"IEND", b"")])


def _scene416() -> np.ndarray:
    return photo()[:416]  # 512x416, as in the case


def png_idat_zeroed_valid_crc() -> bytes:
    """2000 bytes of the compressed pixel data zeroed, every chunk CRC recomputed (Pillow: rows left black)."""
    source = encode(_scene416(), "PNG")
    idat = bytearray(b"".join(body for tag, body in _png_chunks(source) if tag == b"IDAT"))
    start = len(idat) // 10
    idat[start:start + 2000] = bytes(2000)
    return _png_with_idat(bytes(idat), source)


def png_half_rows() -> bytes:
    """A valid zlib stream holding only the first half of the rows the header announces (valid CRCs)."""
    source = encode(_scene416(), "PNG")
    raw = zlib.decompress(b"".join(body for tag, body in _png_chunks(source) if tag == b"IDAT"))
    row = 1 + 512 * 3
    return _png_with_idat(zlib.compress(raw[: 208 * row]), source)


def _zeroed(data: bytes, length: int = 2000) -> bytes:
    out = bytearray(data)
    start = len(out) // 3
    out[start:start + length] = bytes(length)
    return bytes(out)


def webp_zeroed() -> bytes:
    return _zeroed(encode(_scene416(), "WEBP", quality=80))


def webp_truncated() -> bytes:
    data = encode(_scene416(), "WEBP", quality=80)
    return data[: len(data) // 2]


def tiff_deflate_zeroed() -> bytes:
    return _zeroed(encode(_scene416(), "TIFF", compression="tiff_adobe_deflate"))


def decode_bomb_png() -> bytes:
    """48.6 KB that decode to 50 MP (8192x6103 grey zeros): inside every per-request limit, ~0.7 s of decoding."""
    return encode(np.zeros((6103, 8192), np.uint8), "PNG", compress_level=9)
