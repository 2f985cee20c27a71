"""Media: image and video files in, RGB frames out, and overlay videos written. The one home of the file
suffixes polypseg reads (``IMAGE_SUFFIXES``, ``VIDEO_SUFFIXES``), of reading images (files and uploaded bytes,
turned upright by their EXIF orientation, refused under ``MIN_IMAGE_SIDE``), of video sources (files, frame
folders, cameras, streams: ``open_source``) and of video writers (H.264 MP4 through PyAV's libx264, which
every browser plays; MJPG AVI through OpenCV: ``open_writer``, ``write_clip``).

Low in the house: imports only ``errors`` and ``files``. PyAV is imported where it is used (the H.264 writer,
the quiet probe of a video file), so that modules importing this one import on a machine without it.
"""

from __future__ import annotations

import io
import math
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PolypsegError, one_line
from .files import publish, temp_path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


TIFF_SUFFIXES = (".tif", ".tiff")


# The smallest picture polypseg segments, in pixels on each side (one block of the networks' /32
# geometry): below it there is nothing to see, and `polypseg predict` and `polypseg serve` refuse it.
MIN_IMAGE_SIDE = 32


def _decode(path: Path, what: str, read) -> np.ndarray:
    try:
        return read(path)
    except PolypsegError:
        raise
    except Exception as exc:  # any decoder failure means the file cannot be used; say which one
        raise PolypsegError(
            f"Cannot read the {what} {path}: {exc}. The file may be truncated or not an image; replace or "
            "remove it (with its image or mask)."
        ) from exc


def _read_array(path: Path) -> np.ndarray:
    """The pixels as stored. TIFFs go through tifffile: CVC-ClinicDB's image TIFFs are tagged grayscale
    but hold RGB, which Pillow refuses."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = tifffile.imread(path, key=0)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # planar (channels-first) TIFF
        return array
    with Image.open(path) as img:
        img.load()
        img = upright(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode not in ("L", "RGB", "RGBA", "LA", "1", "I;16", "I"):
            img = img.convert("RGB")
        return np.asarray(img)


def upright(img: Image.Image) -> Image.Image:
    """The picture as a viewer shows it: turned by its EXIF Orientation tag (a phone's or a tower's JPEG
    stored sideways), or ``img`` itself when it has none."""
    try:
        orientation = img.getexif().get(0x0112, 1)  # 0x0112: Orientation; 1: as stored
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: shown as stored, as viewers do
        return img
    return ImageOps.exif_transpose(img) if orientation in (2, 3, 4, 5, 6, 7, 8) else img


def check_image_size(image: np.ndarray, name: str) -> None:
    """PolypsegError when ``image`` is under ``MIN_IMAGE_SIDE`` pixels on a side; ``name`` says which."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise PolypsegError(f"{name} is {w}x{h} pixels, too small to segment: polypseg needs at least "
                            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}. Give the full frame.")


def _to_uint8(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.max(initial=0) > 255):
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    if array.dtype.kind in "iu":
        return array.astype(np.uint8)
    raise PolypsegError(
        f"The {what} {path} holds {array.dtype} pixels; polypseg reads 8-bit images. Convert it to 8-bit."
    )


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> RGB uint8 ``H x W x 3`` (grayscale repeated, alpha dropped), upright: turned by
    its EXIF orientation as viewers and browsers show it."""
    path = Path(path)
    array = _to_uint8(_decode(path, "image", _read_array), path, "image")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] in (1, 2):  # gray, gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, :3]
    else:
        raise PolypsegError(f"The image {path} has an unexpected shape {array.shape}; expected a 2-D picture.")
    return np.ascontiguousarray(array)


def read_mask(path: str | Path) -> tuple[np.ndarray, int]:
    """A mask file -> (uint8 ``H x W`` with values {0, 1}, number of pixels that were neither 0 nor 255).

    Colour masks count as polyp where any channel is; values are thresholded at 128, because JPEG masks
    (Kvasir-SEG) and some original ones (CVC-ClinicDB) hold stray in-between values. Masks already stored
    as 0/1 are kept as they are.
    """
    path = Path(path)
    array = _to_uint8(_decode(path, "mask", _read_array), path, "mask")
    if array.ndim == 3:
        channels = array.shape[2]
        # Drop alpha (gray + alpha, RGBA) before taking the brightest channel.
        array = array[:, :, :1] if channels == 2 else array[:, :, : min(channels, 3)]
        array = array.max(axis=2)
    if array.ndim != 2:
        raise PolypsegError(f"The mask {path} has an unexpected shape {array.shape}; expected a 2-D picture.")
    if array.max(initial=0) == 1:
        return array.astype(np.uint8), 0
    nonbinary = int(np.count_nonzero((array != 0) & (array != 255)))
    return (array >= 128).astype(np.uint8), nonbinary


def shape_text(shape: tuple[int, ...]) -> str:
    """An array's size as width x height."""
    return f"{shape[1]}x{shape[0]}"


