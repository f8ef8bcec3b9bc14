"""The documentation held against the code, so that it cannot drift from it quietly.

The README stays a front door; every relative link leads to a file; the
configuration reference lists exactly the environment variables the code reads,
with the defaults the code has, and keeps the cache settings that no variable
sets apart from them; and measured figures appear only in the report
./scripts/bench writes, docs/benchmarks/latest.md, where each run replaces them.

These read files and the code's syntax trees only: no database, no Redis.
"""

import ast
import re
from pathlib import Path

import pytest

from users.conf import DEFAULTS as CACHE_SETTING_DEFAULTS
from users.conf import VARIABLES as CACHE_SETTING_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
BASE_SETTINGS = ROOT / "config" / "settings" / "base.py"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MOST_LINES = 250

# Where the code reads its environment: the service, its tools and its scripts.
PYTHON_SOURCES = sorted(
    [
        *ROOT.glob("config/**/*.py"),
        *ROOT.glob("users/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
        *ROOT.glob("scripts/*.py"),
        ROOT / "gunicorn.conf.py",
        ROOT / "manage.py",
    ]
)
SCRIPTS = sorted(path for path in (ROOT / "scripts").iterdir() if path.is_file())
SHELL_SOURCES = [*(path for path in SCRIPTS if path.suffix in ("", ".sh")), ROOT / "Dockerfile"]
# Read by the code, but not settings anyone configures.
NOT_CONFIGURATION = {
    "SERVER_SOFTWARE": "gunicorn's master sets it; config/checks.py reads it to tell"
    " that it runs under gunicorn",
    "TMPDIR": "the system's temporary folder, which scripts/setup.sh honours as every program does",
}
# Development settings: their defaults are described in words in the rows of the
# variables they share with the deployed settings ("`true` with config.settings.local").
DEVELOPMENT_SETTINGS = {ROOT / "config" / "settings" / "local.py"}
ENV_TABLE_HEADING = "## Environment variables"
SETTINGS_TABLE_HEADING = "## Cache settings without an environment variable"

# A measured rate or duration: 1,234 requests/s, 20,280 users/s, 167.8 µs.
MEASURED_FIGURE = re.compile(r"\d[\d,.]*\s*(?:(?:requests|users|keys|events)/s\b|µs\b)")
# docs/binlog-follower.md keeps its "Measured" section: the follower's lag under the
# soak and its throughput on a backlog come from those runs, which ./scripts/bench
# does not make, so they have no generated report to live in; each is stated with
# how it was taken. The rest of that page is held to the rule like any other.
OWN_MEASUREMENTS = {DOCS / "binlog-follower.md": "## Measured"}

MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# docs/x.md written without a link, e.g. in a code block or in running text.
BARE_DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w/.-]+\.(?:md|png)")
URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")


@pytest.fixture(autouse=True)
def _isolated_cache():
    """Overrides conftest's fixture of the same name: these tests read files and
    touch no Redis keys, so they need no Redis to run."""
    yield


