#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes .venv, installs the project with its test
# extras and the example plugin, installs system services the tests start themselves
# (redis-server, nginx, chromium) where missing, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# tests/services.py runs its own nginx processes (free ports, config in a temp dir)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# the browser tests (tests/e2e) drive Debian's chromium through Playwright; Playwright's own
# browser download is never used
[ -x "${SWITCHBOARD_CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "tests/run.sh: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian's nginx package may start the system service on port 80: the tests never use it
  if [[ " ${need_apt[*]} " == *" nginx "* ]]; then
    $SUDO service nginx stop >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[test,redis]' -e ./examples/poll_plugin > .venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  echo "tests/run.sh: pip install failed (log above)" >&2
  exit 1
fi
exec .venv/bin/python -m pytest "$@"