MAX_PIXELS = 40_000_000  # a decoded frame larger than this is refused before it takes the memory


# what polypseg takes for a video file (batch finds exams by it, serve keeps an upload's suffix by it)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ts", ".mts", ".flv", ".y4m")


def decode_image(data: bytes) -> np.ndarray:
    """Uploaded bytes -> RGB uint8 H x W x 3; PolypsegError for an empty, unreadable, truncated or huge
    file, or one under ``data.MIN_IMAGE_SIDE`` pixels on a side. Pillow, not OpenCV: OpenCV returns half a
    picture from a truncated JPEG without a word. The size is checked from the header before anything is
    decoded (a 100 KB PNG may declare 30000 x 30000). The picture comes upright (its EXIF orientation
    applied), as browsers show it and as ``data.read_image`` reads files."""
    if not data:
        raise PolypsegError("the uploaded file is empty (0 bytes)")
    try:
        size = declared_size(data)
        if size is not None:
            _check_pixels(*size)
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.width, im.height)
            im.load()
            image = np.asarray(upright(im).convert("RGB"))
    except UnidentifiedImageError:
        raise PolypsegError("the file is not an image (PNG, JPEG, TIFF, BMP or WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # a plugin's own check
        raise PolypsegError(f"the image is over {MAX_PIXELS // 10**6} megapixels or over Pillow's limit "
                            f"(Pillow: {one_line(err)}); send a smaller image") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's words for truncated and corrupt files
        raise PolypsegError(f"the image cannot be decoded: {one_line(err)}") from None
    check_image_size(image, "the image")
    return image


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise PolypsegError(f"the image is {width}x{height}, over {MAX_PIXELS // 10**6} megapixels; "
                            "send a smaller image")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that an image file's header declares, upright (width and height swapped when its
    EXIF orientation turns it by 90 degrees), None when no Pillow plugin reads it. Read as
    ``Image.open`` reads it, plugin by plugin, but without Pillow's decompression-bomb check, whose limit
    is process-wide (``Image.MAX_IMAGE_PIXELS``, left as it is) and which raises without saying the size;
    nothing beyond the header is decoded. WebP's plugin makes its decoder, canvas included, as it opens:
    its header is read here instead."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        verdict = not accept or accept(prefix)
        if not verdict or isinstance(verdict, str):  # a str: Pillow's "this plugin cannot read it" note
            continue
        try:
            im = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError):
            continue
        try:
            return im.size[::-1] if _orientation(im) in (5, 6, 7, 8) else im.size
        finally:
            im.close()
    return None


def _orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (0x0112) read with the header; 1 (as stored) when there is none."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: shown as stored
        return 1


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size in a WebP file's first chunk (lossy VP8, lossless VP8L or extended VP8X)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


VIDEO_FORMATS = {".mp4": "H.264", ".avi": "MJPG"}


# x264 at 384x288 on the 2-core machine of docs (busy with a training run), one encoder thread, crf 23:
# ultrafast 1.8-2.4 ms/frame, veryfast 6.4-7.4 ms/frame (files 1.45x smaller). At 30 fps on 2 cores
# every millisecond is taken from inference, so ultrafast; one thread so that x264 does not compete
# with the inference threads (and adds no frame-threading delay).
H264_OPTIONS = {"crf": "23", "preset": "ultrafast"}


DEFAULT_FPS = 25.0  # frame folders, and sources that do not say (colonoscopes run at 25-30 fps)


BAD = object()  # a frame that could not be decoded


