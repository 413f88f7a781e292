#!/usr/bin/env bash
# The overload measurement of RELIABILITY.md §5, in one command:
#
#   bench/overload.sh              # 2 rounds, 8 s windows (about 3 min)
#   ROUNDS=3 WINDOW=10s bench/overload.sh
#
# The hub runs on CPU 0 with --max-in-flight 64, the load generator on CPU 1,
# durable ShareStrategy unless RPC says otherwise. Each round, one after the
# other:
#   baseline   64 callers, closed loop (the bound exactly busy)
#   3x-eager   192 callers that call again at once when refused
#   3x-polite  192 callers that wait out the hub's retry-after when refused
#              (what the Rust client's RetryPolicy does)
#   3x-eager-no-pause  3x-eager against a hub whose refusals are not held
#              (limits.refusal_pause_ms = 0): what the pause buys
# (An open loop at 3x, `--rate`, is not part of it: a generator on one core
# cannot send 3x what a hub on one core answers for this RPC.)
# One JSON object per run goes to bench/results/overload-<date>.jsonl, with
# a "mode" and "round" added; a summary table goes to stdout.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
ROUNDS="${ROUNDS:-2}"
WINDOW="${WINDOW:-8s}"
# RPC=get-strategies measures a CPU-bound query instead (PRELOAD outcomes
# stored first; the hub starts fresh for every run).
RPC="${RPC:-share-strategy}"
PRELOAD="${PRELOAD:-0}"
# shellcheck source=pinned-setup.sh
source "$BENCH/pinned-setup.sh" "overload-$RPC"

run() { # mode round flags...
    local mode="$1" round="$2"
    shift 2
    echo "round $round: $mode" >&2
    # The hub the bench starts inherits the environment.
    local pause=20
    [ "$mode" = 3x-eager-no-pause ] && pause=0
    LEARNING_HUB_LIMITS_REFUSAL_PAUSE_MS=$pause taskset -c 1 "$HUB" bench --rpc "$RPC" --preload "$PRELOAD" --hub-cpus 0 \
        --hub-arg=--max-in-flight=64 --connections 32 --duration "$WINDOW" \
        --json --quiet "$@" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["mode"]=sys.argv[1]; r["round"]=int(sys.argv[2]); print(json.dumps(r))' "$mode" "$round" >>"$OUT"
}

for round in $(seq 1 "$ROUNDS"); do
    run baseline "$round" --concurrency 64
    run 3x-eager "$round" --concurrency 192
    run 3x-polite "$round" --concurrency 192 --honor-retry-after
    run 3x-eager-no-pause "$round" --concurrency 192
done

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"results: {sys.argv[1]}\n")
print("| round | mode | offered | accepted req/s | accepted p50 / p99 ms | p99 / baseline | refused | refusals p50 / p99 ms | unsent |")
print("|---:|---|---:|---:|---|---:|---:|---|---:|")
base = {}
for r in rows:
    l = r
    if r["mode"] == "baseline":
        base[r["round"]] = l["p99_ms"]
    refused = sum(l["errors"].values())
    offered = f'{l["offered_rps"]:,.0f}/s' if l.get("offered_rps") else f'{l["concurrency"]} callers'
    errs = f'{l["error_p50_ms"]:.1f} / {l["error_p99_ms"]:.1f}' if l.get("error_p50_ms") is not None else "—"
    ratio = l["p99_ms"] / base[r["round"]] if base.get(r["round"]) else float("nan")
    print(f'| {r["round"]} | {r["mode"]} | {offered} | {l["rps"]:,.0f} | {l["p50_ms"]:.1f} / {l["p99_ms"]:.1f} | {ratio:.2f}× | {refused:,} | {errs} | {l.get("unsent", "—")} |')
EOF
