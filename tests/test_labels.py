"""Labels against the original Jukebox (misc_oracle.json, pipeline_trace) and the HF tokenizer cases."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import HF, OPENAI, hps, load_npz

import jukebox_flax as jf
from jukebox_flax.config import preset
from jukebox_flax.labels import (
    V2_ALPHABET,
    V3_ALPHABET,
    Label,
    LabelError,
    Labeller,
    clean_lyrics,
    relevant_lyric_tokens,
    textise,
    tokenise,
    window_y,
)
from jukebox_flax.prior import conditioners
from jukebox_flax.prior.api import Prior, init_prior_params
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps

ORACLE = json.loads((OPENAI / "misc_oracle.json").read_text())
HF_TOKENIZER = HF / "tokenizer"
HF_CASES = json.loads((HF_TOKENIZER / "tokenizer_cases.json").read_text())["cases"]
ALPHABETS = {"v2": V2_ALPHABET, "v3": V3_ALPHABET}
VERSION_KEY = {"v2": "v3=False", "v3": "v3=True"}


# ---------------------------------------------------------------------------------------------
# misc_oracle.json: text, ids, windows, y vectors


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_text_processing_matches_original(version):
    case = ORACLE["text_and_ids"][VERSION_KEY[version]]
    alphabet = ALPHABETS[version]
    assert list(alphabet) == case["vocab"]
    assert len(alphabet) + 1 == case["n_vocab"]
    assert clean_lyrics(case["raw"], alphabet) == case["cleaned"]
    assert tokenise(case["cleaned"], alphabet) == case["tokens"]
    assert textise(case["tokens"], alphabet) == case["cleaned"]
    assert textise([0, 0] + case["tokens"], alphabet) == case["cleaned"]  # padding -> ''


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_artist_and_genre_ids_match_original(ids_dir, version):
    case = ORACLE["text_and_ids"][VERSION_KEY[version]]
    original = Labeller.from_ids_dir(ids_dir, version, strict=False)  # unknown -> 0, as the original
    for artist, expected in case["artist_ids"].items():
        assert original.artist_id(artist) == expected, artist
    for genre, expected in case["genre_ids"].items():
        assert original.genre_ids(genre) == expected, genre

    strict = Labeller.from_ids_dir(ids_dir, version)
    for artist, expected in case["artist_ids"].items():
        if expected == 0:
            with pytest.raises(LabelError, match="unknown artist"):
                strict.artist_id(artist)
        else:
            assert strict.artist_id(artist) == expected
    assert strict.artist_id("unknown") == 0


def _window_case(key: str):
    params = dict(part.split("=") for part in key.split(","))
    return [int(params[k]) for k in ("n", "total", "offset", "dur")]


@pytest.mark.parametrize("float32", [False, True])
@pytest.mark.parametrize("key", sorted(ORACLE["lyric_windows"]))
def test_lyric_windows_match_original(key, float32):
    expected = ORACLE["lyric_windows"][key]
    if key == "short_full_tokens":
        # fewer tokens than the window: left-padded with 0 / index -1
        tokens, indices = relevant_lyric_tokens([5, 6, 7], 6, 1000, 0, 100, float32=float32)
    else:
        n, total, offset, duration = _window_case(key)
        full = list(range(1, 301))  # the oracle's full_tokens: 1..300
        tokens, indices = relevant_lyric_tokens(full, n, total, offset, duration, float32=float32)
    assert tokens == expected["tokens"]
    assert indices == expected["indices"]


def test_lyric_window_float32_matches_original_sampling_arithmetic():
    # Per sampling window the original computes the midpoint from torch int64 scalars, i.e. in
    # float32; get_label uses Python floats. They differ when the position is just below an integer:
    # here 1411 * (3843456 + 524288) / 5468400 = 1126.99999707 (float64) but 1127.0 in float32.
    full = list(range(1, 1412))
    args = (full, 16, 5468400, 3843456, 1048576)
    tokens64, indices64 = relevant_lyric_tokens(*args)
    tokens32, indices32 = relevant_lyric_tokens(*args, float32=True)
    assert indices64[0] == 1126 - 8 and indices32[0] == 1127 - 8

    torch = pytest.importorskip("torch")
    total, offset, duration = torch.tensor([5468400, 3843456, 1048576])
    midpoint = int(len(full) * (offset + duration / 2.0) / total)  # the original expression
    assert midpoint == 1127 and tokens32 == full[midpoint - 8 : midpoint + 8]


def test_lyric_window_rejects_offset_outside_song():
    with pytest.raises(LabelError):
        relevant_lyric_tokens(list(range(100)), 16, 1000, 1000, 10)


@pytest.mark.parametrize(
    "version, n_tokens, genre_size, sample_length, key",
    [("v2", 512, 5, 8192 * 8 * 4 * 4, "labeller_v2_y"), ("v3", 384, 1, 6144 * 8 * 4 * 4, "labeller_v3_y")],
)
def test_labeller_y_matches_original(ids_dir, version, n_tokens, genre_size, sample_length, key):
    # labels.py __main__ of the original: Alan Jackson / Country Rock / "old town road", 4 minutes.
    labeller = Labeller.from_ids_dir(
        ids_dir, version, n_tokens=n_tokens, max_bow_genre_size=genre_size, sample_length=sample_length
    )
    y = labeller.get_y("Alan Jackson", "Country Rock", "old town road", 4 * 60 * 44100, 0)
    assert y.dtype == np.int32 and y.shape == (labeller.y_length,)
    np.testing.assert_array_equal(y, ORACLE[key])
    described = labeller.describe_y(y)
    assert described["lyrics"] == "old town road" and described["total_length"] == 10584000
    assert described["genre"] == ("country_rock" if version == "v2" else "country rock")


# ---------------------------------------------------------------------------------------------
# The 3-level sampling trace: song labels per level and the y of every window


@pytest.fixture(scope="module")
def trace():
    return load_npz("openai/pipeline_trace")


@pytest.fixture(scope="module")
def song_labels(ids_dir, trace):
    """Labels of the trace's two songs at each level, built from names and lyric text."""
    top = load_npz("openai/prior_top1b")
    lyrics = [textise(top[f"inputs/full_tokens/{i}"], V3_ALPHABET) for i in range(2)]
    songs = [("Alan Jackson", "Country", 2646000), ("Joe Bonamassa", "Blues Rock", 3969000)]
    labellers = {
        # tiny models: n_ctx 64 at every level, hops of 8 / 32 / 128 samples per token
        0: Labeller.from_ids_dir(ids_dir, "v2", sample_length=512),
        1: Labeller.from_ids_dir(ids_dir, "v2", sample_length=2048),
        2: Labeller.from_ids_dir(ids_dir, "v3", n_tokens=16, sample_length=8192),
    }
    labels = {
        level: [lab.get_label(a, g, text, total, 0) for (a, g, total), text in zip(songs, lyrics)]
        for level, lab in labellers.items()
    }
    return labellers, labels, top


