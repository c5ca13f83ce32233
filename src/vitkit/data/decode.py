"""Safe image decoding shared by every vitkit entry point (predict, explain, features, training, serving).

:func:`open_image` turns a path, bytes, a binary file object or a PIL image into an RGB
``PIL.Image.Image``, and refuses what it should:

- **Pixel limit before decoding.** The size is read from the file header (PIL's lazy open)
  and ``width * height`` is compared with ``max_pixels`` *before* any pixel data is
  decoded. The default is :data:`DEFAULT_MAX_PIXELS`; pass ``max_pixels=`` per call
  (``None`` = no vitkit limit). vitkit never changes PIL's own global
  ``PIL.Image.MAX_IMAGE_PIXELS``: PIL still refuses images above twice that figure
  (~179 MP by default) when opening them, so allowing larger images also needs that
  global raised by the application itself; between once and twice that figure PIL emits
  its ``DecompressionBombWarning`` (vitkit leaves warning filters alone).
- **Truncated files are refused** (PIL reports them while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
  is False, its default, which vitkit never changes; if some other code has set it to True,
  PIL pads truncated data silently and vitkit warns about it on every call). A JPEG cut short
  and closed with an end-of-image marker (FF D9) decodes without any error in PIL (libjpeg only
  warns, and fills the rest with grey); vitkit refuses it too: see :func:`_refuse_incomplete_jpeg`.
- **EXIF orientation** (tags 2–8) is applied, so a phone photo stored sideways comes out upright.
- **Every PIL mode becomes RGB correctly**: transparent pixels (P with transparency, PA, LA,
  RGBA, La, RGBa) are composited over ``background`` (white by default) instead of
  showing whatever colour hides under them; CMYK is converted by PIL's formula (embedded
  ICC profiles are not applied); 16-bit grey (I;16, I;16B, I;16L) and 32-bit integer
  ("I", treated as the 16-bit range 0..65535) are rescaled to 8 bits, keeping their
  levels instead of clipping to white; float ("F") is clipped to 0..255; 1-bit becomes
  black/white.
- **First frame** of animations (GIF, APNG, WebP) and multi-page files (TIFF): frame 0.
- **Clear errors** naming the file for missing files, empty files, text, HTML and SVG
  (also when named ``.jpg``) and anything PIL cannot identify or decode: an
  :class:`ImageDecodeError` (a ``ValueError``) or ``FileNotFoundError``.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

# 1024**3 // 4 // 3: the same figure as PIL's default warning threshold, ~0.25 GiB of 8-bit RGB.
# A documented setting: override per call with open_image(..., max_pixels=N) (None = no limit).
DEFAULT_MAX_PIXELS = 89_478_485

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An input that is not a decodable image (empty, text, HTML, SVG, truncated, corrupt...)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than the allowed limit."""


def _source_name(src: object) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<PIL image>"
    name = getattr(src, "name", None)
    return name if isinstance(name, str) else "<file object>"


def _sniff(head: bytes) -> str:
    """Why ``head`` (the first bytes of something PIL could not identify) is not an image."""
    if not head:
        return "is empty (0 bytes)"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text) or b"<svg" in text[:256]:
        return ("is an SVG (vector XML) file, not a raster image; vitkit reads raster formats "
                "(JPEG, PNG, GIF, WebP, TIFF, BMP...): render it to PNG first")
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:256]:
        return "is an HTML page, not an image (a download that returned a web page?)"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "is a text file, not an image"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 3:  # a multi-byte character cut at the end of the sample
                return "is a text file, not an image"
    return "is not an image format PIL can read (unidentified data)"


def _read_head(src: ImageSource, fp: IO[bytes] | None) -> bytes:
    """The first bytes of a source PIL could not identify, to say what it is instead."""
    try:
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                return f.read(1024)
        fp.seek(0)
        return fp.read(1024)
    except (OSError, ValueError, AttributeError):
        return b"?"


