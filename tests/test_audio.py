"""Audio I/O: round trips, mono mixing, resampling to 44.1 kHz, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from jukebox_flax.audio import AudioError, load_audio, save_wav


def sine(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


def test_round_trip_pcm16_and_float(tmp_path):
    audio = sine(440.0, 44100, 0.5)
    path = save_wav(tmp_path / "a.wav", audio)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    back = load_audio(path)
    assert back.dtype == np.float32 and back.shape == audio.shape
    np.testing.assert_allclose(back, audio, atol=1 / 32768 + 1e-6)  # 16-bit quantisation

    save_wav(tmp_path / "f.wav", audio[None, :, None], subtype="FLOAT")  # [1, T, 1] from a decoder
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav"), audio)


def test_save_clamps_and_is_atomic(tmp_path):
    path = tmp_path / "deep" / "dir" / "x.wav"
    save_wav(path, np.array([2.0, -3.0, 0.25], np.float32), subtype="FLOAT")
    np.testing.assert_array_equal(sf.read(str(path), dtype="float32")[0], [1.0, -1.0, 0.25])
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.wav"]  # no temporary left behind
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "nan.wav", np.array([0.0, np.nan], np.float32))
    with pytest.raises(AudioError, match="shape"):
        save_wav(tmp_path / "empty.wav", np.zeros((0,), np.float32))
    with pytest.raises(AudioError, match="subtype"):
        save_wav(tmp_path / "x.wav", np.zeros(4, np.float32), subtype="MP3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = sine(440.0, 44100, 0.25), sine(440.0, 44100, 0.25, amplitude=0.1)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    mono = load_audio(tmp_path / "s.wav")
    assert mono.shape == left.shape
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)
    both = load_audio(tmp_path / "s.wav", mono=False)
    assert both.shape == (len(left), 2)


@pytest.mark.parametrize("sr", [22050, 48000])
def test_resampled_to_44100(tmp_path, sr):
    seconds, freq = 1.0, 1000.0
    sf.write(str(tmp_path / "r.flac"), sine(freq, sr, seconds), sr)
    audio = load_audio(tmp_path / "r.flac")
    assert abs(len(audio) - 44100 * seconds) <= 1
    assert abs(peak_frequency(audio, 44100) - freq) < 2.0
    assert np.abs(audio).max() <= 1.0
    # the waveform itself, away from the edges, is the sine at the new rate
    np.testing.assert_allclose(audio[2000:-2000], sine(freq, 44100, seconds)[2000:-2000], atol=2e-3)


def test_offset_and_duration(tmp_path):
    audio = np.linspace(-1, 1, 44100, dtype=np.float32)
    save_wav(tmp_path / "a.wav", audio, subtype="FLOAT")
    part = load_audio(tmp_path / "a.wav", offset=0.5, duration=0.25)
    np.testing.assert_array_equal(part, audio[22050 : 22050 + 11025])
    with pytest.raises(AudioError, match="outside"):
        load_audio(tmp_path / "a.wav", offset=2.0)


def test_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("these are not the samples you are looking for\n" * 20)
    corrupt = tmp_path / "corrupt.wav"
    save_wav(corrupt, sine(440.0, 44100, 0.1))
    corrupt.write_bytes(corrupt.read_bytes()[:20])  # header cut short
    for name in ("zero.wav", "text.wav", "corrupt.wav"):
        with pytest.raises(AudioError, match="cannot read") as error:
            load_audio(tmp_path / name)
        assert "\n" not in str(error.value)
    sf.write(str(tmp_path / "silent.wav"), np.zeros((0, 1), np.float32), 44100)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "silent.wav")
    assert issubclass(AudioError, ValueError)


def test_saved_wavs_get_the_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_wav(tmp_path / "a.wav", sine(440.0, 44100, 0.1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # open()'s mode, not a private temporary file's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]
