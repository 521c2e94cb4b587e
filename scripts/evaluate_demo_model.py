"""Evidence that the demo model learned: reconstruction, prior losses, genre control.

Run on held-out songs of the synthetic dataset (a seed the model never saw):

    python scripts/make_synthetic_dataset.py heldout --songs-per-pair 1 --seconds 8 --seed 1
    python scripts/evaluate_demo_model.py --data heldout [--model DIR] [--json out.json]

Reports

1. the VQ-VAE's reconstruction SNR (dB) per level on the held-out songs;
2. every prior's held-out loss in bits per token, against the uniform baseline log2(bins), with the
   correct labels and with wrong ones (artist and genre rotated): a gap shows the labels are used;
   the top prior also names each held-out crop's genre and artist by likelihood (accuracy);
3. label control: top-level samples for each genre (every artist, ``--sample-seeds`` runs of
   ``--sample-batch`` clips), and for each artist (decoded from the top codes), against the held-out
   songs' top-level reconstructions, measured by the features the generator's labels set (genre:
   note rate, tempo and timbre; artist: the register, i.e. the centroid), as mean and spread over
   clips, and the genres' separation (difference of means over the pooled spread).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAME, HOP = 2048, 512


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - est|^2) over the whole batch."""
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-12)))


def features(audio: np.ndarray, sr: int) -> dict[str, float]:
    """What the generator's labels set, measured on mono audio:

    * timbre: spectral centroid (Hz) and spectral flatness (0..1) of the non-silent frames;
    * note rate (tempo and rhythm): ``onsets_per_s`` (peaks of the positive log-spectral flux above a fixed margin) and
      ``note_changes_per_s`` (the loudest spectral peak moves by more than one FFT bin between
      consecutive non-silent frames: a new pitch; sustained tones and steady noise do not count).
    """
    n = 1 + max(0, len(audio) - FRAME) // HOP
    frames = np.stack([audio[i * HOP : i * HOP + FRAME] for i in range(n)]) * np.hanning(FRAME)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10
    freqs = np.fft.rfftfreq(FRAME, 1 / sr)
    loud = power.sum(1) > 1e-3 * power.sum(1).max()  # ignore silent frames
    centroid = float(np.mean((power * freqs).sum(1)[loud] / power.sum(1)[loud]))
    flatness = float(np.mean(np.exp(np.log(power).mean(1))[loud] / power.mean(1)[loud]))
    # onsets: peaks of the positive log-spectral flux above a fixed margin
    logp = np.log(power)
    flux = np.maximum(logp[1:] - logp[:-1], 0).mean(1)
    thresh = np.median(flux) + 1.0
    peaks = [
        i for i in range(1, len(flux) - 1) if flux[i] > thresh and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1]
    ]
    seconds = len(audio) / sr
    # pitch: the loudest bin between 43 Hz and 4.3 kHz (the synthetic songs' notes and bass)
    pitch = np.argmax(power[:, 2:200], axis=1)
    changes = np.sum((np.abs(np.diff(pitch)) > 1) & loud[1:] & loud[:-1])
    return {
        "centroid_hz": centroid,
        "flatness": flatness,
        "onsets_per_s": len(peaks) / seconds,
        "note_changes_per_s": float(changes / seconds),
    }


def mean_features(clips: list[np.ndarray], sr: int) -> dict[str, float]:
    """Mean of every feature over the clips, and its spread (``<feature>_std``, over clips)."""
    rows = [features(c, sr) for c in clips]
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        out[k], out[f"{k}_std"] = float(np.mean(values)), float(np.std(values))
    out["clips"] = len(rows)
    return out


