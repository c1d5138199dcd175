#!/usr/bin/env bash
# test.sh - set everything up (idempotent), then run the whole pytest suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k envs`). The test modules run in parallel, one
# module per worker process (pytest-xdist, --dist loadfile: a module's fixtures are built once; modules with
# the long modules first, see tests/conftest.py). Workers: the number of cores, at most 4, or MARLCTL_TEST_WORKERS
# (0 = everything in this process).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
set +e
workers="${MARLCTL_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
python -m pytest -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest exits 5 when it collected no test: for this project that means the suite is broken.
  echo "test.sh: pytest collected no tests - treating that as a failure" >&2
  exit 1
fi
exit "$rc"