class Source:
    """Frames as ``(index, RGB uint8 array or BAD, time in ms)``; ``total`` is None when unknown. Times
    increase: a file's presentation times, index / ``fps`` for frame folders, the wall clock since the
    first frame for live sources."""

    live = False
    total: int | None = None
    fps = DEFAULT_FPS

    def frames(self) -> Iterator[tuple[int, object, float]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    def __init__(self, folder: Path):
        self.paths = folder_images(folder)
        self.total = len(self.paths)

    def frames(self):
        for i, path in enumerate(self.paths):
            t = i * 1000 / self.fps
            try:
                yield i, read_image(path), t
            except PolypsegError:
                yield i, BAD, t


class CaptureSource(Source):
    """cv2.VideoCapture: a file, a camera or a stream."""

    MAXBAD_RUN = 25  # consecutive failed reads before a known-length file is taken as ended

    def __init__(self, target: int | str, what: str, live: bool):
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            raise PolypsegError(
                f"Cannot open {what}. "
                + ("Check the camera index and that no other program uses it." if isinstance(target, int) else
                   "It is not a video OpenCV's FFmpeg can read, or not reachable. Convert it (e.g. ffmpeg -i IN "
                   "-c:v libx264 OUT.mp4) or give a folder of frames.")
            )
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.total = count if count > 0 and not live else None
        self.live = live
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else DEFAULT_FPS

    def frames(self):
        i, bad_run, last, origin = 0, 0, -math.inf, None
        while True:
            ok, frame = self.cap.read()
            if ok and frame is not None:
                # A file's presentation time (pts x time base, from the stream's start); live: the wall clock.
                if self.live:
                    now = 1000 * time.monotonic()
                    origin = now if origin is None else origin
                    t = now - origin
                else:
                    t = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                # A time that stands still or goes back (missing pts) is taken as one frame step on.
                last = t if t > last else (last + 1000 / self.fps if last > -math.inf else 0.0)
                # Failed reads followed by a good frame were undecodable frames, not the end.
                for k in range(bad_run):
                    yield i - bad_run + k, BAD, math.nan
                bad_run = 0
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), last
            elif self.total is not None and i < self.total and bad_run < self.MAXBAD_RUN:
                bad_run += 1
            else:
                return
            i += 1

    def close(self):
        self.cap.release()


def open_source(source: str | int | Path) -> Source:
    """A video file, a folder of frames, a camera index (``0`` or ``"0"``) or a stream URL."""
    text = str(source)
    if isinstance(source, int) or text.isdigit():
        return CaptureSource(int(text), f"camera {text}", live=True)
    if "://" in text:
        return CaptureSource(text, f"the stream {text}", live=True)
    path = Path(source)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise PolypsegError(f"{path} does not exist. Give a video file, a folder of frames, a camera index or a URL.")
    if path.stat().st_size == 0:
        raise PolypsegError(f"The video {path} is empty (0 bytes).")
    _probe_file(path)
    return CaptureSource(str(path), f"the video {path}", live=False)


def _probe_file(path: Path) -> None:
    """PolypsegError, quietly, for a file FFmpeg cannot open as a video: OpenCV's FFmpeg prints its own
    complaint (e.g. "moov atom not found") on stderr before polypseg can say anything, PyAV's does not.
    Only the header is read. Without PyAV installed, OpenCV alone decides."""
    try:
        import av
    except ImportError:
        return
    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
    except (av.FFmpegError, OSError, ValueError):
        has_video = False
    if not has_video:
        raise PolypsegError(
            f"Cannot open the video {path}: it is not a video FFmpeg can read. Convert it (e.g. ffmpeg -i IN "
            "-c:v libx264 OUT.mp4) or give a folder of frames."
        )


