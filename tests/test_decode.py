"""Safe image decoding (RELIABILITY.md items 10-16), each on a real crafted file."""

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFile

import vitkit
from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, open_image

PIL_DEFAULT_MAX = 1024 * 1024 * 1024 // 4 // 3


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_bomb_png(path, w: int, h: int) -> None:
    """A real, valid 1-bit grey PNG of w x h zero pixels: tiny on disk, huge decoded."""
    row = b"\x00" + b"\x00" * ((w + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 1000
    parts = [comp.compress(block) for _ in range(h // 1000)] + [comp.compress(row * (h % 1000)), comp.flush()]
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decoding fail loudly, to prove a refusal happened from the header alone."""
    def boom(self, *a, **k):
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


# --- 10. decompression bombs ---------------------------------------------------------------
def test_default_limit_is_documented_and_pil_global_untouched():
    assert DEFAULT_MAX_PIXELS == PIL_DEFAULT_MAX
    assert "DEFAULT_MAX_PIXELS" in vitkit.data.decode.__doc__
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_MAX  # importing vitkit changed nothing in PIL


def test_bomb_30000_squared_refused_before_decoding(tmp_path, no_decoding):
    p = tmp_path / "bomb.png"
    _write_bomb_png(p, 30000, 30000)
    assert p.stat().st_size < 300_000  # ~900 M pixels in a small file
    with pytest.raises(ImageTooLargeError, match="bomb.png.*refused before decoding"):
        open_image(p)
    with pytest.raises(ImageTooLargeError):  # even when the caller raises vitkit's limit
        open_image(p, max_pixels=10**10)
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_MAX


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, above its threshold
def test_bomb_under_pil_hard_stop_refused_by_vitkit_limit(tmp_path, no_decoding):
    p = tmp_path / "big.png"
    _write_bomb_png(p, 10000, 10000)  # 100 M pixels: over vitkit's default, under PIL's 2x hard stop
    with pytest.raises(ImageTooLargeError, match=r"big.png.*10000x10000 = 100,000,000 pixels.*89,478,485"):
        open_image(p)


def test_limit_overridable_per_call(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (100, 50), (10, 20, 30)).save(p)
    with pytest.raises(ImageTooLargeError, match="5,000 pixels is more than the limit of 4,999"):
        open_image(p, max_pixels=4999)
    assert open_image(p, max_pixels=5000).size == (100, 50)
    assert open_image(p, max_pixels=None).getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ValueError, match="max_pixels"):
        open_image(p, max_pixels=0)


# --- 11. truncated files ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_refused_not_padded(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageDecodeError, match=rf"cut.{fmt.lower()}: .*truncated"):
        open_image(p)
    assert open_image(data).size == (451, 300)  # the complete file decodes


def test_truncated_warns_if_someone_else_enabled_padding(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"):
        open_image(buf.getvalue()[:5000])


# --- 12. EXIF orientation -----------------------------------------------------------------------
@pytest.mark.parametrize("orientation,k", [(6, 1), (8, -1)])
def test_exif_orientation_applied(tmp_path, orientation, k):
    upright = skimage.data.chelsea()  # (300, 451, 3): not square, so a missed rotation changes the shape
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    stored = np.ascontiguousarray(np.rot90(upright, k))  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "rotated.jpg") as raw:
        assert raw.size == (300, 451)  # stored sideways
    a = np.asarray(open_image(tmp_path / "rotated.jpg"), dtype=np.float32)
    b = np.asarray(open_image(tmp_path / "upright.jpg"), dtype=np.float32)
    assert a.shape == b.shape == (300, 451, 3)
    assert np.abs(a - b).mean() < 3.0  # JPEG noise only
    flipped = np.asarray(open_image(tmp_path / "upright.jpg").rotate(180), dtype=np.float32)
    assert np.abs(flipped - b).mean() > 20  # the comparison can tell orientations apart


# --- 13. every mode to RGB ---------------------------------------------------------------------
def test_palette_with_transparency_composited(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red (transparent), 1 blue
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    out = open_image(tmp_path / "p.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((1, 0)) == (255, 255, 255)  # transparent: the background, not the hidden red
    assert open_image(tmp_path / "p.png", background=(0, 0, 0)).getpixel((1, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode,value,expect", [
    ("LA", (200, 255), (200, 200, 200)),
    ("LA", (0, 0), (255, 255, 255)),
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half black over white
])
def test_alpha_modes_composited(tmp_path, mode, value, expect):
    Image.new(mode, (3, 3), value).save(tmp_path / "a.png")
    out = open_image(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert all(abs(x - y) <= 1 for x, y in zip(out.getpixel((1, 1)), expect))


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=95)  # pure cyan ink
    with Image.open(tmp_path / "cyan.jpg") as raw:
        assert raw.mode == "CMYK"
    r, g, b = open_image(tmp_path / "cyan.jpg").getpixel((8, 8))
    assert r < 10 and g > 245 and b > 245


def test_16bit_ramp_keeps_levels(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))  # (4, 256)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(open_image(tmp_path / "ramp16.png"))
    assert out.shape == (4, 256, 3)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[128] - 128) <= 1
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200  # a ramp, not clipped to white
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_big_endian_tiff(tmp_path):
    a = np.array([[0, 32896, 65535]], dtype=">u2")
    Image.frombytes("I;16B", (3, 1), a.tobytes()).save(tmp_path / "g.tif")
    assert np.asarray(open_image(tmp_path / "g.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_one_bit(tmp_path):
    im = Image.new("1", (8, 1), 0)
    im.putpixel((3, 0), 1)
    im.save(tmp_path / "b.png")
    out = open_image(tmp_path / "b.png")
    assert out.getpixel((3, 0)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)


# --- 14. first frame ----------------------------------------------------------------------------
def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as raw:
        assert raw.n_frames == 3
    assert open_image(tmp_path / "anim.gif").getpixel((4, 4)) == (255, 0, 0)


def test_multipage_tiff_first_page(tmp_path):
    pages = [Image.new("L", (5, 5), v) for v in (40, 200)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert open_image(tmp_path / "pages.tif").getpixel((2, 2)) == (40, 40, 40)


# --- 15. non-images ------------------------------------------------------------------------------
@pytest.mark.parametrize("content,reason", [
    (b"", "is empty"),
    (b"just some notes, not a photo\n", "is a text file"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "is an HTML page"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
     "is an SVG"),
    (b"\x00\x01\x02\x03" * 50, "is not an image format"),
])
def test_non_images_named_jpg(tmp_path, content, reason):
    p = tmp_path / "photo.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=rf"photo.jpg {reason}"):
        open_image(p)
    with pytest.raises(ImageDecodeError, match=rf"<bytes> {reason}"):
        open_image(content)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        open_image(tmp_path)
    with pytest.raises(TypeError, match="got int"):
        open_image(3)


# --- 16. degenerate sizes ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1)])
def test_tiny_and_strip_images(tmp_path, size):
    Image.new("RGB", size, (90, 10, 200)).save(tmp_path / "s.png")
    img = open_image(tmp_path / "s.png")
    assert img.size == size
    for resize in ("squash", "shortest"):
        x = vitkit.preprocess(img, vitkit.PreprocessConfig(size=(32, 32), resize=resize, crop_pct=0.875))
        assert x.shape == (1, 3, 32, 32) and torch_finite(x)


def torch_finite(x) -> bool:
    return bool(x.isfinite().all())


# --- sources ---------------------------------------------------------------------------------
def test_sources_path_bytes_fileobj_pil_agree(tmp_path):
    p = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(p)
    ref = np.asarray(open_image(str(p)))
    assert ref.shape == (300, 451, 3)
    with open(p, "rb") as f:
        assert (np.asarray(open_image(f)) == ref).all()
        assert not f.closed  # the caller's file stays the caller's
    assert (np.asarray(open_image(p.read_bytes())) == ref).all()
    assert (np.asarray(open_image(Image.open(p).convert("LA"))) == np.asarray(Image.fromarray(ref).convert("L"))[
        ..., None]).all()
    with pytest.raises(ImageTooLargeError):
        open_image(Image.new("RGB", (100, 100)), max_pixels=99)


# --- 11b. a JPEG cut short and closed with an end-of-image marker ---------------------------------------
# PIL decodes such a file without an error (libjpeg only warns "premature end of data segment" and fills
# the rest with grey); vitkit must refuse it, and must decode every complete JPEG exactly as PIL does.
PHOTOS = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}


def _jpeg(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _pil_reference(data: bytes) -> np.ndarray:
    """What PIL alone gives: decoded, EXIF orientation applied, converted to RGB."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _rotated_exif():
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "vitkit test camera"
    return exif


@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("quality", [40, 75, 95])
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("exif", [False, True])
def test_complete_jpegs_decode_exactly_as_before(photo, quality, progressive, exif):
    kw = dict(quality=quality, progressive=progressive, optimize=quality == 75)
    if exif:
        kw["exif"] = _rotated_exif()
    data = _jpeg(Image.fromarray(PHOTOS[photo]()), **kw)
    out = np.asarray(open_image(data))
    assert np.array_equal(out, _pil_reference(data))
    assert out.shape[:2] == (PHOTOS[photo]().shape[1::-1] if exif else PHOTOS[photo]().shape[:2])


@pytest.mark.parametrize("mode", ["L", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_complete_grey_and_cmyk_jpegs_decode_exactly_as_before(tmp_path, mode, progressive):
    data = _jpeg(Image.fromarray(skimage.data.coffee()).convert(mode), quality=90, progressive=progressive)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == mode
    (tmp_path / "c.jpg").write_bytes(data)
    assert np.array_equal(np.asarray(open_image(tmp_path / "c.jpg")), _pil_reference(data))


@pytest.mark.parametrize("kw", [dict(restart_marker_blocks=3), dict(subsampling=0), dict(subsampling=2),
                                dict(icc_profile=b"\0" * 300, comment=b"a comment")])
def test_complete_jpegs_with_restart_markers_and_extras(kw):
    data = _jpeg(Image.fromarray(skimage.data.chelsea()), quality=85, **kw)
    assert np.array_equal(np.asarray(open_image(data)), _pil_reference(data))


def test_complete_jpeg_ending_in_exact_grey_is_not_mistaken_for_a_cut():
    # the grey libjpeg fills a cut file with (128) at the corner: the check has to decode again, and accept it
    a = skimage.data.astronaut().copy()
    a[-64:, -64:] = 128
    data = _jpeg(Image.fromarray(a), quality=95)
    out = open_image(data)
    assert out.getpixel((511, 511)) == (128, 128, 128)
    assert np.array_equal(np.asarray(out), _pil_reference(data))


def test_complete_mpo_first_frame():
    frames = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.chelsea()[::-1].copy())]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:], quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as raw:
        assert raw.format == "MPO" and raw.n_frames == 2
        raw.load()
        first = np.asarray(raw.convert("RGB"))
    assert np.array_equal(np.asarray(open_image(buf.getvalue())), first)


@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_jpeg_cut_and_closed_with_eoi_is_refused(tmp_path, photo, progressive, fraction):
    data = _jpeg(Image.fromarray(PHOTOS[photo]()), quality=90, progressive=progressive)
    cut = data[: int(len(data) * fraction)] + b"\xff\xd9"
    with Image.open(io.BytesIO(cut)) as im:
        im.load()  # what PIL does with it: no error at all
    p = tmp_path / "cut.jpg"
    p.write_bytes(cut)
    with pytest.raises(ImageDecodeError, match=r"cut.jpg: image file is truncated"):
        open_image(p)
    with open(p, "rb") as f:  # the same from a file object and from bytes
        with pytest.raises(ImageDecodeError, match="truncated"):
            open_image(f)
    with pytest.raises(ImageDecodeError, match=r"<bytes>: image file is truncated"):
        open_image(cut)


def test_progressive_jpeg_cut_between_two_scans_is_refused():
    data = _jpeg(Image.fromarray(skimage.data.chelsea()), quality=90, progressive=True)
    sos = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC4, 0xDA)]
    later = [i for i in sos if i > len(data) // 3]
    assert len(later) >= 3
    for at in later:  # a valid JPEG of fewer scans: only the scan headers tell it is incomplete
        with pytest.raises(ImageDecodeError, match="truncated"):
            open_image(data[:at] + b"\xff\xd9")


# --- the parts, one by one (each case below failed a mutation of the code that the file-level tests missed) -----
@pytest.mark.parametrize("mode,values,expect", [
    ("I", [-1000, 0, 257 * 100, 65535, 70000], [0, 0, 100, 255, 255]),  # 32-bit ints: the 16-bit range, clipped
    ("F", [-5.4, 0.4, 127.6, 300.0, float("nan")], [0, 0, 128, 255, 0]),  # floats: rounded, clipped, NaN -> 0
])
def test_integer_and_float_modes_are_rescaled_or_clipped(mode, values, expect):
    im = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32), mode=mode)
    out = open_image(im)
    assert out.mode == "RGB" and np.asarray(out)[0, :, 0].tolist() == expect
    assert (np.asarray(out)[..., 0] == np.asarray(out)[..., 2]).all()


