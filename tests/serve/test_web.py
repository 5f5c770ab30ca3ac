"""The web page in a real headless Chromium: drop a page, see both readings appear, open the runs view."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.serve.test_service import _png


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromedriver are missing: `make test` installs the Debian packages"
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    yield browser
    browser.quit()


def _screenshot(browser, name: str) -> None:
    # OCRLOOP_SCREENSHOTS=docs keeps the views for the README; tests never write into the repository otherwise.
    folder = os.environ.get("OCRLOOP_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / name))


def test_drop_a_page_and_see_the_champion_and_the_challenger_read_it(server, browser, tmp_path):
    page = tmp_path / "receipt.png"
    page.write_bytes(_png(480, 320))
    browser.get(server + "/")
    assert "challenger" in browser.find_element(By.ID, "challenger-title").text  # the looped workspace has one
    browser.find_element(By.ID, "file").send_keys(str(page))
    browser.find_element(By.ID, "read").click()
    WebDriverWait(browser, 180).until(lambda b: b.find_element(By.ID, "status").text == "read receipt.png")
    for slot in ("champion", "challenger"):
        model_line = browser.find_element(By.ID, f"{slot}-model").text
        assert "1 page(s)" in model_line, (slot, model_line, browser.find_element(By.ID, f"{slot}-text").text)
        assert "error" not in browser.find_element(By.ID, f"{slot}-text").get_attribute("class")
    champion, challenger = (browser.find_element(By.ID, f"{s}-model").text.split(" · ")[0] for s in ("champion", "challenger"))
    assert champion != challenger
    _screenshot(browser, "web-read.png")
    # The marks: redacted personal data, and words only one of the two models read.
    marked = browser.execute_script("return marked('SSN [SSN] total 5', 'SSN total 6')")
    assert '<mark class="pii">[SSN]</mark>' in marked and '<mark class="diff">5</mark>' in marked and "<mark class=\"diff\">SSN" not in marked


def test_the_runs_view_shows_decisions_scores_and_curves(server, browser):
    browser.get(server + "/runs")
    runs = WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "runs"))
    assert "Loop runs" in runs.text and "Before / after" in runs.text
    assert len(runs.find_elements(By.TAG_NAME, "img")) >= 4
    assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    _screenshot(browser, "web-runs.png")
