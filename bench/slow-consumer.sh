#!/usr/bin/env bash
# The slow-consumer measurement of RELIABILITY.md §3, in one command:
#
#   bench/slow-consumer.sh            # 5 alternating pairs (about 3 min)
#   PAIRS=8 bench/slow-consumer.sh
#
# The hub runs on CPU 0, the bench on CPU 1. Each pair measures the insight
# fan-out to 1,000 reading subscribers (500 insights of 4,000 bytes, 10 ms
# apart) without and then with 50 more subscriptions that are opened and
# never read. One JSON object per run goes to
# bench/results/slow-consumer-<date>.jsonl (with "pair" added); a table of
# every run and of the medians goes to stdout.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
PAIRS="${PAIRS:-5}"
# shellcheck source=pinned-setup.sh
source "$BENCH/pinned-setup.sh" "slow-consumer"

for pair in $(seq 1 "$PAIRS"); do
    for stalled in 0 50; do
        echo "pair $pair: $stalled stalled" >&2
        taskset -c 1 "$HUB" bench --hub-cpus 0 --fanout 1000 --publishes 500 \
            --publish-interval 10ms --insight-bytes 4000 --stalled "$stalled" \
            --json --quiet |
            python3 -c 'import json,sys; r=json.load(sys.stdin); r["pair"]=int(sys.argv[1]); print(json.dumps(r))' "$pair" >>"$OUT"
    done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"results: {sys.argv[1]}\n")
print("| pair | stalled | delivery p50 / p99 ms | last delivery p50 / p99 ms | missing | hub RSS MiB |")
print("|---:|---:|---|---|---:|---:|")
for r in rows:
    f = r["fanout"]
    print(f'| {r["pair"]} | {f["stalled"]} | {f["delivery_p50_ms"]:.1f} / {f["delivery_p99_ms"]:.1f} | {f["last_delivery_p50_ms"]:.1f} / {f["last_delivery_p99_ms"]:.1f} | {f["missing"]} | {r["hub_rss_mb"]:.1f} |')
print()
by = {s: [r for r in rows if r["fanout"]["stalled"] == s] for s in (0, 50)}
ratios = []
for p in sorted({r["pair"] for r in rows}):
    a = [r for r in by[0] if r["pair"] == p]
    b = [r for r in by[50] if r["pair"] == p]
    if a and b:
        ratios.append(b[0]["fanout"]["delivery_p99_ms"] / a[0]["fanout"]["delivery_p99_ms"])
for s, rs in by.items():
    if rs:
        med = lambda k: statistics.median(r["fanout"][k] for r in rs)
        print(f"stalled {s}: median delivery p50 {med('delivery_p50_ms'):.1f} ms, p99 {med('delivery_p99_ms'):.1f} ms; median RSS {statistics.median(r['hub_rss_mb'] for r in rs):.1f} MiB")
if ratios:
    print(f"p99 with / without stalled, per pair: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}")
EOF