@pytest.mark.parametrize("mode,value,expect", [
    ("PA", (1, 0), (255, 255, 255)),  # palette + alpha: transparent -> background
    ("PA", (1, 255), (0, 0, 200)),
    ("La", (0, 0), (255, 255, 255)),  # premultiplied grey + alpha (PIL cannot convert it to RGBA: a bug once)
    ("La", (50, 255), (50, 50, 50)),
    ("RGBa", (0, 0, 0, 0), (255, 255, 255)),  # premultiplied RGB + alpha
    ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
])
def test_premultiplied_and_palette_alpha_modes_are_composited(mode, value, expect):
    im = Image.new(mode, (3, 3), value)
    if mode == "PA":
        im.putpalette([255, 0, 0, 0, 0, 200] + [0] * 762)  # index 1: dark blue
    out = open_image(im)
    assert out.mode == "RGB"
    assert all(abs(x - y) <= 1 for x, y in zip(out.getpixel((1, 1)), expect)), out.getpixel((1, 1))


def test_a_palette_without_transparency_is_not_composited():
    plain = Image.new("P", (2, 1))
    plain.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    plain.putpixel((1, 0), 1)
    assert open_image(plain, background=(255, 0, 0)).getpixel((0, 0)) == (0, 0, 0)  # black, not the background
    grey = Image.new("L", (1, 1), 7)
    grey.info["transparency"] = 7  # transparency on a non-palette mode is not the P-with-transparency rule
    assert open_image(grey, background=(255, 0, 0)).getpixel((0, 0)) == (7, 7, 7)


