"""The admin in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver. Skipped where Chromium is not installed, except in CI (``CI``
set), where ``.ci/run`` installs it and a missing browser is a failure."""

import os
import re
import shutil

import pytest

from users.models import User

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
PASSWORD = "a-Long-passphrase-7"


@pytest.fixture
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the browser test, but {CHROMIUM} or {CHROMEDRIVER} is missing")
        pytest.skip("no Chromium: apt-get install chromium chromium-driver (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, 15)


def test_admin_warm_cache_action_changes_the_users_cache_state(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    ada = User.objects.create(username="ada", email="ada@example.com")
    checkbox = f"//input[@name='_selected_action' and @value='{ada.id}']"
    cache_cell = f"{checkbox}/ancestor::tr/td[contains(@class, 'field-cache_state')]"

    browser.get(f"{live_server.url}/admin/login/?next=/admin/users/user/")
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser).until(expected_conditions.title_contains("Select user to change"))
    assert browser.find_element(By.XPATH, cache_cell).text == "not cached"

    browser.find_element(By.XPATH, checkbox).click()
    Select(browser.find_element(By.NAME, "action")).select_by_visible_text("Warm cache")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "ul.messagelist"), "Cached 1 of 1 users."
        )
    )

    state = browser.find_element(By.XPATH, cache_cell).text
    assert re.fullmatch(r"cached, 5\d min left", state), state


def test_swagger_ui_renders_the_api(browser, live_server):
    """The API description is for logged-in callers: log in, then land on it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_user("reader", "reader@example.com", PASSWORD)
    browser.get(f"{live_server.url}/api-auth/login/?next=/api/docs/")
    browser.find_element(By.NAME, "username").send_keys("reader")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, ".swagger-ui .info .title"), "User service API"
        )
    )
    paths = {
        element.text for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/api/user/", "/api/user/{id}/"} <= paths
