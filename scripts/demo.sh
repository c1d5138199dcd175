#!/usr/bin/env bash
# demo.sh - set everything up (idempotent), then run the main job end to end:
# train -> export -> serve one gRPC service per agent -> run live episodes -> summary.
# Extra arguments go to `marlctl demo` (e.g. `bash scripts/demo.sh --env smax:3m --algo qmix --steps 20000`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/marlctl" demo "$@"