def test_the_background_is_opaque_and_exact():
    out = open_image(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), background=(12, 34, 56))
    assert out.getpixel((0, 0)) == (12, 34, 56)


def test_sniff_names_what_a_non_image_is():
    from vitkit.data.decode import _sniff

    svg, html = "is an SVG (vector XML) file, not a raster image; vitkit reads raster formats " \
                "(JPEG, PNG, GIF, WebP, TIFF, BMP...): render it to PNG first", \
                "is an HTML page, not an image (a download that returned a web page?)"
    text, other = "is a text file, not an image", "is not an image format PIL can read (unidentified data)"
    cases = [
        (b"", "is empty (0 bytes)"),
        (b"<svg width='1'/>", svg), (b"  \n<SVG/>", svg), (b"\xef\xbb\xbf<svg/>", svg),
        (b"<?xml version='1.0'?>" + b" " * 300 + b"<svg/>", svg),  # the XML branch: <svg> past 256 bytes
        (b"<!-- a comment -->\n<svg/>", svg), (b"x" * 252 + b"<svg", svg), (b"x" * 253 + b"<svg", text),
        (b"<?xml version='1.0'?><note/>", text),
        (b"<!DOCTYPE html><p>", html), (b"<html>", html), (b"<HEAD>", html), (b"<body>", html),
        (b"\xef\xbb\xbf <!doctype html>" + b" " * 300, html), (b"hello <html>", html),
        (b"X<!doctype html>" + b" " * 300, text),  # only the byte-order mark is stripped, not other letters
        (b"y" * 251 + b"<html", html), (b"y" * 252 + b"<html", text),
        (b"plain notes\n", text), ("café ☕".encode("utf-8"), text),
        (("ab" + "😀").encode("utf-8")[:-1], text), (("ab" + "😀").encode("utf-8")[:-3], text),  # cut at the end
        (b"abc\xffxyz", other), (b"\xff" + b"a" * 10, other), (b"ab\x00cd", other),
    ]
    for head, want in cases:
        assert _sniff(head) == want, head


