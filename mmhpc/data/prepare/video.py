"""Video -> a few RGB frames per clip, 224 x 224, decoded with PyAV.

Frames are taken at `fps` (1 fps; 2 fps for IEMOCAP) over the clip, at the middle of each 1/fps
slot, and `count` evenly spaced of those are kept (3, as in the thesis Sec. 4.2). A clip too short
for `count` slots repeats frames. An image file (MVSA) is its own single frame.

Each whole frame is resized to 224 x 224 (bilinear, the aspect ratio not kept) before it is stored:
that is the thesis code base's evaluation transform, `Resize((224, 224))` (AMST
`code/dataset/dataset.py`), which keeps both speakers of IEMOCAP's two-person frames where a centre
square would cut one out. Training's RandomResizedCrop 224 + flip (`mmhpc.data.frames`) then works
on this image, and the prepared dataset stays small (one ~15 KB JPEG per frame).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mmhpc.data.prepare.raw import Media, RawFileError

IMAGE_SIZE = 224
JPEG_QUALITY = 90
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def recipe(fps: float, count: int) -> dict:
    return {"fps": fps, "frames": count, "size": IMAGE_SIZE, "resize": "whole frame, bilinear",
            "jpeg_quality": JPEG_QUALITY}


def sample_times(start: float, end: float, fps: float, count: int) -> list[float]:
    """`count` evenly spaced of the frame times an `fps` extraction of [start, end) yields (slot
    middles)."""
    duration = max(end - start, 0.0)
    slots = math.floor(duration * fps + 1e-9)
    grid = start + (np.arange(slots) + 0.5) / fps if slots else np.array([start + duration / 2])
    keep = np.floor(np.linspace(0, len(grid) - 1, count) + 0.5).astype(
        int
    )  # halves round up, not to even
    return [float(grid[k]) for k in keep]


def resize_frame(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """The whole frame resized to `size` x `size`, as torchvision's Resize((size, size)) does on a
    PIL image."""
    return img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def clip_frames(media: Media, fps: float, count: int) -> list[Image.Image]:
    """`count` frames of a video (window) or an image, each resized to IMAGE_SIZE x IMAGE_SIZE."""
    if media.path.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(media.path) as img:
            return [resize_frame(img)] * count
    return [resize_frame(f) for f in _decode_at(media, fps, count)]


def _decode_at(media: Media, fps: float, count: int) -> list[Image.Image]:
    path = media.path
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise RawFileError(path, "no video stream")
        stream = container.streams.video[0]
        # a window is relative to the file's start; a whole file starts where its stream does (edit
        # lists)
        origin = (
            float(stream.start_time * stream.time_base)
            if stream.start_time and stream.time_base
            else 0.0
        )
        start = media.start if media.start is not None else origin
        end = media.end if media.end is not None else origin + _duration(container, stream, path)
        targets = sample_times(start, end, fps, count)
        if start > 0:
            container.seek(
                int(start * av.time_base)
            )  # to the key frame before `start`; decode forward from it
        picked, last = [], None
        rate = float(stream.average_rate or 25)
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time
            if t is None:  # no timestamps: count frames, which is only right from the file's start
                if start > 0:
                    raise RawFileError(
                        path, "frames carry no timestamps, so the clip's window cannot be found"
                    )
                t = index / rate
            # the first frame at or after a target time stands for it (one frame may serve several
            # targets)
            while len(picked) < count and t >= targets[len(picked)]:
                picked.append(frame.to_image())
            if len(picked) == count:
                return picked
            last = frame
    if last is None:
        raise RawFileError(path, f"no video frames decoded from {start:.2f} s on")
    # the stream ended before the last target (its duration was overstated): repeat the last frame
    return picked + [last.to_image()] * (count - len(picked))


def _duration(container, stream, path: Path) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    # no duration in the headers: the last packet's end time
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    container.seek(0)
    if end <= 0:
        raise RawFileError(path, "cannot tell the video's duration")
    return end
