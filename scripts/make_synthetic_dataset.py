"""Write a small synthetic music dataset whose labels a model can learn.

Every song is a melody plus accompaniment; what each label controls is audible and measurable:

* **genre** sets the rhythm, tempo and timbre:
  ``ambient``  - sine tones with soft attacks, 72 BPM, long notes, no drums;
  ``chiptune`` - square waves, 150 BPM, staccato eighth-note arpeggios;
  ``breakbeat`` - a triangle bass line under noise-burst snares and sine-sweep kicks, 120 BPM.
* **artist** sets the pitch material: the scale and the register
  (Ada Low: C major around C3, Ben High: C major around C5, Cleo Minor: A minor around A3,
  Dev Tritone: a whole-tone scale around F#4).
* **lyrics** are lyric-like lines drawn from a vocabulary that depends on the artist
  (and a chorus word that depends on the genre), so lyrics carry label information too.

Output: ``OUT/audio/*.wav`` (16-bit mono at 44.1 kHz) and ``OUT/metadata.csv`` with the columns
``file, artist, genre, lyrics`` (what ``jukebox_flax.data`` reads). Deterministic for a seed.

    python scripts/make_synthetic_dataset.py OUT --songs-per-pair 4 --seconds 8
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

SR = 44100

# artist -> (scale as semitone offsets, root frequency in Hz, lyric vocabulary)
ARTISTS = {
    "Ada Low": ((0, 2, 4, 5, 7, 9, 11), 130.81, "river stone deep slow water under ground old road home".split()),
    "Ben High": ((0, 2, 4, 5, 7, 9, 11), 523.25, "sky light bird fly bright sun wing cloud high morning".split()),
    "Cleo Minor": ((0, 2, 3, 5, 7, 8, 10), 220.00, "night rain cold alone shadow grey tears winter moon lost".split()),
    "Dev Tritone": (
        (0, 2, 4, 6, 8, 10),
        369.99,
        "machine wire signal static orbit electric future glass neon code".split(),
    ),
}

# genre -> (beats per minute, note length in beats, timbre, chorus word)
GENRES = {
    "ambient": (72, 2.0, "sine", "drift"),
    "chiptune": (150, 0.5, "square", "jump"),
    "breakbeat": (120, 1.0, "drums", "break"),
}

FILLER = "oh we and the my your in on to of is so".split()


def note_freq(root: float, scale: tuple[int, ...], degree: int) -> float:
    """Frequency of a scale degree (degrees beyond the scale wrap into higher/lower octaves)."""
    octave, step = divmod(degree, len(scale))
    return root * 2.0 ** (octave + scale[step] / 12.0)


def envelope(n: int, attack: float, release: float) -> np.ndarray:
    """A linear attack, sustain, linear release envelope over ``n`` samples."""
    env = np.ones(n, np.float32)
    a, r = min(n, int(attack * SR)), min(n, int(release * SR))
    if a:
        env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


def tone(freq: float, n: int, timbre: str) -> np.ndarray:
    t = np.arange(n) / SR
    phase = 2 * np.pi * freq * t
    if timbre == "square":
        return 0.6 * np.sign(np.sin(phase))
    if timbre == "triangle":
        return 2 / np.pi * np.arcsin(np.sin(phase))
    return np.sin(phase) + 0.2 * np.sin(2 * phase)  # sine with a little second harmonic


def melody(rng: np.random.Generator, n_notes: int, scale_len: int) -> list[int]:
    """A random walk over scale degrees that stays within about an octave and a half."""
    degree, out = 0, []
    for _ in range(n_notes):
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), -2, scale_len + 3))
        out.append(degree)
    return out


def render_song(artist: str, genre: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One song as float32 [T] in [-1, 1]."""
    scale, root, _ = ARTISTS[artist]
    bpm, note_beats, timbre, _ = GENRES[genre]
    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    beat = 60.0 / bpm
    note_len = int(note_beats * beat * SR)
    degrees = melody(rng, n // note_len + 1, len(scale))
    for i, degree in enumerate(degrees):
        start = i * note_len
        length = min(note_len, n - start)
        if length <= 0:
            break
        freq = note_freq(root, scale, degree)
        if timbre == "sine":
            out[start : start + length] += 0.5 * tone(freq, length, "sine") * envelope(length, 0.15, 0.3)
        elif timbre == "square":
            on = max(1, int(length * 0.6))  # staccato: sound for 60% of the note
            out[start : start + on] += 0.35 * tone(freq, on, "square") * envelope(on, 0.005, 0.02)
        else:  # drums + a bass line one octave down
            out[start : start + length] += 0.4 * tone(freq / 2, length, "triangle") * envelope(length, 0.01, 0.05)
    if timbre == "drums":
        add_drums(out, beat, rng)
    if timbre == "square":  # an arpeggio an octave up on the off-beats, the chiptune signature
        half = note_len // 2
        for i, degree in enumerate(degrees):
            start = i * note_len + half
            length = min(half // 2, n - start)
            if length > 0:
                freq = 2 * note_freq(root, scale, degree + 2)
                out[start : start + length] += 0.2 * tone(freq, length, "square") * envelope(length, 0.002, 0.01)
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.8 * out / peak).astype(np.float32)


def add_drums(out: np.ndarray, beat: float, rng: np.random.Generator) -> None:
    """Kick on beats 1 and 3 (plus a syncopated one), snare on 2 and 4, eighth-note hi-hats."""
    n = len(out)
    step = int(beat * SR / 2)  # eighth notes
    kick_len, snare_len, hat_len = int(0.15 * SR), int(0.12 * SR), int(0.03 * SR)
    t_kick = np.arange(kick_len) / SR
    kick = np.sin(2 * np.pi * (110 * t_kick - 150 * t_kick**2)) * np.exp(-t_kick * 25)
    for i, start in enumerate(range(0, n, step)):
        pos = i % 8  # eighth-note position within a bar of 4 beats
        if pos in (0, 3, 4):
            length = min(kick_len, n - start)
            out[start : start + length] += 0.8 * kick[:length]
        if pos in (2, 6):
            length = min(snare_len, n - start)
            out[start : start + length] += 0.5 * rng.standard_normal(length) * np.exp(-np.arange(length) / SR * 30)
        length = min(hat_len, n - start)
        noise = np.diff(rng.standard_normal(length + 1))  # differenced noise: bright, hi-hat like
        out[start : start + length] += 0.08 * noise * np.exp(-np.arange(length) / SR * 120)


def lyrics_for(artist: str, genre: str, rng: np.random.Generator, lines: int = 8) -> str:
    """Lyric-like text: short lines of the artist's words, and a genre chorus every fourth line."""
    words = ARTISTS[artist][2]
    chorus = GENRES[genre][3]
    out = []
    for i in range(lines):
        if i % 4 == 3:
            out.append(f"{chorus} {chorus}, {chorus} with me".capitalize())
            continue
        count = int(rng.integers(4, 7))
        line = [str(rng.choice(words)) if rng.random() < 0.6 else str(rng.choice(FILLER)) for _ in range(count)]
        out.append(" ".join(line).capitalize())
    return "\n".join(out)


def make_dataset(out: Path, songs_per_pair: int = 4, seconds: float = 8.0, seed: int = 0) -> Path:
    """Write the dataset into ``out``; returns the path of ``metadata.csv``."""
    import soundfile as sf

    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for a, artist in enumerate(ARTISTS):
        for g, genre in enumerate(GENRES):
            for k in range(songs_per_pair):
                rng = np.random.default_rng([seed, a, g, k])
                name = f"{artist.split()[0].lower()}_{genre}_{k:02d}.wav"
                sf.write(str(audio_dir / name), render_song(artist, genre, seconds, rng), SR, subtype="PCM_16")
                rows.append(
                    {
                        "file": f"audio/{name}",
                        "artist": artist,
                        "genre": genre,
                        "lyrics": lyrics_for(artist, genre, rng),
                    }
                )
    metadata = out / "metadata.csv"
    with open(metadata, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "artist", "genre", "lyrics"])
        writer.writeheader()
        writer.writerows(rows)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory (audio/ and metadata.csv)")
    parser.add_argument("--songs-per-pair", type=int, default=4, help="songs per (artist, genre) pair")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of every song")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.songs_per_pair < 1 or args.seconds <= 0:
        parser.error("--songs-per-pair must be >= 1 and --seconds > 0")
    metadata = make_dataset(args.out, args.songs_per_pair, args.seconds, args.seed)
    n = args.songs_per_pair * len(ARTISTS) * len(GENRES)
    print(f"wrote {n} songs of {args.seconds:g} s and {metadata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