def test_the_reason_reads_the_first_1024_bytes_of_a_file_or_a_stream(tmp_path):
    data = b"a" * 1024 + b"\x00binary after the sample"  # text within the sample, binary beyond it
    (tmp_path / "notes.jpg").write_bytes(data)
    for src in (tmp_path / "notes.jpg", data, io.BytesIO(data)):
        with pytest.raises(ImageDecodeError, match="is a text file, not an image"):
            open_image(src)
    with pytest.raises(ImageDecodeError, match="is an SVG"):
        open_image(b"<svg/>")  # from the first byte of a stream, not the second


def test_scans_complete():
    from vitkit.data.decode import _scans_complete

    assert _scans_complete(False, [1, 2, 3], [([1, 2, 3], 0, 63, 0, 0)])
    assert _scans_complete(False, [1, 2, 3], [([1], 0, 63, 0, 0), ([2, 3], 0, 63, 0, 0)])
    assert not _scans_complete(False, [1, 2, 3], [([1], 0, 63, 0, 0), ([2], 0, 63, 0, 0)])
    dc, ac = ([1, 2], 0, 0, 0, 0), [([c], 1, 63, 0, 0) for c in (1, 2)]
    assert _scans_complete(True, [1, 2], [dc, *ac])
    assert not _scans_complete(True, [1, 2], ac)  # no DC scan: coefficient 0 is missing
    assert not _scans_complete(True, [1, 2], [dc, ac[0], ([2], 1, 63, 1, 1)])  # component 2 not refined (Al 1)
    assert _scans_complete(True, [1], [([1], 0, 70, 0, 0)])  # Se past 63 is read as 63


