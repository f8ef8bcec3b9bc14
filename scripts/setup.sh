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

_can_be_root() { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif _can_be_root; then sudo "$@"
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

_is_loopback() { case "$1" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

# Waits up to 30 s for host:port to answer.
_wait_for() {
  local host="$1" port="$2"
  for _ in $(seq 1 60); do _answers "$host" "$port" && return 0; sleep 0.5; done
  return 1
}

# The path of an installed program, looked for in PATH and in the sbin folders,
# which a user's PATH may lack (Debian's mariadbd is /usr/sbin/mariadbd).
_binary() {
  local folder
  local IFS=:
  for folder in $PATH /usr/local/sbin /usr/sbin /sbin; do
    if [ -f "$folder/$1" ] && [ -x "$folder/$1" ]; then
      printf '%s\n' "$folder/$1"
      return 0
    fi
  done
  return 1
}

_docker_usable() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# A development container of a store, on loopback (docker-compose.yml is the
# deployment's: its stores are its own, and it needs the secrets of .env).
_docker_run() {
  local name="usersvc-dev-$1" port="$2" inside="$3"; shift 3
  _docker_usable || return 1
  say "starting $name with docker"
  docker start "$name" >/dev/null 2>&1 \
    || docker run -d --name "$name" -p "127.0.0.1:$port:$inside" "$@" >/dev/null
}

_start_mariadb() {
  local mariadbd
  if mariadbd="$(_binary mariadbd)" && _can_be_root; then
    say "starting the local mariadbd"
    as_root start-stop-daemon --start --oknodo --background --exec "$mariadbd" && return 0
  fi
  _docker_run mysql "$1" 3306 -e MYSQL_ALLOW_EMPTY_PASSWORD=yes mysql:8.4 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci
}

_start_redis() {
  local redis_server
  if redis_server="$(_binary redis-server)"; then
    say "starting the local redis-server on port $1"
    if [ "$(id -u)" = 0 ] && [ -d /var/lib/redis ] && [ -d /var/log/redis ]; then
      "$redis_server" --daemonize yes --bind 127.0.0.1 -::1 --port "$1" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null && return 0
    fi
    "$redis_server" --daemonize yes --bind 127.0.0.1 --port "$1" --save "" --appendonly no \
      --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/usersvc-redis.log" >/dev/null && return 0
  fi
  _docker_run redis "$1" 6379 redis:7 redis-server --save "" --appendonly no
}

# Installs Debian's packages of the servers this machine lacks, as root or with
# passwordless sudo, as the build packages are: on a terminal after asking;
# without one (CI, a provisioning script) only when running as root, since a
# user's passwordless sudo does not say that this user wants database servers.
_install_servers() {
  local answer
  command -v apt-get >/dev/null && _can_be_root || return 1
  if [ -t 0 ]; then
    read -r -p "==> install $* (Debian's packages, with apt-get as root)? [Y/n] " answer || return 1
    case "$answer" in ''|[Yy]*) ;; *) return 1 ;; esac
  elif [ "$(id -u)" != 0 ]; then
    return 1
  fi
  say "installing $*"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || { say "could not install $*"; return 1; }
}

# MySQL and Redis answering where DATABASE_URL and REDIS_URL say, or one message
# naming everything that is missing. On loopback, a server that does not answer
# is started: the local mariadbd or redis-server, else a Docker container, else,
# once installed (_install_servers), Debian's.
ensure_stores() {
  local db_host db_port redis_host redis_port running
  local problems=() missing=() waiting=()
  read -r db_host db_port < <(_endpoint "$DATABASE_URL" 3306)
  read -r redis_host redis_port < <(_endpoint "$REDIS_URL" 6379)
  local need_mysql=0 need_redis=0
  _answers "$db_host" "$db_port" || need_mysql=1
  _answers "$redis_host" "$redis_port" || need_redis=1
  [ $need_mysql = 0 ] && [ $need_redis = 0 ] && return 0

  if [ $need_mysql = 1 ] && ! _is_loopback "$db_host"; then
    problems+=("nothing answers on $db_host:$db_port (DATABASE_URL): start that MySQL, or set DATABASE_URL.")
    need_mysql=0
  elif [ $need_mysql = 1 ] && running="$("$PYTHON" scripts/running_mariadbd.py)" && [ -n "$running" ]; then
    problems+=("mariadbd runs, but not on $db_host:$db_port (DATABASE_URL): ${running//$'\n'/; }. \
Point DATABASE_URL at the port it listens on, or make it listen on $db_port.")
    need_mysql=0
  fi
  if [ $need_redis = 1 ] && ! _is_loopback "$redis_host"; then
    problems+=("nothing answers on $redis_host:$redis_port (REDIS_URL): start that Redis, or set REDIS_URL.")
    need_redis=0
  fi

  if ! _docker_usable; then
    [ $need_mysql = 1 ] && ! _binary mariadbd >/dev/null && missing+=(mariadb-server)
    [ $need_redis = 1 ] && ! _binary redis-server >/dev/null && missing+=(redis-server)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    if _install_servers "${missing[@]}"; then
      # Debian's packages start their servers where a service manager runs.
      [ $need_mysql = 1 ] && _answers "$db_host" "$db_port" && need_mysql=0
      [ $need_redis = 1 ] && _answers "$redis_host" "$redis_port" && need_redis=0
    else
      local variables=""
      if [[ " ${missing[*]} " == *" mariadb-server "* ]]; then
        problems+=("nothing answers on $db_host:$db_port (DATABASE_URL), and neither MariaDB (mariadbd) nor Docker is installed.")
        need_mysql=0 variables="DATABASE_URL"
      fi
      if [[ " ${missing[*]} " == *" redis-server "* ]]; then
        problems+=("nothing answers on $redis_host:$redis_port (REDIS_URL), and neither Redis (redis-server) nor Docker is installed.")
        need_redis=0 variables="${variables:+$variables and }REDIS_URL"
      fi
      problems+=("to install: 'sudo apt-get install ${missing[*]}' (or install Docker); or set $variables to servers that run.")
    fi
  fi

  # Both started before waiting for either.
  if [ $need_mysql = 1 ]; then
    if _start_mariadb "$db_port"; then waiting+=("MySQL $db_host $db_port")
    else problems+=("nothing answers on $db_host:$db_port (DATABASE_URL) and no MySQL could be started.")
    fi
  fi
  if [ $need_redis = 1 ]; then
    if _start_redis "$redis_port"; then waiting+=("Redis $redis_host $redis_port")
    else problems+=("nothing answers on $redis_host:$redis_port (REDIS_URL) and no Redis could be started.")
    fi
  fi
  local store host port
  for store in "${waiting[@]}"; do
    read -r store host port <<<"$store"
    _wait_for "$host" "$port" || problems+=("$store did not start answering on $host:$port.")
  done

  [ ${#problems[@]} -eq 0 ] && return 0
  printf 'error: %s\n' "${problems[@]}" >&2
  exit 1
}

# Optional: Debian's Chromium and its driver, for the browser test of the admin
# (tests/api/test_browser.py). .ci/run calls this; without it that test is skipped.
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
# (tests/operations/test_proxy.py). .ci/run calls this; without it that test is skipped.
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
# rules (tests/operations/test_monitoring.py). .ci/run calls this; without it those tests
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
  _binary mariadbd >/dev/null || die "this runs its own mariadbd: install mariadb-server"
  _binary redis-server >/dev/null || die "this runs its own redis-server: install redis-server"
}