def _section(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading of its level or above
    (a ``#`` line inside a code block is a comment, not a heading)."""
    lines = text.split("\n")
    start = lines.index(heading) + 1
    level = len(heading) - len(heading.lstrip("#"))
    in_code = False
    for end in range(start, len(lines)):
        if lines[end].startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(rf"#{{1,{level}}} ", lines[end]):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the Markdown table in ``section``, as lists of cells."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def _environment_table() -> dict[str, str]:
    """docs/configuration.md's variables, each with its default cell."""
    rows = _table_rows(_section(CONFIGURATION.read_text(), ENV_TABLE_HEADING))
    table = {}
    for variable, default, _meaning in rows:
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", variable)
        assert names, f"a row of the environment table names no variable: {variable!r}"
        table.update(dict.fromkeys(names, default))
    return table


def _settings_table() -> dict[str, str]:
    """docs/configuration.md's USERS_CACHE keys that no variable sets, each with its
    default cell."""
    rows = _table_rows(_section(CONFIGURATION.read_text(), SETTINGS_TABLE_HEADING))
    table = {}
    for setting, default, _meaning in rows:
        key = re.fullmatch(r'`USERS_CACHE\["(\w+)"\]`', setting)
        assert key, f"a row of the settings table is not a USERS_CACHE key: {setting!r}"
        table[key[1]] = default
    return table


def _module_constants(tree: ast.Module) -> dict[str, object]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _literal(node: ast.expr | None, constants: dict[str, object]) -> object:
    """A default written as a literal (or a module constant); None for anything computed."""
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    try:
        return ast.literal_eval(node) if node is not None else None
    except (ValueError, TypeError):
        return None


def _is_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _environment_reads(path: Path) -> list[tuple[str, ast.expr | None]]:
    """Every variable ``path`` reads by name, with the expression of its default:
    ``env("X")`` and its typed forms (``env.int``, ``env.bool``, ``env.list``,
    ``env.db``...), ``os.environ.get("X")``, ``os.environ["X"]``, ``os.getenv("X")``,
    ``os.environ.setdefault("X", ...)`` and ``"X" in os.environ``."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            function, first = node.func, node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            reads_env = (isinstance(function, ast.Name) and function.id == "env") or (
                isinstance(function, ast.Attribute)
                and isinstance(function.value, ast.Name)
                and function.value.id == "env"
            )
            reads_environ = isinstance(function, ast.Attribute) and (
                (function.attr in ("get", "setdefault") and _is_environ(function.value))
                or (
                    function.attr == "getenv"
                    and isinstance(function.value, ast.Name)
                    and function.value.id == "os"
                )
            )
            if reads_env:
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                reads.append((first.value, default))
            elif reads_environ:
                reads.append((first.value, node.args[1] if len(node.args) > 1 else None))
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                reads.append((node.slice.value, None))
        elif (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.ops[0], ast.In)
            and _is_environ(node.comparators[0])
        ):
            reads.append((node.left.value, None))
    return reads


# A shell script's variable meant to be set from outside: one it gives a default.
SHELL_DEFAULT = re.compile(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}")


def _variables_the_code_reads() -> dict[str, list[tuple[Path, object]]]:
    """Each variable the code reads, with where and the literal default it gives there.
    A variable that sets a USERS_CACHE key has the default users/conf.py gives the
    key: the settings read it without one (``_variables_of_cache_settings``)."""
    read: dict[str, list[tuple[Path, object]]] = {}
    for path in PYTHON_SOURCES:
        constants = _module_constants(ast.parse(path.read_text()))
        for name, default in _environment_reads(path):
            read.setdefault(name, []).append((path, _literal(default, constants)))
    for path in SHELL_SOURCES:
        for name, default in SHELL_DEFAULT.findall(path.read_text()):
            read.setdefault(name, []).append((path, default))
    for key, name in _variables_of_cache_settings().items():
        read.setdefault(name, []).append((BASE_SETTINGS, CACHE_SETTING_DEFAULTS[key]))
    return {name: where for name, where in read.items() if name not in NOT_CONFIGURATION}


def _as_written(value: object) -> str:
    """A default as the table writes it: booleans as the environment spells them,
    lists comma-separated, numbers without digit separators."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _cache_settings_block() -> ast.Assign:
    """config/settings/base.py's ``USERS_CACHE = ...``."""
    for node in ast.parse(BASE_SETTINGS.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "USERS_CACHE" for target in node.targets
        ):
            return node
    raise AssertionError("config/settings/base.py sets no USERS_CACHE")


def _variables_of_cache_settings() -> dict[str, str]:
    """USERS_CACHE key -> the variable config/settings/base.py sets it from: the
    dict of string keys and string variable names in its ``USERS_CACHE`` block."""
    for node in ast.walk(_cache_settings_block()):
        if isinstance(node, ast.Dict) and node.keys:
            pairs = [
                (_literal(key, {}), _literal(value, {}))
                for key, value in zip(node.keys, node.values, strict=True)
            ]
            if all(isinstance(key, str) and isinstance(name, str) for key, name in pairs):
                return dict(pairs)
    raise AssertionError("config/settings/base.py's USERS_CACHE names no variables")


def test_the_readme_stays_a_front_door():
    """Design, operations and the rest live in docs/: a README that grows past this
    is taking them back, and the reader looking for the two commands scrolls again."""
    lines = README.read_text().count("\n")
    assert lines <= README_MOST_LINES, (
        f"README.md has {lines} lines, more than {README_MOST_LINES}: move detail to docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    """Pages were split and moved; a link to a page that moved elsewhere is found here,
    not by a reader. Links resolve from the page; bare docs/ paths from the root."""
    text = page.read_text()
    broken = []
    for target in MARKDOWN_LINK.findall(text):
        path = target.split("#", 1)[0]
        if path and not URL_SCHEME.match(target) and not (page.parent / path).exists():
            broken.append(target)
    broken += [path for path in BARE_DOCS_PATH.findall(text) if not (ROOT / path).exists()]
    assert not broken, f"{page.relative_to(ROOT)} points to files that do not exist: {broken}"


def test_the_readme_indexes_every_page_of_docs():
    """The README's Documentation list is the way into docs/: a page missing from
    it is a page nobody finds."""
    linked = set(MARKDOWN_LINK.findall(README.read_text()))
    missing = [
        str(page.relative_to(ROOT))
        for page in PAGES[1:]
        if str(page.relative_to(ROOT)) not in linked
    ]
    assert not missing, f"README.md's Documentation list lacks {missing}"


def test_every_variable_the_code_reads_is_in_the_configuration_table():
    """A variable the code reads but the reference leaves out is a setting nobody
    knows to set (GUNICORN_ACCESS_LOG and the HSTS variables were, once)."""
    missing = sorted(set(_variables_the_code_reads()) - set(_environment_table()))
    assert not missing, f"docs/configuration.md's environment table lacks {missing}"


def test_every_variable_in_the_configuration_table_is_read_by_the_code():
    """A row for a variable nothing reads promises a setting that does nothing. Read
    means named in the code: a Python string, or $NAME in a script or the Dockerfile."""
    code = "\n".join(path.read_text() for path in PYTHON_SOURCES + SHELL_SOURCES)
    unread = [
        name
        for name in _environment_table()
        if not re.search(rf"""["']{name}["']|\${{?{name}\b""", code)
    ]
    assert not unread, f"docs/configuration.md lists variables no code reads: {unread}"


def test_each_default_in_the_configuration_table_is_the_codes():
    """The reference is the one place defaults are written down, so it must be the
    code's: a literal default the code gives a variable is its row's, in backticks."""
    table = _environment_table()
    wrong = []
    for name, where in _variables_the_code_reads().items():
        for path, default in where:
            if path in DEVELOPMENT_SETTINGS or default in (None, "", [], ()):
                continue
            if f"`{_as_written(default)}`" not in table.get(name, ""):
                wrong.append(f"{name}: {_as_written(default)!r} in {path.relative_to(ROOT)}")
    assert not wrong, f"docs/configuration.md gives other defaults than the code: {wrong}"


def test_every_cache_setting_is_in_the_configuration_reference():
    """Every USERS_CACHE key is documented once: as the variable it is set from, or,
    when no variable sets it, as a row of the settings table with users/conf.py's
    default; and that table holds nothing else."""
    variables = _variables_of_cache_settings()
    environment_table, settings_table = _environment_table(), _settings_table()
    without_a_row = [variables[key] for key in variables if variables[key] not in environment_table]
    assert not without_a_row, f"docs/configuration.md's environment table lacks {without_a_row}"
    settings_only = set(CACHE_SETTING_DEFAULTS) - set(variables)
    assert set(settings_table) == settings_only, (
        f"the settings table should list exactly {sorted(settings_only)},"
        f" it lists {sorted(settings_table)}"
    )
    wrong = [
        f"{key}: {CACHE_SETTING_DEFAULTS[key]!r}"
        for key in settings_only
        if f"`{_as_written(CACHE_SETTING_DEFAULTS[key])}`" not in settings_table[key]
    ]
    assert not wrong, f"the settings table's defaults differ from users/conf.py's: {wrong}"


def test_each_cache_default_is_written_once():
    """users/conf.py holds the cache's defaults; the settings set a key only when its
    variable is set. A default written in the settings too would be a second one,
    which a change to users/conf.py would not reach (USER_CACHE_TTL's 3600 was
    written in both, once): the USERS_CACHE block holds no value but the keys and
    their variables' names."""
    variables = _variables_of_cache_settings()
    written = [
        node.value
        for node in ast.walk(_cache_settings_block().value)
        if isinstance(node, ast.Constant)
        and node.value not in variables
        and node.value not in variables.values()
    ]
    assert not written, f"config/settings/base.py's USERS_CACHE writes {written}"
    assert set(variables) <= set(CACHE_SETTING_DEFAULTS), "USERS_CACHE sets a key with no default"


def test_the_cache_errors_name_the_variables_the_settings_read():
    """users/conf.py names a key's variable when it refuses its value; it cannot
    import the settings' list (config/ depends on no app), so the two are held
    together here."""
    assert _variables_of_cache_settings() == CACHE_SETTING_VARIABLES


def test_settings_without_a_variable_are_never_written_as_variables():
    """LEASE_WAIT_MS and its kind are keys of USERS_CACHE: written bare they read as
    environment variables, which a deployment would set to no effect."""
    settings_only = set(CACHE_SETTING_DEFAULTS) - set(_variables_of_cache_settings())
    bare = [
        f"{page.relative_to(ROOT)}: {key}"
        for page in PAGES
        for key in sorted(settings_only)
        if re.search(rf'(?<!\[")\b{key}\b(?!"\])', page.read_text())
    ]
    assert not bare, f'write these as USERS_CACHE["NAME"]: {bare}'


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_measured_figures_live_only_in_the_generated_report(page):
    """Figures copied out of docs/benchmarks/latest.md go stale when the bench runs
    again, and then two pages disagree (warm at 9,800 users/s in one section and
    20,280 in another, once). Other pages link the report instead."""
    text = page.read_text()
    if page in OWN_MEASUREMENTS:
        text = text.replace(_section(text, OWN_MEASUREMENTS[page]), "")
    figures = [line.strip() for line in text.splitlines() if MEASURED_FIGURE.search(line)]
    assert not figures, (
        f"{page.relative_to(ROOT)} quotes measured figures; link"
        f" docs/benchmarks/latest.md instead: {figures}"
    )
