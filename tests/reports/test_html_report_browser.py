"""The HTML report renders in a real browser: headless Chromium, driven by selenium, shows the
leaderboard with a row per run and loads every figure. CI installs Chromium, so there a missing
browser fails the test; elsewhere it is skipped with the reason."""

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from report_runs import make_runs

from cnnlab.cli import main

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)


def _webdriver_or_skip():
    """The selenium webdriver module, once Chromium and its driver are known to be there."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package")
        webdriver = None
    if missing:
        reason = f"no browser to render the report in: {', '.join(missing)} missing"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs Chromium and selenium)")
        pytest.skip(reason)
    return webdriver


@pytest.fixture
def browser():
    webdriver = _webdriver_or_skip()
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver, so selenium-manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_headless_chromium(browser, shared_data, tmp_path):
    from selenium.webdriver.common.by import By

    runs = make_runs(shared_data, tmp_path / "runs")
    report = tmp_path / "report.html"
    assert main(["report", *map(str, runs.values()), "--html", str(report)]) == 0
    browser.get(report.as_uri())

    table = browser.find_element(By.ID, "leaderboard")
    assert table.is_displayed()
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert sorted((row[1], row[2]) for row in cells) == [
        ("cut", "lenet_bn"),
        ("lenet", "lenet"),
        ("lenet_bn", "lenet_bn"),
    ]
    assert cells[-1][1] == "cut" and cells[-1][-1] == "unfinished: 1 of 2 epochs"

    images = browser.execute_script(
        "return Array.from(document.images).map(image => ({kind: image.closest('figure')"
        ".className, complete: image.complete, width: image.naturalWidth,"
        " shown: image.getBoundingClientRect().width}));"
    )
    assert [image["kind"] for image in images] == ["curves", "confusion", "confusion"]
    assert all(image["complete"] and image["width"] > 0 and image["shown"] > 0 for image in images)

    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    picture = Image.open(io.BytesIO(screenshot.read_bytes()))
    viewport = browser.execute_script(
        "return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio];"
    )
    assert picture.format == "PNG" and list(picture.size) == viewport
    darkest, lightest = picture.convert("L").getextrema()
    assert lightest - darkest > 100  # text and figures on the page, not one flat colour