def _seg(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_jpeg_layout_reads_the_marker_segments():
    from vitkit.data.decode import _jpeg_layout

    sof = bytes([8, 0, 16, 0, 16, 3]) + bytes([1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1])  # 3 components, ids 1, 2, 3
    sos1 = bytes([3, 1, 0, 2, 0x11, 3, 0x11, 0, 0, 0x21])  # DC of all three, Ah 2, Al 1
    sos2 = bytes([1, 1, 0, 1, 63, 0x10])  # AC of component 1, Ah 1, Al 0
    body = (b"\xff\xd8" + _seg(0xE1, b"x" * 300)  # a segment longer than 255 bytes
            + _seg(0xFE, b"")  # an empty comment (length 2)
            + b"\xff\x01\xff\xd0\xff\xd7"  # TEM and RST markers: no length
            + b"\xff" + _seg(0xC2, sof)  # one fill byte before the SOF
            + _seg(0xDA, sos1) + b"\x12\x34\xff\x00\x56" + _seg(0xDA, sos2) + b"\x78")
    data = body + b"\xff\xd9"
    assert _jpeg_layout(data) == (True, [1, 2, 3], [([1, 2, 3], 0, 0, 2, 1), ([1], 1, 63, 1, 0)], len(body))
    assert _jpeg_layout(b"\xff\xd8\xff\xd9") is None  # no frame header
    assert _jpeg_layout(body) is None  # no end-of-image marker
    assert _jpeg_layout(b"\x89PNG" + data[2:]) is None


def test_default_preprocess_per_channel_count():
    from vitkit.data.preprocess import default_preprocess

    rgb, grey = default_preprocess(32, 3), default_preprocess((16, 24), 1)
    assert (rgb.mode, rgb.mean, rgb.std, rgb.resize, rgb.interpolation, rgb.size) == \
        ("RGB", (0.5,) * 3, (0.5,) * 3, "squash", "bilinear", (32, 32))
    assert (grey.mode, grey.mean, grey.std, grey.size) == ("L", (0.5,), (0.5,), (16, 24))
    assert default_preprocess(8, 1, mean=(0.1, 0.2, 0.3)).mean == (0.1,)
    for channels in (2, 4):
        with pytest.raises(ValueError, match=f"takes {channels} channels"):
            default_preprocess(8, channels)


def test_source_names():
    from vitkit.data.decode import _source_name

    assert _source_name("a/b.png") == "a/b.png" and _source_name(b"\xff") == "<bytes>"
    assert _source_name(Image.new("RGB", (1, 1))) == "<PIL image>"
    named = Image.new("RGB", (1, 1))
    named.filename = "cat.jpg"
    assert _source_name(named) == "cat.jpg"
    f = io.BytesIO(b"")
    assert _source_name(f) == "<file object>"
    f.name = "upload.jpg"
    assert _source_name(f) == "upload.jpg"
    f.name = 3  # a file descriptor number, not a name
    assert _source_name(f) == "<file object>"


def test_a_pil_image_passed_in_is_left_open_and_on_its_frame():
    im = Image.new("RGB", (2, 2), (1, 2, 3))
    open_image(im)
    assert im.getpixel((0, 0)) == (1, 2, 3)  # the caller's image was not closed
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    gif = Image.open(io.BytesIO(buf.getvalue()))
    gif.seek(1)  # moved on by the caller
    assert open_image(gif).getpixel((0, 0)) == (255, 0, 0)  # frame 0 all the same


def test_limits_of_one_pixel_and_empty_images():
    assert open_image(Image.new("RGB", (1, 1)), max_pixels=1).size == (1, 1)
    with pytest.raises(ImageTooLargeError):
        open_image(Image.new("RGB", (1, 2)), max_pixels=1)
    for size in ((0, 5), (5, 0)):
        with pytest.raises(ImageDecodeError, match=r"declares an empty image"):
            open_image(Image.new("RGB", size))


def test_truncated_and_corrupt_are_told_apart(tmp_path):
    data = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(data, "PNG")
    (tmp_path / "cut.png").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.png'?: image file is truncated \(incomplete data; refused, not padded\)"):
        open_image(tmp_path / "cut.png")
    png = bytearray(data.getvalue())
    idat = png.index(b"IDAT")
    png[idat + 40: idat + 80] = b"\x00" * 40  # corrupt, not short
    (tmp_path / "bad.png").write_bytes(bytes(png))
    with pytest.raises(ImageDecodeError, match=r"cannot decode image \(PNG\)"):
        open_image(tmp_path / "bad.png")


class _NoSeek:
    """A stream without seek (a socket, a pipe): PIL reads it whole; the JPEG check cannot re-read it."""

    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)

    def read(self, n=-1):
        return self._buf.read(n)


