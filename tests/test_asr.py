"""No subtitles (Step 4): speech transcribed by a Whisper-family model into timed lines, then clips.

The Whisper here is built from its config with random weights and a byte-level tokenizer made locally, so
its text is noise; the audio decoding, the timestamps, the timing and the output format are real."""

import json
from pathlib import Path

import pytest
import torch
from media import write_grey_clip
from test_predict_video import REPO, save_tiny_m3d
from tokenizers import pre_tokenizers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from modeling_m3d.asr_m3d import SAMPLING_RATE, decode_audio, transcribe
from modeling_m3d.ingest_m3d import ingest_video

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
TIMESTAMPS = [f"<|{k * 0.02:.2f}|>" for k in range(1501)]  # Whisper's 0.00 ... 30.00 s tokens


def save_tiny_whisper(folder: Path) -> Path:
    """A 1-layer Whisper (random weights) with its processor, saved to `folder`, loadable by the ASR pipeline."""
    vocab = {
        token: i
        for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()) + SPECIALS + TIMESTAMPS)
    }
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS + TIMESTAMPS})
    ids = {token: vocab[token] for token in SPECIALS}
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=40,
        pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end, eos_token_id=end, pad_token_id=end, max_length=40,
        begin_suppress_tokens=[end], suppress_tokens=[], no_timestamps_token_id=ids["<|notimestamps|>"],
        lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]}, is_multilingual=True,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        max_initial_timestamp_index=50,
    )  # fmt: skip
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A 4 s video with 5 s of audio."""
    return write_grey_clip(tmp_path_factory.mktemp("speech") / "speech.mp4", num_frames=40, audio_seconds=5.0)


def test_decode_audio_resamples_to_16_khz_mono(speech):
    audio = decode_audio(speech)
    assert audio.dtype.name == "float32" and audio.ndim == 1
    assert len(audio) == pytest.approx(5.0 * SAMPLING_RATE, rel=0.02) and 0.05 < abs(audio).max() < 0.2


def test_transcribe_gives_timed_lines_within_the_audio(speech, whisper):
    cues = transcribe(speech, str(whisper), "en")
    assert cues and all(set(cue) == {"start_time", "end_time", "text"} for cue in cues)
    assert all(0.0 <= cue["start_time"] <= cue["end_time"] <= 5.0 + 0.1 for cue in cues)
    assert [cue["start_time"] for cue in cues] == sorted(cue["start_time"] for cue in cues)


def test_ingest_without_subtitles_transcribes_the_speech(speech, whisper):
    (clip,) = ingest_video(speech, lang="en", asr_model=str(whisper), frame_step=10)
    assert clip.clip_id == "speech_0" and clip.cues and len(clip.frames) == 4
    assert all(cue["end_time"] <= 4.0 + 1e-6 for cue in clip.cues)  # cut at the video's end


def test_a_video_without_audio_cannot_be_transcribed(tmp_path, whisper):
    silent = write_grey_clip(tmp_path / "silent.mp4")
    with pytest.raises(ValueError, match=r"silent\.mp4: no audio stream to transcribe"):
        ingest_video(silent, lang="en", asr_model=str(whisper))


def test_predict_script_with_an_asr_model(speech, whisper, tmp_path, monkeypatch):
    model_dir = save_tiny_m3d(tmp_path / "m3d")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    output = tmp_path / "clips.jsonl"
    predict.main(["--model", str(model_dir), "--video", str(speech), "--asr_model", str(whisper),
                  "--output", str(output), "--frame_step", "10", "--device", "cpu"])  # fmt: skip
    (line,) = [json.loads(text) for text in output.read_text(encoding="utf-8").splitlines()]
    assert line["id"] == "speech_0" and line["tokens"] and line["document"]
