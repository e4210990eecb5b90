"""Driving the console in Debian's Chromium (no browser download: /usr/bin/chromium and its chromedriver)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import REPO, need_tool

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = REPO / "docs" / "screenshots"

# Staging (4 nodes, two models) proves releases; two production nodes show the diff against production.
NODES = {"s1n01", "s1n02", "s1n03", "s1n04", "r1n01", "r2n01"}
PASSWORDS = {"alice": "alice-console-pw", "bob": "bob-console-pw", "carol": "carol-console-pw",
             "dana": "dana-console-pw", "vic": "vic-console-pw"}
ROLES = {"alice": "approver", "bob": "approver", "carol": "approver", "dana": "operator", "vic": "viewer"}
WAIT = 60  # seconds an expected change may take on a loaded machine (never an assertion on speed)


class Browsers:
    """Up to a few independent browser sessions (own cookies each), started on first use."""

    def __init__(self, base: str):
        self.base, self.drivers = base, {}

    def __call__(self, who: str):
        if who not in self.drivers:
            self.drivers[who] = new_driver()
        return self.drivers[who]

    def quit(self) -> None:
        for d in self.drivers.values():
            d.quit()


def new_driver(width: int = 1280, height: int = 800):
    need_tool(CHROMIUM, CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--ignore-certificate-errors", f"--window-size={width},{height}", "--lang=en-GB"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    return driver


def sign_in(driver, base: str, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    submit(driver, driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))


def submit(driver, element) -> None:
    """Click a form's button (or a link) and wait for the page it leads to."""
    element.click()
    wait_for(driver, lambda d: not _attached(element))


def _attached(element) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.is_enabled()
        return True
    except StaleElementReferenceException:
        return False


def wait_for(driver, predicate, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))


def text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "main").text


def screenshot(driver, name: str, width: int = 1280, height: int = 800) -> Path:
    """Save docs/screenshots/NAME.png at this viewport (the README shows them)."""
    driver.set_window_size(width, height)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    os.chmod(path, 0o644)
    return path


def csp_violations(driver) -> list[str]:
    """Console messages that say the Content-Security-Policy refused something."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
