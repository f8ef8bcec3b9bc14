"""The admin in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver. Skipped where Chromium is not installed, except in CI (``CI``
set), where ``.ci/run`` installs it and a missing browser is a failure."""

import datetime
import json
import os
import re
import shutil

import pytest
from django.utils import timezone

from users import reads
from users.binlog import server as binlog_server
from users.cache import keys
from users.maintenance.warm import cache_warm
from users.models import CacheInvalidation, User

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

    return WebDriverWait(browser, 60)


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


def _cache_row(browser, kind: str) -> dict[str, str]:
    """The change page's row of one entry in its cache section, by column class."""
    from selenium.webdriver.common.by import By

    row = browser.find_element(By.CSS_SELECTOR, f"#cache-entries tr[data-kind='{kind}']")
    return {cell.get_attribute("class"): cell.text for cell in row.find_elements(By.TAG_NAME, "td")}


def test_change_page_shows_the_cache_state_and_its_buttons_work(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    ada = User.objects.create(username="ada", email="ada@example.com", first_name="Ada")
    reads.user_get(user_id=ada.id)
    # Changed around the service, with no follower to tell the cache.
    User.objects.filter(pk=ada.pk).update(first_name="Augusta")

    _log_in(browser, live_server, "/admin/login/", "root", f"/admin/users/user/{ada.id}/change/")
    _wait(browser).until(expected_conditions.title_contains("Change user"))
    user_entry = _cache_row(browser, "user")
    assert user_entry["state"] == "cached"
    assert re.fullmatch(r"5\d min left", user_entry["ttl"]), user_entry
    assert re.fullmatch(r"\S+ \S+ UTC \(in 5\d min\)", user_entry["expiry"]), user_entry
    assert user_entry["mysql"] == "differs in first_name"
    assert user_entry["near"] in ("holds it", "does not hold it")
    first_name = browser.find_element(
        By.CSS_SELECTOR, "details.cache-fields[data-kind='user'] tr[data-column='first_name']"
    )
    assert first_name.text == "first_name Ada Augusta"
    note = browser.find_element(By.ID, "near-cache-note").text
    assert "this page shows the one of process" in note

    browser.find_element(By.ID, "cache-warm").click()
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "ul.messagelist"), "Cached 1 of 1 user (ada)."
        )
    )
    assert _cache_row(browser, "user")["mysql"] == "same as MySQL"

    browser.find_element(By.ID, "cache-evict").click()
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "ul.messagelist"), "Evicted 1 user (ada): 1 keys removed."
        )
    )
    assert _cache_row(browser, "user")["state"] == "not cached"
    assert _policy_violations(browser) == []


