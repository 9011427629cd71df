#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes .venv, installs the project with its test
# extras and the example plugin, installs system services the tests start themselves
# (redis-server, nginx, chromium) where missing, then runs pytest. Extra arguments go to pytest
# (and run just what they select); with none, the whole suite, the long Autobahn set included.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# tests/services.py runs its own nginx processes (free ports, config in a temp dir)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# the browser tests (tests/e2e) drive Debian's chromium through Playwright; Playwright's own
# browser download is never used
[ -x "${SWITCHBOARD_CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
# the docs' shell examples pipe through jq (tests/test_doc_examples.py runs them)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
# axe-core (the accessibility checker those tests load into the page) and wscat (the docs'
# WebSocket examples) come from npm: tests/js/package.json
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
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
if [ ! -f tests/js/node_modules/axe-core/axe.min.js ] || [ ! -x tests/js/node_modules/.bin/wscat ]; then
  if ! npm ci --prefix tests/js --silent --no-audit --no-fund > .venv/npm-install.log 2>&1; then
    cat .venv/npm-install.log >&2
    echo "tests/run.sh: npm ci (tests/js: axe-core, wscat) failed (log above)" >&2
    exit 1
  fi
fi
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

# The whole suite. The 216 permessage-deflate cases of the Autobahn suite (marked autobahn_full,
# deselected from the main run in setup.cfg) take ~6 minutes of one core, mostly while the main
# run waits on timers and sockets: they run beside it, niced so the timing tests come first.
full_log=.venv/autobahn-full.log
nice -n 10 .venv/bin/python -m pytest -q -p no:cacheprovider -m autobahn_full \
  tests/security/test_conformance.py > "$full_log" 2>&1 &
full=$!
trap 'kill "$full" 2>/dev/null || true' EXIT
set +e
.venv/bin/python -m pytest
main=$?
wait "$full"
autobahn=$?
trap - EXIT
set -e
echo "--- the Autobahn permessage-deflate cases (tests/security/test_conformance.py -m autobahn_full):"
if [ "$autobahn" -eq 0 ]; then tail -n 1 "$full_log"; else cat "$full_log"; fi
[ "$main" -eq 0 ] && [ "$autobahn" -eq 0 ]