def test_song_labels_match_trace(song_labels, trace):
    labellers, labels, top = song_labels
    for level in range(3):
        np.testing.assert_array_equal(np.stack([lab.y for lab in labels[level]]), trace[f"labels_y/{level}"])
    for i in range(2):
        assert labels[2][i].full_tokens == tuple(top[f"inputs/full_tokens/{i}"].tolist())


def test_window_y_matches_every_sampling_call(song_labels, trace):
    labellers, labels, top = song_labels
    hops = {0: 8, 1: 32, 2: 128}
    starts = {level: list(trace[f"window_starts/{level}"]) for level in range(3)}
    calls = sorted({int(k.split("/")[1]) for k in trace if k.startswith("trace/")})
    seen = {0: 0, 1: 0, 2: 0}
    for call in calls:
        level = int(trace[f"trace/{call}/level"])
        start = starts[level][seen[level]]
        seen[level] += 1
        y = labellers[level].get_window_y(labels[level], start, hops[level])
        np.testing.assert_array_equal(y, trace[f"trace/{call}/y"], err_msg=f"call {call}")
    assert seen == {level: len(s) for level, s in starts.items()}

    # prior_top1b's window at token 192, through the module-level helper on raw arrays
    full = [top[f"inputs/full_tokens/{i}"].tolist() for i in range(2)]
    y = window_y(top["inputs/labels_y"], full, 16, int(top["inputs/window_start_tokens"]), 128, 8192)
    np.testing.assert_array_equal(y, top["inputs/y"])


def test_window_y_moves_the_lyric_window():
    labeller = Labeller("v2", {"a": 1}, {"rock": 8}, V2_ALPHABET, n_tokens=4, max_bow_genre_size=1, sample_length=100)
    label = labeller.get_label("a", "rock", "abcdefghijklmnopqrst", total_length=1000, offset=0)
    # first window: midpoint int(20 * 50 / 1000) = 1, clamped to 2 -> 'abcd'
    assert labeller.textise(label.y[-4:]) == "abcd"
    y = labeller.get_window_y(label, start=45, hop_length=10, sample_length=200)
    # offset 450, duration 200: midpoint int(20 * 550 / 1000) = 11 -> characters 9..12
    assert y[:3].tolist() == [1000, 450, 200] and labeller.textise(y[-4:]) == "jklm"
    np.testing.assert_array_equal(label.y[:3], [1000, 0, 100])  # the song's label is not modified


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer cases: same ids except where HF departs from the original