def _show_at(browser, width: int, height: int) -> None:
    """A viewport of exactly this many CSS pixels, whatever the window's frame."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def _in_sight(browser, element) -> bool:
    """Whether the element is shown whole as the page stands, without scrolling: in
    the viewport, and on top at its corners and centre (not clipped by a container
    scrolled sideways, nor under another element)."""
    return browser.execute_script(
        """
        const element = arguments[0], box = element.getBoundingClientRect();
        const view = document.documentElement;
        if (!box.width || box.left < 0 || box.top < 0 || box.right > view.clientWidth
            || box.bottom > view.clientHeight) return false;
        const points = [[box.left + 1, box.top + 1], [box.right - 1, box.bottom - 1],
                        [(box.left + box.right) / 2, (box.top + box.bottom) / 2]];
        return points.every(([x, y]) => element.contains(document.elementFromPoint(x, y)));
        """,
        element,
    )


# Nineteen digits, as long as a BIGINT's ids get, with room left for other tests' rows.
LONGEST_IDS = 9 * 10**18


def test_the_user_lists_cache_column_is_in_sight_at_1400_px(browser, live_server):
    """A page of cached users with names and addresses of a common length, both
    sidebars open, as an operator first sees the list."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    # Ids as long as a BIGINT has (a table's AUTO_INCREMENT only grows: the suite's
    # tests of the largest ids leave it there): the id column at its widest.
    User.objects.bulk_create(
        User(
            id=LONGEST_IDS + n,
            username=f"customer.{n:06d}",
            email=f"firstname.lastname.{n:06d}@mail.example.com",
            first_name="Alexandrina",
            last_name="Featherstonehaugh",
        )
        for n in range(99)
    )
    # And one with the longest name and address the model takes, all one word.
    User.objects.create(
        id=LONGEST_IDS + 99, username="x" * 150, email=f"{'y' * 64}@{'z' * 63}.example.com"
    )
    cache_warm(user_ids=list(User.objects.values_list("id", flat=True)))
    _show_at(browser, 1400, 900)

    _log_in(browser, live_server, "/admin/login/", "root", "/admin/users/user/")
    _wait(browser).until(expected_conditions.title_contains("Select user to change"))
    # The title is there before the page's styles, scripts and fonts are: measure the
    # layout they settle, not one half-built (a loaded machine shows the difference).
    _wait(browser).until(
        lambda browser: browser.execute_script(
            "return document.readyState === 'complete' && document.fonts.status === 'loaded'"
        )
    )

    header = browser.find_element(By.CSS_SELECTOR, "#result_list th.column-cache_state")
    cells = browser.find_elements(By.CSS_SELECTOR, "#result_list td.field-cache_state")
    assert len(cells) == 100
    # The cache column's text first: a longer one (an error) would widen the table.
    assert re.fullmatch(r"cached, 5\d min left", cells[0].text), cells[0].text
    layout = json.dumps(_column_widths(browser))
    assert _in_sight(browser, header), layout
    # Every column fits beside both sidebars, whatever the rows hold.
    assert _in_sight(browser, browser.find_element(By.CSS_SELECTOR, "th.column-staff")), layout
    assert _in_sight(browser, cells[0]), layout
    # Ids, names and addresses may be cut short; the cache's state and the column
    # headers never are.
    clipped = browser.execute_script(
        """
        return Array.from(document.querySelectorAll(
            '#result_list td.field-cache_state, #result_list thead th'
        )).filter(cell => cell.scrollWidth > cell.clientWidth).map(cell => cell.textContent.trim());
        """
    )
    assert clipped == [], layout


def _column_widths(browser) -> dict:
    """The change list's columns and the room they have, in CSS pixels: what a failure
    of the test above needs to tell a layout from a page not yet settled."""
    return browser.execute_script(
        """
        const table = document.querySelector('#result_list').getBoundingClientRect();
        const columns = {};
        for (const th of document.querySelectorAll('#result_list thead th')) {
            const box = th.getBoundingClientRect();
            columns[th.className] = [Math.round(box.left), Math.round(box.right)];
        }
        return {viewport: document.documentElement.clientWidth, table_left: table.left,
                table_right: table.right, columns, readyState: document.readyState};
        """
    )


def test_cache_overview_shows_the_outbox_backlog_and_the_followers_lag(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    CacheInvalidation.objects.all().delete()
    for _ in range(2):
        CacheInvalidation.objects.create(keys=[keys.user_key(0)])
    CacheInvalidation.objects.update(created_at=timezone.now() - datetime.timedelta(minutes=3))
    binlog_server.store_position(
        "server-uuid", binlog_server.Position("binlog.000042", 1234), seconds_behind=4.2
    )

    _log_in(browser, live_server, "/admin/login/", "root", "/admin/users/user/cache/")
    _wait(browser).until(expected_conditions.title_contains("User cache"))

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    assert (text("outbox-backlog"), text("outbox-oldest")) == ("2 rows", "3 min old")
    assert text("follower-state") == "running"
    assert re.fullmatch(r"4\.2 s, as saved \d s ago", text("follower-lag"))
    assert text("follower-position").startswith("binlog.000042:1234, saved ")


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
