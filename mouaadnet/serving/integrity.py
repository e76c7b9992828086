"""Damage detection for encoded images, where the format gives a way (stdlib only; `prepost` calls these).

Pillow decodes damaged files without complaint in several cases (measured, docs/RELIABILITY.md): a PNG whose
IDAT bytes were zeroed and its chunk CRCs recomputed (the zlib stream breaks; Pillow stops there and leaves the
remaining rows black), a PNG that holds only half its rows (a complete zlib stream, too short), a deflate TIFF
with zeroed strip data (libtiff reports the error, Pillow keeps what it decoded). Their zlib streams carry their
own checksum (Adler-32) and the header gives the exact size of the pixel data, so:

- PNG: every chunk's CRC (before decoding), then the IDAT stream inflated on its own: it must inflate without
  error, end where the data ends and hold every row the header announces (decoded row count vs header);
- TIFF with deflate compression: every strip or tile must inflate without error to its full size;
- WebP has no checksum at all (RIFF, VP8 and VP8L carry none) and libwebp decodes zeroed data into plausible
  pixels, so two things are checked: the RIFF chunk structure (a truncated file: the header says how long it
  is), and runs of zero bytes inside the compressed bitstream: an arithmetic-coded (VP8) or entropy-coded (VP8L)
  stream practically never holds a long one. libwebp's own encoder was measured at most at 1 zero byte per
  ~10 000 pixels (flat 4000x3000 frames; photos far less), so a run longer than max(128 bytes, pixels / 2048)
  is called damage: a heuristic with a 5x margin on those measurements, not a checksum.
"""

from __future__ import annotations

import math
import struct
import zlib

_INFLATE_STEP = 1 << 20  # bytes of output per zlib call: memory stays bounded whatever the stream claims
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_WEBP_CODED = (b"VP8 ", b"VP8L", b"ALPH", b"ANMF")


class ImageError(ValueError):
    """The bytes are not a usable image (empty, not an image, truncated, too large). The message says which."""


def check_png_chunks(data: bytes) -> list[memoryview]:
    """Walk a PNG's chunks and check each one's CRC (Pillow checks none of IDAT's while decoding, so a damaged
    pixel stream would decode into wrong pixels); raises ImageError naming the chunk. Returns the IDAT payloads."""
    view, pos, n = memoryview(bytes(data)), 8, len(data)
    idat = []
    while pos < n:
        if pos + 12 > n:
            raise ImageError(f"truncated PNG: chunk header at byte {pos} is cut off ({n} bytes)")
        length, tag = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            raise ImageError(f"truncated PNG: chunk {tag.decode('latin-1')!r} at byte {pos} needs {length} bytes, "
                             f"the file ends after {n - pos - 8}")
        (crc,) = struct.unpack(">I", view[end:end + 4])
        if zlib.crc32(view[pos + 4:end]) & 0xFFFFFFFF != crc:
            raise ImageError(f"corrupt PNG: chunk {tag.decode('latin-1')!r} at byte {pos} fails its CRC check")
        if tag == b"IDAT":
            idat.append(view[pos + 8:end])
        if tag == b"IEND":
            return idat
        pos = end + 4
    raise ImageError(f"truncated PNG: no IEND chunk in {n} bytes")


def _png_raw_size(width: int, height: int, depth: int, color: int, interlaced: bool) -> tuple[int, int]:
    """(bytes of filtered pixel data the header announces, bytes per row of the full image incl. filter byte)."""
    bits = depth * _PNG_CHANNELS.get(color, 4)
    row = 1 + math.ceil(width * bits / 8)
    if not interlaced:
        return height * row, row
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols, rows = max(0, math.ceil((width - x0) / dx)), max(0, math.ceil((height - y0) / dy))
        if cols and rows:
            total += rows * (1 + math.ceil(cols * bits / 8))
    return total, row


def _inflate(parts, expected: int) -> tuple[int, str | None, bool]:
    """Inflate a zlib stream given in parts, up to ``expected`` bytes: (bytes out, zlib error or None, ended)."""
    stream, produced = zlib.decompressobj(), 0
    try:
        for part in parts:
            pending = part
            while pending and produced < expected and not stream.eof:
                produced += len(stream.decompress(pending, _INFLATE_STEP))
                pending = stream.unconsumed_tail
            if produced >= expected or stream.eof:
                break
    except zlib.error as error:
        return produced, str(error), False
    return produced, None, stream.eof or produced >= expected


