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
    # The console, where the browser reports what the Content-Security-Policy refused.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
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


def _policy_violations(browser) -> list[str]:
    """What the browser refused under the page's Content-Security-Policy since the
    last call (the console log is read once)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def _log_in(browser, live_server, form: str, username: str, then: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}{form}?next={then}")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def test_the_admin_works_under_its_content_security_policy(browser, live_server):
    """The login page and a change list, with their scripts: selecting every row
    with the list's checkbox is the admin's JavaScript at work."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    User.objects.create(username="ada", email="ada@example.com")

    assert _script_sources(live_server, "/admin/login/") == ["'self'"]
    _log_in(browser, live_server, "/admin/login/", "root", "/admin/users/user/")
    _wait(browser).until(expected_conditions.title_contains("Select user to change"))
    browser.find_element(By.ID, "action-toggle").click()
    rows = browser.find_elements(By.NAME, "_selected_action")
    assert len(rows) == 2 and all(row.is_selected() for row in rows)
    browser.get(f"{live_server.url}/admin/users/user/{rows[0].get_attribute('value')}/change/")
    _wait(browser).until(expected_conditions.title_contains("Change user"))

    assert _policy_violations(browser) == []


def test_the_browsable_api_works_under_its_content_security_policy(browser, live_server):
    """The page and its scripts (the format menu opens: jQuery and Bootstrap), and
    logging out, which DRF's own page does from an inline handler."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_user("reader", "reader@example.com", PASSWORD)
    assert _script_sources(live_server, "/api/user/?format=api") == ["'self'"]
    _log_in(browser, live_server, "/api-auth/login/", "reader", "/api/user/")
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), "User")
    )
    browser.find_element(By.CSS_SELECTOR, ".format-selection .dropdown-toggle").click()
    _wait(browser).until(
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".format-selection .dropdown-menu")
        )
    )
    browser.find_element(By.CSS_SELECTOR, ".navbar .dropdown-toggle").click()
    _wait(browser).until(
        expected_conditions.element_to_be_clickable((By.XPATH, "//button[text()='Log out']"))
    ).click()
    _wait(browser).until(expected_conditions.presence_of_element_located((By.LINK_TEXT, "Log in")))

    assert _policy_violations(browser) == []


def test_swagger_ui_works_under_its_content_security_policy(browser, live_server):
    """Swagger UI renders and sends a request ("Try it out") with the policy on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    reader = User.objects.create_user("reader", "reader@example.com", PASSWORD)
    assert _script_sources(live_server, "/api/docs/") == ["'self'"]
    _log_in(browser, live_server, "/api-auth/login/", "reader", "/api/docs/")
    detail = "//div[contains(@class, 'opblock-get')][.//*[@data-path='/api/user/{id}/']]"
    _wait(browser).until(expected_conditions.element_to_be_clickable((By.XPATH, detail)))
    browser.find_element(By.XPATH, f"{detail}//button[contains(@class, 'opblock-summary')]").click()
    try_it = f"{detail}//button[contains(@class, 'try-out__btn')]"
    _wait(browser).until(expected_conditions.element_to_be_clickable((By.XPATH, try_it))).click()
    browser.find_element(By.XPATH, f"{detail}//input[@placeholder='id']").send_keys(str(reader.id))
    browser.find_element(By.XPATH, f"{detail}//button[contains(@class, 'execute')]").click()
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.XPATH, f"{detail}//tr[@class='response']/td[@class='response-col_status']"),
            "200",
        )
    )

    assert _policy_violations(browser) == []


def _script_sources(live_server, path: str) -> list[str]:
    """The script sources of the Content-Security-Policy that ``path`` answers an
    anonymous request with."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{live_server.url}{path}") as response:
            policy = response.headers["Content-Security-Policy"]
    except urllib.error.HTTPError as refused:
        policy = refused.headers["Content-Security-Policy"]
    directives = dict(directive.strip().split(" ", 1) for directive in policy.split(";"))
    return directives["script-src"].split()
