# Sourced by the pinned bench scripts (overload.sh, slow-consumer.sh):
# checks the tools they need, builds the hub in release mode, and sets
# HUB (the binary) and OUT (a new results file named after $1).
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed for the summary" >&2; exit 1; }

echo "building the hub (cargo build --release)" >&2
(cd "$REPO" && cargo build --release --quiet)
HUB="${CARGO_TARGET_DIR:-$REPO/target}/release/learning-hub"

mkdir -p "$BENCH/results"
OUT="$BENCH/results/$1-$(date +%Y-%m-%d-%H%M%S).jsonl"
