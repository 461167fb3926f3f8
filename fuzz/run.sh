#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 30) on the committed corpus, when a nightly
# toolchain and cargo-fuzz are installed; otherwise says it skipped and exits 0. CI's
# .ci/fuzz (run by .ci/run after the tests) installs both when it can and calls this with 15 s
# per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# New inputs go to fuzz/scratch/<target> (ignored by git); a crash leaves its input in
# fuzz/artifacts/<target>/ and stops the script with libFuzzer's status (the run's log is
# fuzz/scratch/<target>.log). Add the input to
# fuzz/corpus/<target>/ with the fix: `cargo test --test hostile` replays the corpus.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "skipped: no cargo-fuzz (cargo install cargo-fuzz)"
    exit 0
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
for target in "${targets[@]}"; do
    mkdir -p "scratch/$target"
    echo "== $target: ${seconds}s"
    status=0
    cargo +nightly fuzz run "$target" "scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
        >"scratch/$target.log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "scratch/$target.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "scratch/$target.log"
        echo "$target failed (status $status): the input is in fuzz/artifacts/$target/"
        exit "$status"
    fi
done