def check_png_pixels(data: bytes, idat: list[memoryview] | None = None) -> None:
    """The IDAT zlib stream must inflate without error (Adler-32 included), end with the data and hold every row
    of the header's size; raises ImageError saying how much is there."""
    if idat is None:
        idat = check_png_chunks(data)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", bytes(data[16:29]))
    expected, row = _png_raw_size(width, height, depth, color, interlace == 1)
    produced, error, ended = _inflate(idat, expected)
    rows = f"{produced // row} of {height} rows" if interlace != 1 else f"{produced} of {expected} bytes (interlaced)"
    if error:
        raise ImageError("corrupt PNG: " + _zlib_problem("its pixel data (IDAT)", error, rows)
                         + " (every chunk CRC is valid: they were computed over the damaged data)")
    if not ended:
        raise ImageError(f"truncated PNG: its compressed pixel data (IDAT) stops inside the zlib stream; decodable: "
                         f"{rows}")
    if produced < expected:
        raise ImageError(f"truncated PNG: its pixel data holds {rows} the header announces ({width}x{height}); "
                         "the rest of the image is missing")


def _zlib_problem(what: str, error: str, decoded: str) -> str:
    if "incorrect data check" in error:
        return f"{what} fails its zlib checksum (Adler-32): the compressed bytes were changed after encoding"
    return f"{what} does not inflate ({error}) after {decoded}"


def _tag(image, number: int, default=None):
    value = image.tag_v2.get(number, default)
    return value if isinstance(value, tuple) else (value,) if value is not None else ()


def check_tiff_deflate(data: bytes, image) -> None:
    """A TIFF with deflate compression (8 / 32946): every strip or tile must inflate without error to its full
    size (``image``: Pillow's opened TiffImageFile, for its parsed tags). Other compressions are not checked."""
    if _tag(image, 259, 1)[:1] not in ((8,), (32946,)):
        return
    width, height = image.size
    spp = int(_tag(image, 277, 1)[0])
    bits = _tag(image, 258, 1)
    planar = int(_tag(image, 284, 1)[0]) == 2
    pixel_bits = int(bits[0]) if planar else int(sum(bits) if len(bits) == spp else bits[0] * spp)
    if 324 in image.tag_v2:  # tiles
        tile_w, tile_h = int(_tag(image, 322)[0]), int(_tag(image, 323)[0])
        offsets, counts = _tag(image, 324), _tag(image, 325)
        sizes = [tile_h * math.ceil(tile_w * pixel_bits / 8)] * len(offsets)
        unit = "tile"
    else:
        rows_per = min(int(_tag(image, 278, height)[0]), height)
        offsets, counts = _tag(image, 273), _tag(image, 279)
        per_plane = math.ceil(height / rows_per)
        sizes = [min(rows_per, height - (i % per_plane) * rows_per) * math.ceil(width * pixel_bits / 8)
                 for i in range(len(offsets))]
        unit = "strip"
    view = memoryview(bytes(data))
    for i, (offset, count, size) in enumerate(zip(offsets, counts, sizes)):
        if offset + count > len(data):
            raise ImageError(f"truncated TIFF: {unit} {i} needs bytes {offset}..{offset + count}, the file has "
                             f"{len(data)}")
        produced, error, ended = _inflate([view[offset:offset + count]], size)
        if error or not ended or produced < size:
            why = (_zlib_problem(f"deflate {unit} {i} of {len(offsets)}", error, f"{produced} of {size} bytes")
                   if error else f"deflate {unit} {i} of {len(offsets)} inflates to {produced} of its {size} bytes")
            raise ImageError(f"corrupt TIFF: {why}")


def webp_structure_problem(data: bytes) -> str | None:
    """What is wrong with a RIFF/WEBP container's chunk structure (truncation above all), or None."""
    n = len(data)
    if n < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    riff_end = int.from_bytes(data[4:8], "little") + 8
    if riff_end > n:
        return f"truncated WebP: its RIFF header says {riff_end} bytes, the file has {n}"
    pos = 12
    while pos + 8 <= riff_end:
        tag, size = bytes(data[pos:pos + 4]), int.from_bytes(data[pos + 4:pos + 8], "little")
        if pos + 8 + size > riff_end:
            return (f"truncated WebP: chunk {tag.decode('latin-1')!r} at byte {pos} needs {size} bytes, the file ends "
                    f"after {riff_end - pos - 8}")
        pos += 8 + size + (size & 1)
    return None


def check_webp_zeroed(data: bytes, width: int, height: int) -> None:
    """Refuse a WebP whose compressed bitstream holds a run of zero bytes an encoder does not write (see the
    module docstring: a heuristic, WebP has no checksum)."""
    limit = max(128, width * height // 2048)
    pos, end = 12, min(len(data), int.from_bytes(data[4:8], "little") + 8)
    while pos + 8 <= end:
        tag, size = bytes(data[pos:pos + 4]), int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag in _WEBP_CODED:
            found = data.find(b"\0" * (limit + 1), pos + 8, pos + 8 + size)
            if found >= 0:
                run = found + limit + 1
                while run < pos + 8 + size and data[run] == 0:
                    run += 1
                raise ImageError(
                    f"corrupt WebP: {run - found} zero bytes in a row at byte {found} inside its compressed "
                    f"{tag.decode('latin-1').strip()} data; an encoder writes at most ~{limit} for a "
                    f"{width}x{height} image (WebP carries no checksum: this is how zeroed data shows)")
        pos += 8 + size + (size & 1)
