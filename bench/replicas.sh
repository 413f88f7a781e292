#!/usr/bin/env bash
# A hub on PostgreSQL (one replica) against a hub on sled, in one run and
# alternating, so the ratios hold on a noisy machine (BENCHMARKS.md,
# "Replicas"):
#
#   bench/replicas.sh                 # 3 rounds, 10 s windows (about 6 min)
#   ROUNDS=5 WINDOW=8s bench/replicas.sh
#
# Each round, for each backend (a fresh hub, and a fresh database for
# PostgreSQL, every run):
#   share-strategy   durable writes, 64 in flight
#   get-strategies   the ranking query over 10,000 stored outcomes, 64 in
#                    flight, while 2 callers keep writing
# Nothing is pinned: PostgreSQL shares the two cores with the hub and the
# load generator, as it would share a machine. Needs PostgreSQL at
# $PG (default postgres://postgres@127.0.0.1:5432, trusted) and psql.
# One JSON object per run goes to bench/results/replicas-<date>.jsonl, with
# "backend", "round" added; a summary table goes to stdout.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
ROUNDS="${ROUNDS:-3}"
WINDOW="${WINDOW:-10s}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
command -v psql >/dev/null || { echo "psql is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed for the summary" >&2; exit 1; }

echo "building the hub (cargo build --release)" >&2
(cd "$REPO" && cargo build --release --quiet)
HUB="${CARGO_TARGET_DIR:-$REPO/target}/release/learning-hub"
mkdir -p "$BENCH/results"
OUT="$BENCH/results/replicas-$(date +%Y-%m-%d-%H%M%S).jsonl"

run() { # backend round rpc flags...
    local backend="$1" round="$2" rpc="$3"
    shift 3
    local extra=() db=""
    if [ "$backend" = postgres ]; then
        db="bench_$$_${round}_${rpc//-/_}"
        psql "$PG/postgres" -qc "CREATE DATABASE $db"
        extra=("--hub-arg=--postgres=$PG/$db")
    fi
    echo "round $round: $backend $rpc" >&2
    "$HUB" bench --rpc "$rpc" --duration "$WINDOW" --json --quiet "${extra[@]}" "$@" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["backend"]=sys.argv[1]; r["round"]=int(sys.argv[2]); print(json.dumps(r))' "$backend" "$round" >>"$OUT"
    if [ -n "$db" ]; then
        psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)"
    fi
}

for round in $(seq 1 "$ROUNDS"); do
    for backend in sled postgres; do
        run "$backend" "$round" share-strategy --concurrency 64
        run "$backend" "$round" get-strategies --concurrency 64 --preload 10000 --write-concurrency 2
    done
done

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"results: {sys.argv[1]}\n")
print("| round | rpc | sled req/s (p50 / p99 ms) | postgres req/s (p50 / p99 ms) | postgres / sled req/s | p99 postgres / sled |")
print("|---:|---|---|---|---:|---:|")
by = {(r["round"], r["rpc"], r["backend"]): r for r in rows}
for (rnd, rpc, backend), r in sorted(by.items()):
    if backend != "sled" or (rnd, rpc, "postgres") not in by:
        continue
    p = by[(rnd, rpc, "postgres")]
    print(f"| {rnd} | {rpc} | {r['rps']:.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f}) | "
          f"{p['rps']:.0f} ({p['p50_ms']:.2f} / {p['p99_ms']:.2f}) | {p['rps'] / r['rps']:.2f} | {p['p99_ms'] / r['p99_ms']:.2f} |")
EOF
