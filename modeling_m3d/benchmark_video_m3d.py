"""Frame sampling speed: a generated test video and the frames kept per second of wall time.

```python
video = write_test_video("bench.mp4")  # 10 minutes, 640x360, 24 fps, H.264 (keyframe every 10 s)
frames_kept_per_second(video)  # {"frames": 600, "seconds": ..., "frames_per_second": ...}
```

`seek_gap` chooses the strategy measured: 0 seeks to every sample, `math.inf` decodes every frame in
order, the default (`video_m3d.SEEK_GAP_SECONDS`) seeks only past samples that far apart.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np

from .ingest_m3d import FRAME_STEP
from .video_m3d import SEEK_GAP_SECONDS, frames_at, probe_video


def write_test_video(
    path: str | Path,
    seconds: float = 600.0,
    width: int = 640,
    height: int = 360,
    fps: int = 24,
    gop: int = 240,
) -> Path:
    """An H.264 video of moving gradients (`gop` frames between keyframes), as a stand-in for real footage."""
    path = Path(path)
    rows, columns = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", gop
        for index in range(int(seconds * fps)):
            pixels = np.stack(
                [(columns + 4 * index) % 256, (rows + 2 * index) % 256, np.full_like(rows, index % 256)],
                axis=-1,
            ).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def frames_kept_per_second(
    video: str | Path, frame_step: int = FRAME_STEP, seek_gap: float = SEEK_GAP_SECONDS, max_side: int = 640
) -> dict:
    """Sample `video` like ingestion does (one frame every `frame_step`) and time it: `{"frames", "seconds",
    "frames_per_second"}` (frames kept per second of wall time)."""
    info = probe_video(video)
    step = frame_step / info.fps
    times = list(np.arange(info.start, info.end - 1e-9, step))
    began = time.perf_counter()
    frames = frames_at(video, times, max_side, seek_gap=seek_gap)
    seconds = time.perf_counter() - began
    return {"frames": len(frames), "seconds": seconds, "frames_per_second": len(frames) / seconds}
