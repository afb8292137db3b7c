"""Speech to timed subtitle lines when a video has none (the paper's Section III, Step 4).

The audio track is decoded with PyAV to 16 kHz mono and transcribed by transformers'
`automatic-speech-recognition` pipeline with a Whisper-family checkpoint, asking for segment timestamps
(`return_timestamps=True`); each segment becomes one cue `{start_time, end_time, text}` in seconds.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .schema import check_language

SAMPLING_RATE = 16_000  # Whisper's feature extractors expect 16 kHz


def decode_audio(path: str | Path, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The first audio stream of `path` as float32 mono samples at `sampling_rate`, shape `(samples,)`.

    Raises `ValueError` naming the file when it has no audio stream or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
    pieces = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream to transcribe")
            for frame in container.decode(container.streams.audio[0]):
                pieces.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(frame))
            pieces.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(None))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable audio ({err})") from err
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, dtype=np.float32)


def transcribe(path: str | Path, asr_model: str, lang: str, device: str | int | None = None) -> list[dict]:
    """Timed lines `[{start_time, end_time, text}]` (seconds, time order) of the speech in `path`.

    `asr_model` is a Whisper-family checkpoint (folder or Hub id); `lang` (`en`/`zh`) is passed to Whisper
    as the spoken language. A segment left open at the end of the audio ends with the audio.
    """
    from transformers import pipeline  # heavy import, only when speech is transcribed

    check_language(lang)
    audio = decode_audio(path)
    duration = len(audio) / SAMPLING_RATE
    recognizer = pipeline("automatic-speech-recognition", model=asr_model, device=device)
    output = recognizer(
        {"raw": audio, "sampling_rate": SAMPLING_RATE},
        return_timestamps=True,
        generate_kwargs={"language": lang, "task": "transcribe"},
    )
    cues = []
    for chunk in output.get("chunks", []):
        start, end = chunk["timestamp"]
        start = min(float(start or 0.0), duration)
        end = duration if end is None else min(max(float(end), start), duration)
        cues.append({"start_time": start, "end_time": end, "text": " ".join(chunk["text"].split())})
    return sorted((cue for cue in cues if cue["text"]), key=lambda cue: (cue["start_time"], cue["end_time"]))