def write_clip(frames: Iterable[np.ndarray], path: str | Path, fps: float = DEFAULT_FPS) -> Path:
    """RGB frames (all of one size; odd sizes lose their last row or column) -> a video file (H.264 for
    .mp4, MJPG for .avi), written atomically."""
    path = Path(path)
    check_video_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, keep_suffix=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                writer = open_writer(tmp, even_size(frame), fps)
            writer.write(frame[: writer.size[1], : writer.size[0]])
        if writer is None:
            raise PolypsegError(f"No frames to write into {path}.")
        writer.close()
        publish(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return path


def check_video_suffix(path: Path) -> None:
    if path.suffix.lower() not in VIDEO_FORMATS:
        raise PolypsegError(f"Write the overlay video as .mp4 or .avi (.mp4 is H.264, which browsers play; "
                            f".avi is MJPG), not '{path.name}'.")


def even_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) cut to even numbers: 4:2:0 video cannot hold an odd width or height."""
    h, w = image.shape[:2]
    return w - w % 2, h - h % 2


class H264Writer:
    """RGB frames -> H.264 (yuv420p) in MP4 through PyAV's libx264."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        import av

        self.size = size
        self.frame_from = av.VideoFrame.from_ndarray
        # faststart: the index goes to the front, so a browser starts playing before the whole file arrived
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.stream.width, self.stream.height = size
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = dict(H264_OPTIONS)
            self.stream.codec_context.thread_count = 1
        except BaseException:
            self.container.close()
            raise
        self.closed = False

    def write(self, rgb: np.ndarray) -> None:
        self.container.mux(self.stream.encode(self.frame_from(rgb, format="rgb24")))

    def close(self) -> None:
        """Flush the encoder and write the MP4 index: without it the file does not play. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class MjpgWriter:
    """RGB frames -> MJPG in AVI through OpenCV."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        self.size = size
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        if not self.writer.isOpened():
            raise PolypsegError(
                f"OpenCV cannot write a video into {path.parent}. Check that the folder is writable."
            )

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()


def open_writer(path: Path, size: tuple[int, int], fps: float):
    """A video writer for ``path`` by its suffix (.mp4: H.264, .avi: MJPG), frames of ``size`` (w, h)."""
    check_video_suffix(path)
    errors: tuple[type[BaseException], ...] = (OSError,)
    if path.suffix.lower() == ".mp4":
        try:
            import av
        except ImportError:
            raise PolypsegError("Writing an .mp4 (H.264) needs PyAV, which is not installed: pip install av, "
                                "or write the video as .avi (MJPG).") from None
        errors = (av.FFmpegError, OSError)
    try:
        return (H264Writer if path.suffix.lower() == ".mp4" else MjpgWriter)(path, size, fps)
    except errors as err:
        raise PolypsegError(f"Cannot write the video {path}: {err}. Check that the folder is writable.") from None


# ---------------------------------------------------------------------------------------------------
# folders of images


def normalize_id(stem: str) -> str:
    """A file stem -> the frame id. Numeric stems are zero-padded to 3 digits, so that ``1.tif``,
    ``001.png`` and the ids in sequences.csv and split files all name the same frame."""
    return f"{int(stem):03d}" if stem.isdigit() else stem


def id_sort_key(frame_id: str) -> tuple[int, int, str]:
    """Numeric ids by number, then the others by name: the same order on every machine."""
    return (0, int(frame_id), "") if frame_id.isdigit() else (1, 0, frame_id)


def image_files(folder: Path) -> dict[str, Path]:
    """id -> file for the image files directly in ``folder``; two files with one id is an error."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        frame_id = normalize_id(path.stem)
        if frame_id in files:
            raise PolypsegError(
                f"{files[frame_id]} and {path} are the same frame ({frame_id}), so it is not clear which to "
                "use. Keep one of them in the folder."
            )
        files[frame_id] = path
    if not files:
        raise PolypsegError(
            f"The folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}). Put the images there, "
            "or point polypseg at the right folder."
        )
    return files


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not hidden ones), numbered names in numeric order."""
    try:
        files = image_files(folder)
    except PolypsegError as err:
        below = [p.name for p in sorted(folder.iterdir())
                 if p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())]
        if below:
            raise PolypsegError(f"{err} Its sub-folders {', '.join(below)} hold images: name one of them.") from None
        raise
    return [files[k] for k in sorted(files, key=id_sort_key)]


def collect_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files named directly or found in the named folders (not recursive), in a stable order."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += folder_images(item)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise PolypsegError(f"{item} is not an image file polypseg reads ({', '.join(IMAGE_SUFFIXES)}).")
            found.append(item)
        else:
            raise PolypsegError(f"{item} does not exist. Give image files or folders of images.")
    by_stem: dict[str, list[Path]] = {}
    for p in found:
        by_stem.setdefault(p.stem, []).append(p)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(map(str, paths)) for paths in clashes[:3])
        raise PolypsegError(
            f"{len(clashes)} output name(s) would clash, e.g. {shown}: outputs are named after the image "
            "file's name. Predict those inputs into separate output folders."
        )
    return found

