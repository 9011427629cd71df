#!/usr/bin/env bash
# Mutation testing of the security-critical modules (docs/security.md; issue 11, point 11):
# server/auth.py, server/http/guards.py, server/buckets.py, server/connection.py and
# server/pipeline/ (chain, rate limit, content length, filter), with mutmut 3 against the tests
# that guard them. The configuration (modules, test selection) is the [mutmut] section of
# setup.cfg; mutmut works in mutants/ (git-ignored; delete it to start over).
#
# Needs .venv from `bash tests/run.sh` and the dev extra:
#     .venv/bin/python -m pip install -e '.[dev]'
# Usage:
#     bash tests/mutation.sh             every mutant not yet tested, then the summary and survivors
#     bash tests/mutation.sh NAME...     (re-)test the named mutants only (as `mutmut results` prints them)
#     bash tests/mutation.sh --fresh     start over (removes mutants/)
# MUTMUT_CHILDREN sets how many mutants run at once (default 6: most test time is waiting on
# sockets and timers, not CPU). The run is niced: it leaves the machine to other work.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fresh" ]; then
  rm -rf mutants
  shift
fi
started=$(date +%s)
nice -n 19 .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-6}" "$@"
echo "mutation run: $(( $(date +%s) - started )) s"
.venv/bin/mutmut export-cicd-stats >/dev/null
cat mutants/mutmut-cicd-stats.json
echo "survivors (see each with: .venv/bin/mutmut show NAME):"
.venv/bin/mutmut results | grep -E ': (survived|timeout|suspicious)$' || true
