"""The run report page (``jukebox_flax.report``): its content, and the page in a real headless Chromium.

The browser tests need Chromium with its driver (Debian: ``apt-get install chromium chromium-driver``)
and ``selenium`` (the ``test`` extra); they are skipped, saying which is missing, where those are absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from jukebox_flax.alignment import save_alignment
from jukebox_flax.audio import save_wav
from jukebox_flax.report import alignment_png, word_table, write_report

SR, HOP, TOKENS = 44100, 128, 256  # the synthetic run: 256 top-level tokens of 128 samples (0.74 s)
LYRICS = ["Hello <world>, a tiny song for the demo", "Daffodils dance"]


def _alignment(text: str, rng) -> np.ndarray:
    """Attention that walks through the lyric columns, with noise: column 1 + t * N / T wins."""
    n = len(text)
    a = rng.random((TOKENS, n), dtype=np.float32) * 0.1
    a[np.arange(TOKENS), np.minimum(1 + np.arange(TOKENS) * n // TOKENS, n - 1)] = 0.9
    return a


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """A finished 2-row run with lyrics: codes, WAVs at levels 2 and 0, alignment.npz, run.json."""
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    record = dict(model="/models/demo_model", artist="Ben High", genre="chiptune", lyrics="", seconds=0.74, batch=2)
    record["metas"] = [
        {"artist": "Ben <High>", "genre": "chiptune", "lyrics": LYRICS[0]},
        {"artist": "Ada Low", "genre": "ambient", "lyrics": LYRICS[1]},
    ]
    record["parent"] = {"path": "runs/first", "rows": [1]}
    (run / "run.json").write_text(json.dumps(record))
    (run / "codes").mkdir()
    for level, hop in ((0, 8), (2, HOP)):
        np.save(run / "codes" / f"level_{level}.npy", rng.integers(0, 32, (2, TOKENS * HOP // hop), dtype=np.int32))
    np.savez(run / "codes.npz", hop_lengths=np.asarray([8, 32, HOP], np.int32))
    t = np.arange(TOKENS * HOP) / SR
    for level in (0, 2):
        for item in range(2):
            save_wav(run / f"level_{level}" / f"item_{item}.wav", 0.5 * np.sin(2 * np.pi * 220 * (item + 1) * t), SR)
    save_alignment(run, [_alignment(text, rng) for text in LYRICS])
    write_report(run)
    return run


def _page(run: Path) -> str:
    return (run / "index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Without a browser


def test_page_content(synthetic_run):
    page = _page(synthetic_run)
    # every finished level of every row, linked relatively; top level marked
    for item in range(2):
        for level in (0, 2):
            assert f'src="level_{level}/item_{item}.wav"' in page
    assert page.count("<audio") == 4 and page.count("data-top") == 2
    assert 'src="level_1/' not in page  # no WAV at level 1: no player
    # labels from metas, escaped; lyrics split into words
    assert "Ben &lt;High&gt;" in page and "Ben <High>" not in page and "Ada Low" in page
    assert '<span class="word" data-w="1">&lt;world&gt;,</span>' in page
    assert "from runs/first rows 1" in page
    assert page.count('class="wave"') == 4 and page.count("data:image/png;base64,") == 2
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page).group(1))
    assert [r["tokens"] for r in data["rows"]] == [TOKENS, TOKENS]
    assert data["rows"][0]["tokenRate"] == pytest.approx(SR / HOP)


def test_page_without_alignment_or_finished_levels(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(dict(artist="A", genre="g", lyrics="la la", batch=2)))
    (tmp_path / "codes").mkdir()
    np.save(tmp_path / "codes" / "level_2.npy", np.zeros((2, 8), np.int32))
    save_wav(tmp_path / "level_2" / "item_0.wav", np.zeros(1024), SR)
    page = _page(Path(write_report(tmp_path)).parent)
    assert page.count("<audio") == 1 and "no level finished yet" in page  # row 1 has no WAV yet
    assert page.count("artist <b>A</b>") == 2 and "data:image/png" not in page
    assert '"rows":[{},{}]' in page


def test_word_table_follows_the_input_shift():
    text = "ab cd  ef"  # words 0: ab, 1: cd, 2: ef; whitespace goes to the word before it
    a = np.zeros((6, len(text)), np.float32)
    for t, column in enumerate([0, 1, 3, 4, 6, 9 - 1]):
        a[t, column] = 1.0
    # column c stands for character c - 1; column 0 (start position) has none
    assert word_table(a, text) == [-1, 0, 0, 1, 1, 2]
    assert word_table(np.zeros((3, len(text)), np.float32), text) == [-1, -1, -1]  # no attention
    assert word_table(np.zeros((2, 0), np.float32), "") == [-1, -1]


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 0)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # filter type 0
    return rows[:, 1:]


def test_alignment_png():
    a = np.zeros((3000, 40), np.float32)
    a[2999, 0] = 0.5  # the last token, the first lyric position
    gray = _decode_png(alignment_png(a))
    assert gray.shape == (40, 1024)  # time pooled to 1024 columns, lyrics kept
    assert gray[-1, -1] == 0 and (gray == 255).sum() == gray.size - 1  # bottom right, darkest (max-scaled)


def test_write_report_errors(tmp_path):
    from jukebox_flax.errors import SamplingError

    with pytest.raises(SamplingError, match="not a run directory"):
        write_report(tmp_path)


# ---------------------------------------------------------------------------------------------
# In a headless Chromium


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chrome = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chrome is None or driver_path is None:
        pytest.skip("no headless browser: install Chromium and its driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1300",
    ):
        options.add_argument(arg)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as e:  # a browser that cannot start here (no display libraries, ...)
        pytest.skip(f"Chromium does not start: {type(e).__name__}: {str(e).splitlines()[0]}")
    yield driver
    driver.quit()


def _open(browser, path: Path) -> list[str]:
    """Load a page; returns its failed requests (network failures, HTTP errors, console errors)."""
    browser.get_log("performance")  # drop what earlier pages logged
    browser.get_log("browser")
    browser.get(path.resolve().as_uri())
    _wait(browser, "return document.readyState === 'complete'")
    _wait(browser, "return Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)")
    failed = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.loadingFailed" and not params.get("canceled"):
            failed.append(f"{params.get('errorText')} ({params.get('type')})")
        if message["method"] == "Network.responseReceived" and params["response"].get("status", 200) >= 400:
            failed.append(f"{params['response']['status']} {params['response']['url']}")
    failed += [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return failed


def _wait(browser, script: str, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(0.05)


def test_page_in_browser(browser, synthetic_run, tmp_path):
    assert _open(browser, synthetic_run / "index.html") == []
    durations = browser.execute_script("return Array.from(document.querySelectorAll('audio')).map(a => a.duration)")
    assert len(durations) == 4
    assert all(d == pytest.approx(TOKENS * HOP / SR, abs=1e-3) for d in durations), durations

    with np.load(synthetic_run / "alignment.npz") as f:
        alignments = [f["item_0"], f["item_1"]]
    for item, text in enumerate(LYRICS):
        words = text.split()
        for token in (3, 40, 128, 200, 255):
            seconds = (token + 0.5) * HOP / SR
            column = int(np.argmax(alignments[item][token]))
            char = column - 1  # the input shift: column c attends to character c - 1
            want = len(text[: char + 1].split()) - 1 if char >= 0 else -1
            if want >= 0 and text[char].isspace():
                want = len(text[:char].split()) - 1
            browser.execute_script(f"document.querySelector('#item-{item} audio[data-top]').currentTime = {seconds}")
            got = _wait(
                browser,
                f"const s = document.querySelector('#item-{item}');"
                f" return s.dataset.sung === '{want}' && s.dataset.sung",
            )
            assert got == str(want), (item, token, got, want)
            sung = browser.execute_script(
                f"return Array.from(document.querySelectorAll('#item-{item} .word.sung')).map(w => w.textContent)"
            )
            assert sung == ([words[want]] if want >= 0 else []), (item, token)

    # the failed-request check does see a failure
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_run, broken)
    os.remove(broken / "level_0" / "item_1.wav")
    assert _open(browser, broken / "index.html") != []


@pytest.mark.slow  # samples the bundled demo model through all three levels
def test_demo_run_page_in_browser(browser, tmp_path):
    run = tmp_path / "demo"
    cmd = [sys.executable, "-m", "jukebox_flax", "sample", "--seconds", "1", "--batch", "2", "--out", str(run)]
    subprocess.run(cmd + ["--artist", "Ben High", "--genre", "chiptune"], check=True, capture_output=True)
    write_report(run)
    assert _open(browser, run / "index.html") == []
    durations = browser.execute_script("return Array.from(document.querySelectorAll('audio')).map(a => a.duration)")
    assert len(durations) == 6 and all(np.isfinite(d) and d > 0.5 for d in durations), durations
    if os.environ.get("JUKEBOX_REPORT_SCREENSHOT"):  # how docs/report.png is made
        browser.save_screenshot(os.environ["JUKEBOX_REPORT_SCREENSHOT"])
