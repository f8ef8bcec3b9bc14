# Shared set-up for scripts/run and scripts/test; sourced, not run.
#
# Brings a fresh Debian/Ubuntu machine (or one with Docker) to a working state:
# system packages, the virtualenv with the locked dependencies, MySQL and Redis
# answering, and the database created. Each step does nothing when already done.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
export DATABASE_URL="${DATABASE_URL:-mysql://root@127.0.0.1:3306/usersvc}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

ensure_system_packages() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer."
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); Python 3.11 or newer is required."
  local missing=()
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  command -v gcc >/dev/null || missing+=(gcc python3-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  if ! pkg-config --exists mysqlclient 2>/dev/null && ! pkg-config --exists libmariadb 2>/dev/null; then
    missing+=(default-libmysqlclient-dev)
  fi
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null \
    || die "missing system packages (${missing[*]}): install their equivalents, see requirements/apt.txt."
  say "installing system packages: ${missing[*]}"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $(grep -v '^#' requirements/apt.txt) >/dev/null \
    || die "could not install ${missing[*]}: run 'sudo apt-get install $(grep -v '^#' requirements/apt.txt | tr '\n' ' ')'"
}

ensure_venv() {
  local lock="$1" stamp="$VENV/.installed-lock"
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local want; want="$(sha256sum "$lock" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing locked dependencies from $lock"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$lock"
    echo "$want" > "$stamp"
  fi
}

# host port of a URL, e.g. "127.0.0.1 3306"
_endpoint() {
  "$PYTHON" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or int(sys.argv[2]))' "$1" "$2"
}

_answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

_wait_for() {
  local name="$1" host="$2" port="$3"
  for _ in $(seq 1 60); do _answers "$host" "$port" && return 0; sleep 0.5; done
  die "$name did not start answering on $host:$port"
}

# A development container of a store, on loopback (docker-compose.yml is the
# deployment's: its stores are its own, and it needs the secrets of .env).
_docker_run() {
  local name="usersvc-dev-$1" port="$2" inside="$3"; shift 3
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || return 1
  say "starting $name with docker"
  docker start "$name" >/dev/null 2>&1 \
    || docker run -d --name "$name" -p "127.0.0.1:$port:$inside" "$@" >/dev/null
}

_start_mariadb() {
  if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
    say "starting the local mariadbd"
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd && return 0
  fi
  _docker_run mysql "$1" 3306 -e MYSQL_ALLOW_EMPTY_PASSWORD=yes mysql:8.4 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci
}

_start_redis() {
  if command -v redis-server >/dev/null; then
    say "starting the local redis-server on port $1"
    if [ "$(id -u)" = 0 ] && [ -d /var/lib/redis ] && [ -d /var/log/redis ]; then
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$1" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null && return 0
    fi
    redis-server --daemonize yes --bind 127.0.0.1 --port "$1" --save "" --appendonly no \
      --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/usersvc-redis.log" >/dev/null && return 0
  fi
  _docker_run redis "$1" 6379 redis:7 redis-server --save "" --appendonly no
}

ensure_stores() {
  local host port
  read -r host port < <(_endpoint "$DATABASE_URL" 3306)
  if ! _answers "$host" "$port"; then
    _start_mariadb "$port" || die "nothing answers on $host:$port and no MySQL could be started: \
install one ('sudo apt-get install mariadb-server') or Docker, or set DATABASE_URL."
    _wait_for MySQL "$host" "$port"
  fi
  read -r host port < <(_endpoint "$REDIS_URL" 6379)
  if ! _answers "$host" "$port"; then
    _start_redis "$port" || die "nothing answers on $host:$port and no Redis could be started: \
install one ('sudo apt-get install redis-server') or Docker, or set REDIS_URL."
    _wait_for Redis "$host" "$port"
  fi
}

# Optional: Debian's Chromium and its driver, for the browser test of the admin
# (tests/test_browser.py). .ci/run calls this; without it that test is skipped.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
  command -v apt-get >/dev/null \
    || die "the browser test needs Chromium and chromedriver: install them, or run without CI=true to skip it."
  say "installing chromium and chromium-driver for the browser test"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    chromium chromium-driver >/dev/null \
    || die "could not install chromium: run 'sudo apt-get install chromium chromium-driver'"
}

# Optional: Debian's nginx, for the test of the proxy in front of gunicorn
# (tests/test_proxy.py). .ci/run calls this; without it that test is skipped.
ensure_nginx() {
  if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then return; fi
  command -v apt-get >/dev/null \
    || die "the proxy test needs nginx: install it, or run without CI=true to skip it."
  say "installing nginx for the proxy test"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    nginx >/dev/null \
    || die "could not install nginx: run 'sudo apt-get install nginx'"
}

# Optional: promtool, from Debian's prometheus package, which checks the alert
# rules (tests/test_monitoring.py). .ci/run calls this; without it those tests
# are skipped. policy-rc.d, where there is one (containers), keeps the package's
# Prometheus server from starting; elsewhere it starts, as nginx does above.
ensure_promtool() {
  if command -v promtool >/dev/null || [ -x /usr/bin/promtool ]; then return; fi
  command -v apt-get >/dev/null \
    || die "the alert rules' tests need promtool: install it, or run without CI=true to skip them."
  say "installing prometheus for promtool, which checks the alert rules"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus >/dev/null \
    || die "could not install prometheus: run 'sudo apt-get install prometheus'"
}

# Creates the database. scripts/create_database.py prints the DATABASE_URL to use:
# the one given, or, where MariaDB lets root log in over its unix socket only, this
# checkout's own account (saved in local.env; made when running as root or with
# passwordless sudo, otherwise it says in one line what to run).
ensure_database() {
  local url
  url="$("$VENV/bin/python" scripts/create_database.py)" || exit 1
  export DATABASE_URL="$url"
}

# The soak and the fuzz run start their own mariadbd and redis-server.
ensure_server_binaries() {
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] \
    || die "this runs its own mariadbd: install mariadb-server"
  command -v redis-server >/dev/null || die "this runs its own redis-server: install redis-server"
}
