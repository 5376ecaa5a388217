"""The HTML leaderboard, opened in a real headless Chromium: its script sorts, every row is there, no request leaves
the file. Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them, and sets
HARNESS_REQUIRE_BROWSER so that a missing browser fails there instead of skipping)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from harness.leaderboard import load_results, render
from tests.conftest import run_cli

WIDTH = 1280  # a laptop's


@pytest.fixture(scope="module")
def browser():
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        if os.environ.get("HARNESS_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test needs {', '.join(missing)}")
        pytest.skip(f"no {', '.join(missing)}: install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WIDTH},1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _order(driver, group: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('table.board[data-group=\"' + arguments[0] + '\"] tbody tr'))"
        ".map(function (row) { return row.dataset.generator; });", group)


def _click(driver, group: str, key: str) -> None:
    driver.execute_script(
        "document.querySelector('table.board[data-group=\"' + arguments[0] + '\"] th[data-key=\"' + arguments[1]"
        " + '\"] button').click();", group, key)


def _expected(rows: list[dict], key: str, descending: bool, after: list[str]) -> list[str]:
    """What a stable sort of the rows in their current order `after` gives, empty values last."""
    value = {r["generator"]: r.get(key) for r in rows}
    filled = [g for g in after if isinstance(value[g], (int, float)) and not math.isnan(value[g])]
    return sorted(filled, key=lambda g: value[g], reverse=descending) + [g for g in after if g not in filled]


def test_the_page_sorts_shows_every_row_and_requests_nothing(tiny_run, browser, tmp_path):
    done = run_cli("leaderboard", str(tiny_run["out"]), "--format", "html", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    page = tmp_path / "leaderboard.html"
    assert page.read_text() == render(load_results([tiny_run["out"]]), "html")
    browser.get(page.as_uri())
    assert browser.execute_script("return document.documentElement.dataset.sortable") == "ready"  # script ran
    rows = tiny_run["results"]["rows"]
    generators = [r["generator"] for r in rows]
    groups = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.board')).map(function (t) { return t.dataset.group; });")
    assert groups[:9] == ["privacy", "peers", "peers_clip", "coverage", "fidelity", "fidelity_reid", "temporal",
                          "utility", "cost"]
    for group in groups:  # every row in every table, and every metric header explains itself
        assert _order(browser, group) == generators
        titles = browser.execute_script(
            "return Array.from(document.querySelectorAll('table.board[data-group=\"' + arguments[0] + '\"] "
            "th[data-key]')).map(function (th) { return th.title; });", group)
        assert titles and all(titles), group
    assert browser.execute_script("return document.querySelectorAll('details[id^=\"row-\"]').length") == len(rows)
    assert browser.execute_script("return document.querySelectorAll('figure img').length") >= 1

    # a ↓ column sorts best (lowest) first, a second click reverses; a ↑ column sorts highest first
    _click(browser, "privacy", "memorised_pct")
    ascending = _order(browser, "privacy")
    assert ascending == _expected(rows, "memorised_pct", False, generators)
    assert ascending != generators  # the order is not trivially the original one (copy, 100 %, comes first)
    _click(browser, "privacy", "memorised_pct")
    assert _order(browser, "privacy") == _expected(rows, "memorised_pct", True, ascending)
    _click(browser, "coverage", "recall")
    assert _order(browser, "coverage") == _expected(rows, "recall", True, generators)
    assert _order(browser, "fidelity") == generators  # other tables keep their order

    # nothing but the file itself and its inline figures was requested
    events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert page.as_uri() in urls
    assert all(u == page.as_uri() or u.startswith("data:") for u in urls), [u[:80] for u in urls]

    # readable at a laptop's width: nothing wider than the window
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(WIDTH, min(height, 6000))
    assert browser.save_screenshot(str(tmp_path / "leaderboard.png"))