def separation(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """For every pair of groups and feature: the difference of means in units of the pooled
    per-clip standard deviation (Cohen's d); |d| > 2 means the two groups barely overlap."""
    names = sorted(groups)
    keys = [k for k in groups[names[0]] if not k.endswith("_std") and k != "clips"]
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ga, gb = groups[a], groups[b]
            out[f"{a} - {b}"] = {
                k: float((ga[k] - gb[k]) / max(np.sqrt((ga[k + "_std"] ** 2 + gb[k + "_std"] ** 2) / 2), 1e-12))
                for k in keys
            }
    return out


def vqvae_snr(model: Path, songs, sr: int) -> tuple:
    """(SNR in dB per level, the VQ-VAE, the held-out audio [B, T, 1], its codes)."""
    from jukebox_flax.audio import load_audio
    from jukebox_flax.vqvae.api import load_vqvae

    vq = load_vqvae(model)
    hop = vq.config.hop_length
    audio = [load_audio(s.path, sr=sr) for s in songs]
    n = min(len(a) for a in audio) // hop * hop
    x = np.stack([a[:n] for a in audio])[:, :, None].astype(np.float32)
    codes = vq.encode(x)
    out = {}
    for level in range(vq.config.levels):
        recon = np.asarray(vq.decode(codes[level:], start_level=level))
        out[f"level_{level}_snr_db"] = snr_db(x, recon)
    return out, vq, x, codes


def prior_losses(model: Path, vq, songs, batches: int, batch: int) -> dict[str, dict[str, float]]:
    import jax

    from jukebox_flax.data import AudioDataset
    from jukebox_flax.labels import Labeller
    from jukebox_flax.prior.api import load_prior
    from jukebox_flax.prior.prior import JukeboxPrior
    from jukebox_flax.vqvae.vqvae import VQVAEModule

    out = {}
    vq_module = VQVAEModule(vq.config)
    for level in range(vq.config.levels):
        prior = load_prior(model, level=level)
        config = prior.config
        labeller = Labeller.from_vocab_dict(prior.vocab).for_config(config) if config.labels else None
        data = AudioDataset(songs, config.sample_length, labeller, sr=config.sr)
        module = JukeboxPrior(config)

        @jax.jit
        def bits(params, audio, y):
            codes = vq_module.apply({"params": vq.params}, audio, method=VQVAEModule.encode)
            upper = codes[config.level + 1] if config.is_upsampler else None
            return module.apply({"params": params}, codes[config.level], y, upper, method=JukeboxPrior.loss)[1]["bpd"]

        right, wrong = [], []
        n_artists, n_genres = len(labeller.artists) - 1, len(labeller.genres) - 1
        for i in range(batches):
            b = data.batch(i, batch, seed=1234)
            right.append(float(bits(prior.params, b.audio, b.y)))
            y = np.array(b.y)
            y[:, 3] = (y[:, 3] % n_artists) + 1  # another artist (ids 1..n)
            y[:, 4] = (y[:, 4] % n_genres) + 1  # another genre
            wrong.append(float(bits(prior.params, b.audio, y)))
        out[f"prior_level_{level}"] = {
            "bits_per_token": float(np.mean(right)),
            "bits_wrong_labels": float(np.mean(wrong)),
            "uniform_bits": float(np.log2(config.bins)),
        }
        if not config.is_upsampler:
            out[f"prior_level_{level}"].update(identify_labels(bits, prior.params, data, labeller))
    return out


def identify_labels(bits, params, data, labeller, crops_per_song: int = 2) -> dict[str, float]:
    """Name each held-out crop's genre (and artist) as the label under which the top prior gives it
    the fewest bits: the accuracy shows the prior ties labels to the music (chance: 1/3 and 1/4)."""
    import jax

    per_example = jax.jit(jax.vmap(lambda p, a, y: bits(p, a[None], y[None]), in_axes=(None, 0, 0)))
    hits = {"genre": [], "artist": []}
    for index in range(len(data.songs)):
        length = data.lengths[index]
        for k in range(crops_per_song):
            audio, y = data.crop(index, (length - data.sample_length) * k // max(1, crops_per_song - 1))
            for name, column, ids in (("genre", 4, labeller.genres), ("artist", 3, labeller.artists)):
                candidates = sorted(i for i in ids.values() if i > 0)
                ys = np.repeat(np.asarray(y)[None], len(candidates), 0)
                ys[:, column] = candidates
                audios = np.repeat(np.asarray(audio)[None, :, None], len(candidates), 0)
                scores = np.asarray(per_example(params, audios, ys))
                hits[name].append(candidates[int(np.argmin(scores))] == int(y[column]))
    return {f"{name}_id_accuracy": float(np.mean(h)) for name, h in hits.items()}


def conditioned_samples(
    model: Path,
    groups: dict[str, list[tuple[str, str]]],
    seconds: float,
    batch: int,
    sr: int,
    temperature: float,
    seeds: int = 1,
) -> dict[str, dict[str, float]]:
    """Sample the top level only (decoded from its codes) for every (artist, genre) of each group,
    ``seeds`` runs of ``batch`` clips each; the features per group (mean and spread over clips)."""
    import soundfile as sf

    from jukebox_flax.cli import build_parser
    from jukebox_flax.sampling.command import run_sample

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pairs in groups.items():
            clips = []
            for k, (artist, genre) in enumerate(pairs):
                for j in range(seeds):
                    run = Path(tmp) / f"{name}_{k}_{j}"
                    args = build_parser().parse_args(
                        [
                            "sample",
                            "--model",
                            str(model),
                            "--seconds",
                            str(seconds),
                            "--levels",
                            "1",
                            "--batch",
                            str(batch),
                            "--artist",
                            artist,
                            "--genre",
                            genre,
                            "--seed",
                            str(k * seeds + j),
                            "--temperature",
                            str(temperature),
                            "--out",
                            str(run),
                        ]
                    )
                    run_sample(args)
                    clips += [sf.read(str(f), dtype="float32")[0] for f in sorted((run / "level_2").glob("*.wav"))]
            out[name] = mean_features(clips, sr)
    return out


def main() -> None:
    from jukebox_flax.checkpoint import load_config
    from jukebox_flax.data import read_metadata
    from jukebox_flax.sampling.command import default_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="held-out songs (make_synthetic_dataset.py --seed 1)")
    parser.add_argument("--model", type=Path, default=None, help="whole-model directory (default: the bundled one)")
    parser.add_argument("--batches", type=int, default=4, help="held-out batches per prior")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of every genre sample")
    parser.add_argument("--sample-batch", type=int, default=2)
    parser.add_argument("--sample-seeds", type=int, default=2, help="sampling runs per (artist, genre)")
    parser.add_argument("--temperature", type=float, default=0.99, help="sampling temperature (sample's default)")
    parser.add_argument("--artists", nargs="+", default=["Ada Low", "Ben High", "Cleo Minor", "Dev Tritone"])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    model = args.model or default_model()
    songs = read_metadata(Path(args.data) / "metadata.csv")
    t0 = time.time()
    sr = load_config(model).vqvae.sr
    report = {}
    report["vqvae"], vq, x, codes = vqvae_snr(model, songs, sr)
    print("VQ-VAE reconstruction SNR (dB):", json.dumps(report["vqvae"]))
    report["priors"] = prior_losses(model, vq, songs, args.batches, args.batch)
    for name, r in report["priors"].items():
        print(
            f"{name}: {r['bits_per_token']:.3f} bits/token (wrong labels {r['bits_wrong_labels']:.3f}; "
            f"uniform {r['uniform_bits']:.3f})" + "".join(f"; {k} {v:.2f}" for k, v in r.items() if "accuracy" in k)
        )
    # reference: the held-out songs per genre, through the top level of the VQ-VAE
    top = np.asarray(vq.decode(codes[-1:], start_level=len(codes) - 1))[:, :, 0]
    genres = sorted({s.genre for s in songs})
    report["heldout_top_recon"] = {
        g: mean_features([top[i] for i, s in enumerate(songs) if s.genre == g], sr) for g in genres
    }
    report["heldout_original"] = {
        g: mean_features([x[i, :, 0] for i, s in enumerate(songs) if s.genre == g], sr) for g in genres
    }
    artists = sorted({s.artist for s in songs})
    report["samples_by_genre"] = conditioned_samples(
        model,
        {g: [(a, g) for a in args.artists] for g in genres},
        args.seconds,
        args.sample_batch,
        sr,
        args.temperature,
        args.sample_seeds,
    )
    report["separation_samples_by_genre"] = separation(report["samples_by_genre"])
    report["separation_heldout_top_recon"] = separation(report["heldout_top_recon"])
    # artists set the register: compare them on the sine-tone genre, where the centroid follows pitch
    report["heldout_top_recon_by_artist"] = {
        a: mean_features([top[i] for i, s in enumerate(songs) if s.artist == a and s.genre == "ambient"], sr)
        for a in artists
    }
    report["samples_by_artist"] = conditioned_samples(
        model,
        {a: [(a, "ambient")] for a in artists},
        args.seconds,
        args.sample_batch,
        sr,
        args.temperature,
        2 * args.sample_seeds,
    )
    for key in (
        "heldout_original",
        "heldout_top_recon",
        "samples_by_genre",
        "heldout_top_recon_by_artist",
        "samples_by_artist",
    ):
        print(f"{key}:")
        for g, f in report[key].items():
            print(
                f"  {g:11s} "
                + "  ".join(
                    f"{k} {v:.4g}±{f[k + '_std']:.2g}" for k, v in f.items() if not k.endswith("_std") and k != "clips"
                )
                + f"  ({f['clips']} clips)"
            )
    for key in ("separation_heldout_top_recon", "separation_samples_by_genre"):
        print(f"{key} (difference of means / pooled std):")
        for g, f in report[key].items():
            print(f"  {g:22s} " + "  ".join(f"{k} {v:+.2f}" for k, v in f.items()))
    report["seconds"] = time.time() - t0
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
