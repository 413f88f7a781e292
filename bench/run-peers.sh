#!/usr/bin/env bash
# One command, on a fresh clone: the peer comparison of bench/README.md.
#
#   bench/run-peers.sh                 # full matrix (about 25-35 min on 2 cores)
#   bench/run-peers.sh --window 5      # any extra flags go to `peers.py run`
#
# Creates bench/.venv if it is missing and installs the pinned packages into
# it (Vizier and Optuna only import and serve with these pins), builds the hub
# in release mode, then runs the matrix: results go to
# bench/results/peers-<date>.jsonl (one JSON object per cell) and the
# markdown table to stdout.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
PYTHON="${PYTHON:-python3}"
VENV="$BENCH/.venv"

# numpy 2.4 and the rest of the pins need Python >= 3.11.
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed (set PYTHON=...)")'
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
    echo "note: fewer than 2 CPUs; pass --server-cpu/--client-cpu to choose them" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
# Quiet when everything is already installed; pip only fetches what is missing.
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$BENCH/peer-requirements.txt"

echo "building the hub (cargo build --release)" >&2
(cd "$REPO" && cargo build --release --quiet)

mkdir -p "$BENCH/results"
OUT="$BENCH/results/peers-$(date +%Y-%m-%d).jsonl"
# Never mix two runs in one file: a second run on the same day gets the time too.
if [ -e "$OUT" ]; then
    OUT="$BENCH/results/peers-$(date +%Y-%m-%d-%H%M%S).jsonl"
fi
echo "results: $OUT" >&2

# The table (stdout) is also kept beside the JSON lines; progress goes to stderr.
"$VENV/bin/python" "$BENCH/peers.py" run \
    --hub-bin "$REPO/target/release/learning-hub" \
    --out "$OUT" \
    "$@" | tee "${OUT%.jsonl}.md"