def _open_lazy(src: ImageSource, name: str) -> tuple[Image.Image, bool]:
    """Open ``src`` reading only its header; returns (image, whether we should close it)."""
    if isinstance(src, Image.Image):
        return src, False
    fp: IO[bytes] | None = None
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise FileNotFoundError(f"image {path!r} does not exist")
        if os.path.isdir(path):
            raise IsADirectoryError(f"image {path!r} is a folder, not an image file")
    elif hasattr(src, "read"):
        fp = src  # the caller's binary file object; left open for the caller to close
    else:
        raise TypeError(f"open_image takes a path, bytes, a binary file object or a PIL image, "
                        f"got {type(src).__name__}")
    try:
        # a path is opened (and, on failure, closed) by PIL itself
        # no warnings.catch_warnings() here: it swaps a process-wide filter list (not thread-safe)
        img = Image.open(fp if fp is not None else os.fspath(src))
        return img, fp is None or fp is not src  # close what we opened (path, bytes), not the caller's file
    except UnidentifiedImageError:
        head = _read_head(src, fp)
        if isinstance(head, str):
            raise ImageDecodeError(f"{name}: opened in text mode; pass a binary file object ('rb')") from None
        raise ImageDecodeError(f"{name} {_sniff(head)}") from None
    except Image.DecompressionBombError as e:
        # PIL's own hard stop (2 x PIL.Image.MAX_IMAGE_PIXELS) fired while reading the header
        raise ImageTooLargeError(f"{name}: refused before decoding: its header declares more pixels than PIL's "
                                 f"hard limit (2 x PIL.Image.MAX_IMAGE_PIXELS, which vitkit does not change): {e}"
                                 ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # unreadable file, broken header
        raise ImageDecodeError(f"{name}: cannot read image header: {e}") from None


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(img).astype(np.float64)  # (H, W) in 0..65535 (uint16, either byte order)
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)  # 65535/257 = 255 exactly
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.clip(np.rint(np.nan_to_num(np.asarray(img, dtype=np.float64))), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "La":  # premultiplied grey + alpha: PIL converts it to LA only (not to RGBA)
        img, mode = img.convert("LA"), "LA"
    elif (mode == "P" and "transparency" in img.info) or mode in ("PA", "RGBa"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, RGBX, HSV...


# --- JPEG cut short, with an end-of-image marker -------------------------------------------------------
# libjpeg, on reaching a marker in the middle of a scan, warns ("premature end of data segment"), which PIL
# does not report, and leaves the rest of the image zero: uniform grey (128) in a sequential JPEG, the missing
# refinements in a progressive one. vitkit finds it from the file itself:
# - the scan headers (SOS) of a progressive or multi-scan JPEG must bring every coefficient of every
#   component to full precision (a file cut between two scans is otherwise a valid JPEG with fewer scans);
# - the file is decoded a second time with bytes that are not markers (_JPEG_PROBE) inserted before its
#   end-of-image marker: a complete file ignores them (extraneous data after the last scan), a file cut
#   inside a scan reads them as image data, so the pixels change. A sequential, single-scan JPEG is decoded
#   again only when its last pixel is the grey of that fill (127/128 in every channel; at most a 16x16
#   block at the corner, where the cut falls in the last MCU, goes unseen); a progressive one always is.
_JPEG_PROBE = bytes((37 * i + 11) % 251 for i in range(512))  # no 0xFF: never read as a marker
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the end of entropy-coded data


def _jpeg_layout(data: bytes) -> tuple[bool, list[int], list[tuple], int] | None:
    """(progressive, component ids, scans as (ids, Ss, Se, Ah, Al), offset of the first image's EOI marker),
    read from the marker segments alone; None for anything unexpected (then no check is made)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, progressive, comps, scans = 2, None, [], []
    try:
        while pos + 2 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0xD9:
                return (progressive, comps, scans, pos) if progressive is not None else None
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
                pos += 2
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            seg = data[pos + 4:pos + 2 + length]
            if length < 2 or len(seg) != length - 2:
                return None
            pos += 2 + length
            if marker in _SOF_MARKERS:
                progressive = marker in _SOF_PROGRESSIVE
                comps = [seg[6 + 3 * i] for i in range(seg[5])]
            elif marker == 0xDA:  # SOS: its header, then entropy-coded data up to the next marker
                ns = seg[0]
                a = seg[3 + 2 * ns]
                scans.append(([seg[1 + 2 * i] for i in range(ns)], seg[1 + 2 * ns], seg[2 + 2 * ns], a >> 4, a & 15))
                m = _NEXT_MARKER.search(data, pos)
                if m is None:
                    return None
                pos = m.start()
    except IndexError:
        return None
    return None


def _scans_complete(progressive: bool, comps: list[int], scans: list[tuple]) -> bool:
    """Whether the scans bring every coefficient of every component to full precision (Al = 0)."""
    if not progressive:
        return set(comps) <= {c for ids, *_ in scans for c in ids}
    done = {c: [False] * 64 for c in comps}
    for ids, ss, se, _ah, al in scans:
        if al == 0:
            for c in ids:
                for k in range(ss, min(se, 63) + 1):
                    if c in done:
                        done[c][k] = True
    return all(all(v) for v in done.values())


def _refuse_incomplete_jpeg(img: Image.Image, data: bytes | None, name: str) -> None:
    """Raise ImageDecodeError if the decoded JPEG ``img`` came from a file cut short before its EOI marker."""
    layout = _jpeg_layout(data) if data else None
    if layout is None:
        return
    progressive, comps, scans, eoi = layout
    truncated = f"{name}: image file is truncated (incomplete data; refused, not padded): its JPEG data"
    multi_scan = progressive or len(scans) > 1
    if multi_scan and not _scans_complete(progressive, comps, scans):
        raise ImageDecodeError(f"{truncated} stops before its scans complete the image")
    if not multi_scan:
        last = img.getpixel((img.width - 1, img.height - 1))
        if not all(v in (127, 128) for v in (last if isinstance(last, tuple) else (last,))):
            return  # no grey fill at the end: complete (or cut within its last block)
    cut = eoi
    while cut > 2 and data[cut - 1] == 0xFF:  # fill bytes belong to the marker
        cut -= 1
    try:
        probe = JpegImagePlugin.JpegImageFile(io.BytesIO(data[:cut] + _JPEG_PROBE + data[cut:eoi + 2]))
        probe.load()
        same = probe.mode == img.mode and probe.size == img.size and np.array_equal(np.asarray(probe),
                                                                                     np.asarray(img))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        same = False  # the probe bytes were read as image data, and broke it
    if not same:
        raise ImageDecodeError(f"{truncated} ends inside a scan, closed early by an end-of-image marker")


def _source_bytes(src: ImageSource) -> bytes | None:
    """The encoded bytes of ``src`` (for the JPEG check), or None where they cannot be had again."""
    try:
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                return f.read()
        if isinstance(src, (bytes, bytearray, memoryview)):
            return bytes(src)
        if hasattr(src, "read") and hasattr(src, "seek"):
            src.seek(0)  # where PIL read it from
            data = src.read()
            return data if isinstance(data, bytes) else None
    except (OSError, ValueError, AttributeError):
        pass
    return None


def open_image(src: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode one image safely into an 8-bit RGB PIL image (upright, first frame).

    ``src``: a path, bytes, a binary file object, or a PIL image (converted and checked the same way).
    ``max_pixels``: refuse images whose header declares more than this many pixels, before
    decoding (default :data:`DEFAULT_MAX_PIXELS`; ``None`` = no vitkit limit).
    ``background``: the colour transparent pixels are composited over.

    Raises ``FileNotFoundError`` for a missing path, :class:`ImageTooLargeError` over the
    limit, :class:`ImageDecodeError` (a ``ValueError``) for anything else that is not a
    complete, decodable image; every message names the file.
    """
    name = _source_name(src)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    img, owned = _open_lazy(src, name)
    try:
        w, h = img.size  # from the header: nothing decoded yet
        if w < 1 or h < 1:
            raise ImageDecodeError(f"{name}: declares an empty image ({w}x{h})")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(
                f"{name}: refused before decoding: {w}x{h} = {w * h:,} pixels is more than the limit of "
                f"{max_pixels:,} (max_pixels; default vitkit.data.decode.DEFAULT_MAX_PIXELS)")
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set outside vitkit): PIL pads truncated "
                          f"images silently, so vitkit cannot refuse a truncated {name}", RuntimeWarning,
                          stacklevel=2)
        try:
            if img.tell() != 0:  # files open on frame 0; a PIL image may have been moved on
                img.seek(0)  # first frame of an animation / first page (never counts frames)
            img.load()
            if img.format in ("JPEG", "MPO") and not isinstance(src, Image.Image):
                _refuse_incomplete_jpeg(img, _source_bytes(src), name)
            upright = ImageOps.exif_transpose(img)  # a copy, orientation tag applied and removed
            out = _to_rgb(upright, background)
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{name}: refused while decoding: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
            msg = str(e) or type(e).__name__
            if "truncated" in msg:
                raise ImageDecodeError(f"{name}: image file is truncated (incomplete data; refused, not padded): "
                                       f"{msg}") from None
            raise ImageDecodeError(f"{name}: cannot decode image ({img.format or 'unknown format'}): {msg}") from None
        return out  # a new image (exif_transpose copies), which does not hold the file
    finally:
        if owned:
            img.close()