def _hf_labeller(version: str, n_genres: int) -> Labeller:
    return Labeller.from_vocab(HF_TOKENIZER / "vocab", version=version, max_bow_genre_size=n_genres, strict=False)


def _original_cleaning(text: str, version: str) -> str:
    # The original TextProcessor.clean, spelled out: unidecode, '\' -> '\n', regex of the alphabet.
    import re

    from unidecode import unidecode

    plus = "+" if version == "v2" else ""
    return re.sub(f"[^A-Za-z0-9.,:;!?\\-{plus}'\"()\\[\\] \t\n]+", "", unidecode(text).replace("\\", "\n"))


@pytest.mark.parametrize("index", range(len(HF_CASES)))
def test_hf_tokenizer_cases(index):
    case = HF_CASES[index]
    given = case["input"]
    for row, version in enumerate(case["version"]):
        labeller = _hf_labeller(version, case["n_genres"])
        hf_ids = case["input_ids"][row][0]
        assert hf_ids[:3] == [0, 0, 0]  # HF placeholders for total_length, offset, sample_length
        assert labeller.artist_id(given["artist"]) == hf_ids[3]

        hf_genres = [g for g in hf_ids[4:] if g != -1][: len(case["normalized_genres"][row])]
        words = labeller.genre_ids(given["genres"])
        if version == "v2" and " " in given["genres"]:
            # HF splits v2 genres on '_' only ("Country Rock" -> one genre country_rock.v2, id 7);
            # the original normalises first (' ' -> '_') and takes a bag of words: country, rock.
            assert hf_genres == [7] and words == [4, 5]
        else:
            assert words == hf_genres
        if len(words) > case["n_genres"]:
            # HF overflows the genre slots silently; the original asserts. We raise.
            assert len(hf_genres) == len(words) and hf_ids[4 + case["n_genres"]] != -1
            with pytest.raises(LabelError, match="at most 2"):
                labeller.get_label(given["artist"], given["genres"], given["lyrics"], 1000, 0)

        if row > 0:
            assert len(hf_ids) == 4 + max(case["n_genres"], len(hf_genres))  # no lyrics in rows 1, 2
            continue
        cleaned = labeller.clean(given["lyrics"])
        assert cleaned == _original_cleaning(given["lyrics"], version)
        hf_lyric_ids = hf_ids[4 + max(case["n_genres"], len(hf_genres)) :]
        if cleaned == case["normalized_lyrics"]:
            assert labeller.tokenise(cleaned) == hf_lyric_ids
        else:
            # HF strips accents with NFD and drops what is left instead of unidecode ('—' vanishes
            # instead of becoming '--'), and its '+' handling is reversed: v2 drops '+' (the original
            # keeps it, it is in the v2 alphabet), v3 keeps '+' as id 0 (the original drops it).
            assert "\u2014" in given["lyrics"] and "--" in cleaned and "--" not in case["normalized_lyrics"]
            if version == "v2":
                assert "+" in cleaned and "+" not in case["normalized_lyrics"]
            else:
                assert "+" not in cleaned and "+" in case["normalized_lyrics"] and 0 in hf_lyric_ids


def test_hf_saved_directories_read_their_version():
    for name, version in (("saved_v3_v2_v2", "v3"), ("saved_v2_v2_v2", "v2")):
        labeller = Labeller.from_vocab(HF_TOKENIZER / name)
        assert labeller.version == version
        assert labeller.alphabet == ALPHABETS[version]
        assert labeller.artist_id("Alan Jackson") == (2 if version == "v3" else 6)
    with pytest.raises(LabelError, match="version="):
        Labeller.from_vocab(HF_TOKENIZER / "vocab")  # both versions, no tokenizer_config.json
    assert Labeller.from_vocab(HF_TOKENIZER / "vocab" / "artists.json", version="v3").genre_ids("Country") == [1]


def test_hf_single_vocab_json(tmp_path):
    names = ("artists", "genres", "lyrics")
    tables = {k: json.loads((HF_TOKENIZER / "vocab" / f"{k}.json").read_text()) for k in names}
    (tmp_path / "vocab.json").write_text(json.dumps(tables))
    labeller = Labeller.from_vocab(tmp_path / "vocab.json", version="v2")
    assert labeller.genre_ids("Pop_Rock") == [6, 5] and labeller.alphabet == V2_ALPHABET


# ---------------------------------------------------------------------------------------------
# vocab.json round trip, configs, errors