def test_a_jpeg_from_a_stream_without_seek_decodes():
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=90)
    assert open_image(_NoSeek(buf.getvalue())).size == (451, 300)


def test_sequential_jpeg_whose_scans_miss_a_component_is_refused():
    """Two or more scans of a sequential (non-interleaved) JPEG must cover every component."""
    from vitkit.data.decode import _refuse_incomplete_jpeg

    sof = bytes([8, 0, 8, 0, 8, 3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1])
    scans = b"".join(_seg(0xDA, bytes([1, c, 0, 0, 63, 0])) + b"\x12" for c in (1, 2))  # components 1, 2 of 3
    data = b"\xff\xd8" + _seg(0xC0, sof) + scans + b"\xff\xd9"
    img = Image.new("RGB", (8, 8), (10, 200, 30))  # no grey fill: only the scan headers tell
    with pytest.raises(ImageDecodeError, match="stops before its scans complete the image"):
        _refuse_incomplete_jpeg(img, data, "x.jpg")


def _grey_ending_jpeg(quality=90):
    a = skimage.data.chelsea().copy()
    a[-16:, -16:] = 128  # a complete photograph whose last block is the fill's grey: the probe decides
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_fill_bytes_before_the_end_marker_are_part_of_it():
    data = _grey_ending_jpeg()
    assert data.endswith(b"\xff\xd9")
    for fill in (1, 2, 3):  # fill bytes before EOI: a complete file, however many
        assert open_image(data[:-2] + b"\xff" * fill + b"\xff\xd9").size == (451, 300)
    cut = data[: len(data) // 2]
    while cut.endswith(b"\xff"):
        cut = cut[:-1]
    with pytest.raises(ImageDecodeError, match="ends inside a scan"):
        open_image(cut + b"\xff\xff\xff\xd9")


def test_a_probe_that_fails_to_decode_counts_as_a_cut(monkeypatch):
    import types

    from vitkit.data import decode

    class Broken:
        def __init__(self, fp):
            raise OSError("broken data")

    monkeypatch.setattr(decode, "JpegImagePlugin", types.SimpleNamespace(JpegImageFile=Broken))
    with pytest.raises(ImageDecodeError, match="ends inside a scan"):
        open_image(_grey_ending_jpeg())


def test_a_cut_mpo_is_refused_as_a_jpeg():
    frames = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.chelsea()[::-1].copy())]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:], quality=90)
    data = buf.getvalue()
    first_eoi = data.index(b"\xff\xd9")
    cut = data[: first_eoi // 2] + b"\xff\xd9"
    with Image.open(io.BytesIO(cut)) as raw:
        assert raw.format == "MPO"
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(cut)


def test_an_error_without_text_is_named_by_its_type(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")

    def load(self, *a, **k):
        raise OSError()  # some decoders raise without a message

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageDecodeError, match=r"cannot decode image \(PNG\): OSError$"):
        open_image(tmp_path / "a.png")
