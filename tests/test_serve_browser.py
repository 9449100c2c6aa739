"""The web page in a real browser: Debian's chromium driven through chromedriver (selenium), against
``musichash serve`` on a local port. Marked ``browser``; it runs by default, and is skipped only
where chromium or chromedriver is not installed (.ci/run installs both).

MUSICHASH_SCREENSHOT=docs/serve.png also saves the page with its results (the README's picture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest
from serve_fixture import build_library, excerpt

pytestmark = pytest.mark.browser
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra: pip install 'musichash[serve]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from musichash.library import Library
from musichash.service import ServeConfig, create_app


@contextlib.contextmanager
def served(lib):
    """``musichash serve``'s app over ``lib`` on a free local port, in a thread; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(lib, device="cpu")), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def two_song_library(root, **open_kw):
    """music/song0.wav and song1.wav (12 s, seeds 0 and 1) under ``root``, indexed into root/lib."""
    from synth import write_song

    (root / "music").mkdir()
    for i in range(2):
        write_song(root / "music" / f"song{i}.wav", seed=i, seconds=12)
    with Library.open(root / "lib", write=True, **open_kw) as library:
        library.index([root / "music"], workers=0)
    return root / "music", root / "lib"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    music, lib = build_library(tmp_path_factory.mktemp("page"))
    with served(lib) as base:
        yield base, music, lib


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_page_upload_result_play_similar_dedup(server, browser, tmp_path):
    base, music, lib = server
    with Library.open(lib) as library:
        ids = {os.path.basename(t.path): t.id for t in library.tracks()}
        [expected] = library.search([excerpt(tmp_path / "clip.flac", 1, 4.0, 6.0)], top_k=5)
        similar = library.similar(ids["song1.wav"])
    top = expected.results[0]
    assert top.path == str(music / "song1.wav")
    wait = WebDriverWait(browser, 30)

    browser.get(base + "/")
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats"), "4 tracks"))
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "clip.flac"))
    first = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li")))
    items = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert [int(li.get_attribute("data-track")) for li in items] == [h.track_id for h in expected.results]
    assert first.find_element(By.CLASS_NAME, "path").text == str(music / "song1.wav")
    minutes, seconds = divmod(top.offset_s, 60)
    assert f"at {int(minutes)}:{seconds:04.1f}" in first.find_element(By.CLASS_NAME, "meta").text
    assert browser.find_element(By.ID, "verdict").text.startswith("match" if expected.match else "no match")
    assert browser.find_element(By.ID, "clip-caption").text == "clip.flac: 6.0 s"  # the thumbnail was drawn

    # the player streams the track from the matched offset
    audio = first.find_element(By.TAG_NAME, "audio")
    browser.execute_script("arguments[0].play()", audio)
    wait.until(lambda d: d.execute_script("return !arguments[0].paused && arguments[0].currentTime > 0", audio))
    at = browser.execute_script("return arguments[0].currentTime", audio)
    assert top.offset_s - 0.05 <= at < top.offset_s + 5
    browser.execute_script("arguments[0].pause()", audio)

    if os.environ.get("MUSICHASH_SCREENSHOT"):
        browser.save_screenshot(os.environ["MUSICHASH_SCREENSHOT"])

    first.find_element(By.CSS_SELECTOR, "button.similar").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#similar li[data-track]")))
    shown = [li.find_element(By.CLASS_NAME, "path").text for li in browser.find_elements(By.CSS_SELECTOR, "#similar li[data-track]")]
    assert shown == [h.path for h in similar.results]
    assert browser.switch_to.active_element.get_attribute("id") == "similar-h"  # focus follows, for keyboards
    browser.find_element(By.ID, "sim-tag").send_keys("piano")
    browser.execute_script("document.getElementById('sim-tag').value = 'kazoo'")
    browser.find_element(By.CSS_SELECTOR, "#similar-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "unknown tag 'kazoo'"))

    browser.find_element(By.ID, "dedup-load").click()
    group = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#dedup .group")))
    assert sorted(p.text for p in group.find_elements(By.CLASS_NAME, "path")) == [str(music / "copy0.flac"), str(music / "song0.wav")]


def test_page_shows_a_corrupt_upload_as_one_line(server, browser, tmp_path):
    base, _, _ = server
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"ID3" + bytes(500))
    browser.get(base + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    error = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "error")))
    assert error.text.startswith("Error: broken.mp3: ") and "\n" not in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#results li") == []


@pytest.fixture(scope="module")
def tagged_server(tmp_path_factory):
    """A library whose tags come from the shipped fcn4_rendered tagger, served on its own port."""
    music, lib = two_song_library(tmp_path_factory.mktemp("tagged-page"), code_model="unittest_hash",
                                  tagger="fcn4_rendered")
    with served(lib) as base:
        yield base, music


def test_page_explains_a_results_first_tag(tagged_server, server, browser, tmp_path):
    base, _ = tagged_server
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats"), "2 tracks"))
    browser.find_element(By.ID, "file").send_keys(str(excerpt(tmp_path / "clip.flac", 1, 4.0, 6.0)))
    first = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li")))
    tag = first.find_element(By.CSS_SELECTOR, ".tags .tag").text.split(" ")[0]
    assert "=" in tag  # the tagger's labels (composer=..., instrument_family=...), not the tag head's
    first.find_element(By.CSS_SELECTOR, "button.explain").click()
    img = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li figure.explain img")))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    assert tag in first.find_element(By.CSS_SELECTOR, "figure.explain figcaption").text

    # a library tagged by its code model's head has no tagger map to show: the page says so in one line
    browser.get(server[0] + "/")
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats"), "4 tracks"))
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "clip.flac"))
    first = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li")))
    first.find_element(By.CSS_SELECTOR, "button.explain").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "this library's tags come from its code model's tag head"))


def test_page_explains_why_a_clip_matched(browser, tmp_path_factory, tmp_path):
    """'Why this match?' on the matched track: the match's Grad-CAM over the track's mel (crnnh64, the
    default code model: the interim test model has no relaxed codes to explain)."""
    _, lib = two_song_library(tmp_path_factory.mktemp("match-page"), code_model="crnnh64", device="cpu")
    with served(lib) as base:
        wait = WebDriverWait(browser, 60)
        browser.get(base + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "stats"), "2 tracks"))
        browser.find_element(By.ID, "file").send_keys(str(excerpt(tmp_path / "clip.flac", 1, 3.0, 6.0)))
        first = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li")))
        assert first.find_element(By.CSS_SELECTOR, ".path").text.endswith("song1.wav")
        first.find_element(By.CSS_SELECTOR, "button.explain-match").click()
        img = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li figure.explain img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
        assert "why the clip matches song1.wav" in first.find_element(By.CSS_SELECTOR, "figure.explain figcaption").text
