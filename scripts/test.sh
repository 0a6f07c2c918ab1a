#!/usr/bin/env bash
# Runs every test of handover: installs what a fresh machine lacks, then the
# whole workspace suite (unit, corpus, property, differential, allocation,
# and end-to-end tests with SIPp and Prometheus against the real binaries),
# and ends with one line of totals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The cargo feature `fault-injection` gives the tests' workers fault
# injection (partitions, replica panics) on their admin sockets; a
# release build has none.
cargo test --workspace --locked --features handover/fault-injection "$@" 2>&1 | tee "$log" || status=$?
# cargo prints one "test result:" line per test binary; add them up.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