def test_vocab_dict_round_trip(ids_dir, tmp_path):
    labeller = Labeller.from_ids_dir(ids_dir, "v3", n_tokens=384, max_bow_genre_size=1, sample_length=786432)
    data = json.loads(json.dumps(labeller.vocab_dict()))
    assert data["version"] == "v3" and data["lyrics"] == list(V3_ALPHABET)
    assert Labeller.from_vocab_dict(data) == labeller
    (tmp_path / "vocab.json").write_text(json.dumps(data))
    for source in (tmp_path, tmp_path / "vocab.json"):
        again = Labeller.from_vocab(source)
        assert again == labeller
    np.testing.assert_array_equal(
        again.get_y("Alan Jackson", "Country Rock", "old town road", 10584000, 0), ORACLE["labeller_v3_y"]
    )
    assert Labeller.from_vocab_dict(data, n_tokens=0).y_length == 5
    with pytest.raises(LabelError, match="holds v3"):
        Labeller.from_vocab(tmp_path, version="v2")
    with pytest.raises(LabelError):
        Labeller.from_vocab_dict({"format": "jukebox-flax-vocab", "version": "v9", "artists": {}})


def test_for_config(ids_dir):
    top = preset("prior_1b_lyrics")
    labeller = Labeller.from_ids_dir(ids_dir, "v3").for_config(top)
    assert (labeller.n_tokens, labeller.max_bow_genre_size, labeller.sample_length) == (384, 1, 786432)
    assert labeller.y_length == top.y_length == 389
    up = Labeller.from_ids_dir(ids_dir, "v2").for_config(preset("upsampler_level_0"))
    assert up.y_length == 9
    with pytest.raises(LabelError, match="v3 labels"):
        up.for_config(top)


def test_errors_and_checks(ids_dir):
    v2 = Labeller.from_ids_dir(ids_dir, "v2", max_bow_genre_size=2)
    with pytest.raises(LabelError, match="alan_jackson"):
        v2.artist_id("Alan Jakson")
    with pytest.raises(LabelError, match="'blues'"):
        v2.genre_ids("Bluse Rock")
    with pytest.raises(LabelError, match="at most 2"):
        v2.get_y("Alan Jackson", "Pop Rock Country", "", 1000, 0)
    with pytest.raises(LabelError, match="offset"):
        v2.get_y("Alan Jackson", "Pop", "", 1000, 1000)
    with pytest.raises(LabelError, match="empty genre"):
        v2.genre_ids("")
    assert v2.genre_ids("unknown") == [0] and v2.genre_ids("blues,rock") == v2.genre_ids("Blues_Rock") == [2, 8]
    v3 = Labeller.from_ids_dir(ids_dir, "v3")
    assert v3.genre_ids("Country Rock") == [546]  # v3: the whole string is one genre
    with pytest.raises(LabelError, match="country rock"):
        v3.genre_ids("country_rock")
    with pytest.raises(LabelError, match="v2' or 'v3"):
        Labeller.from_ids_dir(ids_dir, "v4")
    with pytest.raises(LabelError, match="cannot read"):
        Labeller.from_ids_dir(ids_dir / "missing", "v2")

    assert v2.check_lyrics("Café 100% {ok} — \U0001f600 a+b") == ["%", "{", "}", "\U0001f600"]
    assert v3.check_lyrics("a+b") == ["+"]  # v3 has no '+'
    assert v2.check_lyrics("I met a traveller\\from an antique land") == []


def test_label_keeps_full_tokens(ids_dir):
    labeller = Labeller.from_ids_dir(ids_dir, "v2", n_tokens=8, sample_length=100)
    label = labeller.get_label("Alan Jackson", "Country", "Hello, world", 1000, 0)
    assert isinstance(label, Label) and label.lyrics == "Hello, world"
    assert labeller.textise(label.full_tokens) == "Hello, world"
    np.testing.assert_array_equal(label.y, labeller.get_y("Alan Jackson", "Country", "Hello, world", 1000, 0))


@pytest.mark.slow
def test_one_label_error_for_the_labeller_and_the_prior():
    """``except jf.LabelError`` catches a bad artist id given to Prior.logits as well as a Labeller's."""
    assert jf.LabelError is LabelError is conditioners.LabelError
    config = prior_config_from_hps(hps("prior_top5b"), vqvae_config_from_hps(hps("vqvae_tiny")))
    prior = Prior(config, init_prior_params(config, jax.random.key(0)))
    y = np.zeros((1, config.y_length), np.int32)
    y[0, :3] = (10 * config.sample_length, 0, config.sample_length)
    y[0, 3] = config.artist_bins  # one past the last artist id
    y[0, 4:] = -1
    tokens = np.zeros((1, 4), np.int32)
    with pytest.raises(jf.LabelError, match="artist id"):
        prior.logits(tokens, y=y)
    try:
        prior.logits(tokens, y=y)
    except jf.LabelError as e:  # the spelling users write
        assert isinstance(e, jf.JukeboxError) and isinstance(e, ValueError)
