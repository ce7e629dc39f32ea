"""The race page (``GET /`` and ``/ui``) in a real browser: Debian's headless Chromium, driven by selenium
through Debian's chromedriver, against a real ``k2d serve`` process (tiny.en in the student's seat, Whisper
base as its teacher) behind an API key.

``K2D_UI_SCREENSHOT=docs/ui-race.png pytest -m browser`` also writes the finished race's screenshot there
(the one the README shows comes from this test); every run keeps one in its tmp folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routers.ui import PUBLIC_PATHS, STATIC, is_public
from app.settings import Settings
from tests.conftest import DATA, REPO, free_port

KEY = "race-key"
CLIP = DATA / "en_lecture.flac"  # "Today we talk about gradient descent and the learning rate."
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
         "--window-size=1280,1050",
         # a fake microphone (a beep) that needs no permission prompt: the record button is tested too
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
RACE_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def server(served_store, tmp_path_factory):
    """``k2d serve`` as a real process on a free loopback port, with an API key; logs to a file."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui-server") / "serve.log"
    env = {**os.environ, "K2D_MODELS_DIR": str(served_store.store), "K2D_PORT": str(port), "K2D_CPU_THREADS": "2",
           "K2D_API_KEY": KEY}
    env.pop("K2D_UI", None)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "k2d_cli", "serve"], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"k2d serve did not become ready:\n{log.read_text()}")
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them for dev)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given, selenium downloads nothing
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def wait_for(driver, condition, timeout: float = RACE_TIMEOUT_S, what: str = "the page"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        lanes = {lane: text(driver, f"#lane-{lane}") for lane in ("student", "teacher")}
        pytest.fail(f"timed out waiting for {what}; notice: {text(driver, '#notice')!r}; lanes: {lanes}")


def lanes_settled(driver) -> bool:
    """Both columns finished, each either done or failed (never while one is still running or waiting)."""
    from selenium.webdriver.common.by import By

    classes = [driver.find_element(By.ID, f"lane-{lane}").get_attribute("class") for lane in ("student", "teacher")]
    return all(("done" in c or "failed" in c) and "running" not in c for c in classes)


def upload(driver, path: Path) -> None:
    """What dropping or picking a file does: the file input gets it and the race starts at once."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))


def page_state(driver) -> dict:
    return {lane: {field: text(driver, f"#lane-{lane} .{field}") for field in
                   ("model", "latency", "rtf", "gain", "status", "transcript")} for lane in ("student", "teacher")}


@pytest.mark.browser
def test_the_page_loads_without_the_key_and_a_call_without_it_reads_as_a_401(server, browser):
    browser.get(server + "/")
    assert "student against teacher" in browser.title
    wait_for(browser, lambda d: "API key" in text(d, "#notice"), 30, "the models listing's 401")
    assert "HTTP 401" in text(browser, "#notice")
    upload(browser, CLIP)
    wait_for(browser, lanes_settled, what="both columns to fail with 401")
    for lane in page_state(browser).values():
        assert "needs an API key" in lane["status"] and "HTTP 401" in lane["status"], lane
        assert lane["transcript"] == "" and lane["latency"] == "–"
    assert text(browser, "#speedup") == "–"


@pytest.mark.browser
def test_race_with_the_key_shows_both_transcripts_latencies_and_the_speedup(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/ui")
    browser.find_element(By.ID, "key").send_keys(KEY, Keys.TAB)  # typed once: kept in sessionStorage
    wait_for(browser, lambda d: Select(d.find_element(By.ID, "student-model")).first_selected_option
             .get_attribute("value") == "whisper-tiny.en", 30, "the model listing with the key")
    assert Select(browser.find_element(By.ID, "teacher-model")).first_selected_option.get_attribute("value") \
        == "whisper-base"
    assert browser.find_element(By.ID, "notice").is_displayed() is False
    Select(browser.find_element(By.ID, "language")).select_by_value("en")  # the student here is English-only
    upload(browser, CLIP)
    wait_for(browser, lanes_settled, what="both transcripts")
    assert "race again for a fair figure" in text(browser, "#verdict")  # each model's first request warms it up
    browser.find_element(By.ID, "race").click()  # the same clip, both models warm: the figure that counts
    assert not lanes_settled(browser)
    wait_for(browser, lanes_settled, what="both transcripts of the second race")
    assert "race again" not in text(browser, "#verdict")
    shown = page_state(browser)
    for name, model in (("student", "whisper-tiny.en"), ("teacher", "whisper-base")):
        lane = shown[name]
        assert lane["status"] == "done" and lane["model"] == model, lane
        assert "gradient descent" in lane["transcript"].lower() and "learning rate" in lane["transcript"].lower(), lane
        assert re.fullmatch(r"\d+\.\d\d s", lane["latency"]), lane
        assert re.fullmatch(r"\d+\.\d×", lane["rtf"]), lane
    assert re.fullmatch(r"\d+\.\d×", text(browser, "#speedup"))
    assert re.fullmatch(r"\d+\.\d×", shown["student"]["gain"]) and shown["teacher"]["gain"] == "baseline"
    student_s, teacher_s = (float(shown[lane]["latency"].split()[0]) for lane in ("student", "teacher"))
    assert text(browser, "#speedup") == f"{teacher_s / student_s:.1f}×"  # the two latencies shown, divided
    # the live panel, from /metrics: both races' requests per model with p50 and mean latency, the speed-up gauge
    def panel(d) -> dict:
        return {row.get_attribute("data-model"): row.text for row in
                d.find_elements(By.CSS_SELECTOR, "#metrics-rows tr[data-model]")}

    both = ("whisper-tiny.en", "whisper-base")
    wait_for(browser, lambda d: all(re.match(rf"{re.escape(m)} 2 0 ≈\d+\.\d\d s \d+\.\d\d s \d+\.\d×$",
                                             panel(d).get(m, "")) for m in both), 30, "both races in the panel")
    assert re.search(r"k2d_student_speedup whisper-tiny.en over whisper-base: \d+\.\d×", text(browser, "#gauge"))
    browser.find_element(By.TAG_NAME, "h1").click()  # no focus ring in the picture
    browser.save_screenshot(str(tmp_path / "ui-race.png"))
    if os.environ.get("K2D_UI_SCREENSHOT"):
        target = Path(os.environ["K2D_UI_SCREENSHOT"])
        shutil.copyfile(tmp_path / "ui-race.png", target if target.is_absolute() else REPO / target)
    browser.find_element(By.ID, "together").click()  # "both at once" (a GPU box's choice): the same figures
    browser.find_element(By.ID, "race").click()
    assert "at once" in text(browser, "#verdict")
    wait_for(browser, lanes_settled, what="both transcripts at once")
    assert all(lane["status"] == "done" and "gradient descent" in lane["transcript"].lower()
               for lane in page_state(browser).values())
    assert re.fullmatch(r"\d+\.\d×", text(browser, "#speedup"))
    browser.find_element(By.ID, "together").click()


@pytest.mark.browser
def test_an_unsupported_file_reads_as_a_415(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all\n" * 50)
    upload(browser, notes)  # the key is still in this browser session
    wait_for(browser, lambda d: all("HTTP 415" in s["status"] for s in page_state(d).values()), what="the 415")
    for lane in page_state(browser).values():
        assert "Not an audio file the server can decode" in lane["status"] and lane["transcript"] == "", lane
    assert text(browser, "#speedup") == "–"


@pytest.mark.browser
def test_a_microphone_recording_is_raced_too(server, browser):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "record").click()  # Chromium's fake microphone: a beep, no permission prompt
    wait_for(browser, lambda d: "Stop" in d.find_element(By.ID, "record").text, 15, "the recording to start")
    time.sleep(2.5)
    browser.find_element(By.ID, "record").click()
    wait_for(browser, lambda d: "recording." in text(d, "#chosen"), 15, "the recording")
    wait_for(browser, lanes_settled, what="the recording's race")
    for lane in page_state(browser).values():
        assert lane["status"] == "done" and re.fullmatch(r"\d+\.\d\d s", lane["latency"]), lane


def test_page_and_assets_need_no_key_and_k2d_ui_false_is_404(served_store, monkeypatch):
    """No browser needed: what the routes answer (the app unstarted: no model is loaded for this)."""
    on = TestClient(create_app(Settings(models_dir=served_store.store, api_key=KEY)))
    for path in sorted(PUBLIC_PATHS):
        response = on.get(path)
        assert response.status_code == 200 and is_public(path), path
    assert on.get("/").headers["content-type"].startswith("text/html") and 'src="/ui/static/ui.js"' in on.get("/").text
    assert on.get("/ui/static/secrets.txt").status_code == 404 and not is_public("/ui/static/secrets.txt")
    assert on.get("/v1/models").status_code == 401  # the API behind the page still needs the key
    assert not is_public("/metrics") and not is_public("/transcribe")
    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    for asset in STATIC.iterdir():  # an installed package (a wheel, the image) has the page too
        assert any(fnmatch(str(asset.relative_to(REPO / "app")), pattern) for pattern in shipped), asset
    monkeypatch.setenv("K2D_UI", "false")
    off = TestClient(create_app(Settings(models_dir=served_store.store)))
    for path in ("/", "/ui", "/ui/static/ui.js"):
        response = off.get(path)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found", path
