"""Small generated media files for the video tests: grey-level clips, a rotated clip, a long audio track."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LEVEL_STEP = 12  # frame i of a grey clip is a flat grey of level (i * LEVEL_STEP) % 240


def write_grey_clip(
    path: Path, num_frames: int = 20, fps: int = 10, codec: str = "mpeg4", size=(64, 64), audio_seconds=0.0
) -> Path:
    """A clip whose frame i is a flat grey of level `(i * LEVEL_STEP) % 240`, optionally with a silent-ish
    audio track of `audio_seconds` (longer than the video when asked)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = *size, "yuv420p", 5
        audio = container.add_stream("aac", rate=16000) if audio_seconds else None
        for index in range(num_frames):
            image = np.full((size[1], size[0], 3), (index * LEVEL_STEP) % 240, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        if audio is not None:
            _write_tone(container, audio, audio_seconds)
    return path


def _write_tone(container, stream, seconds: float) -> None:
    samples = int(seconds * stream.rate)
    wave = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / stream.rate)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = wave[None, start : start + 1024]
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def frame_level(image) -> int:
    """Which source frame index (mod 20) a decoded grey image shows; lossy coding moves levels a few units."""
    return int(round(float(np.asarray(image, dtype=np.float32).mean()) / LEVEL_STEP))


def write_rotated_clip(path: Path) -> Path:
    """A 64x32 clip (left half white) whose track header says 'rotate 90°', as phone cameras write: players
    show it 32 wide and 64 high, white on top."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        image = np.zeros((32, 64, 3), dtype=np.uint8)
        image[:, :32] = 255
        for _ in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    rotate90 = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)
    header = data.find(b"tkhd")
    at = data.find(identity, header)
    assert header > 0 and 0 < at - header < 64, "no identity matrix in the tkhd box"
    data[at : at + 36] = rotate90
    path.write_bytes(bytes(data))
    return path


def write_variable_rate_clip(path: Path) -> tuple[Path, list[float]]:
    """A grey-level clip at 5 fps for one second, then 20 fps for one second (variable frame rate); returns
    the path and the frames' timestamps in seconds."""
    stamps_ms = [k * 200 for k in range(5)] + [1000 + k * 50 for k in range(20)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, stamp in enumerate(stamps_ms):
            image = np.full((64, 64, 3), (index * LEVEL_STEP) % 240, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path, [stamp / 1000 for stamp in stamps_ms]


def write_rateless_clip(path: Path) -> Path:
    """An MP4 holding one Motion-JPEG frame written without a frame rate (as a still-image 'video'): its stream
    has no average, guessed or base rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg")
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        stream.codec_context.framerate = Fraction(0, 1)
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 1000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
