#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the
# other, one process at a time, and prints what each did.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        (default: 120 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On a stable
# toolchain RUSTC_BOOTSTRAP=1 lets it pass its nightly-only flags; set
# FUZZ_SANITIZER=none if the address sanitizer cannot link. Corpora grow in
# fuzz/corpus/<target> (git-ignored); crashes land in fuzz/artifacts/<target>,
# each run's libFuzzer output in fuzz/logs/<target>.log.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(requests store_records store_load identity_policy)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

# Build first, so the time given is all fuzzing.
for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$t"
done

status=0
mkdir -p logs
printf '%-16s %12s %8s %8s %8s %s\n' target executions exec/s seconds corpus new-crashes
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    before=$(find "artifacts/$t" -type f | wc -l)
    started=$(date +%s)
    set +e
    # One process (no -jobs/-fork: libFuzzer's default). -timeout: an input
    # running longer than 10 s is a hang and reported like a crash.
    cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - started))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    if [ -z "$runs" ]; then
        # A crash ends the run before the final stats: take the last status line.
        runs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -1 || true)
    fi
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    printf '%-16s %12s %8s %8s %8s %s\n' "$t" "${runs:-?}" "${rate:-?}" "$took" "$corpus" "$crashes"
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "--- $t failed (exit $rc); the end of $PWD/$log:" >&2
        tail -40 "$log" >&2
    fi
done
exit "$status"
