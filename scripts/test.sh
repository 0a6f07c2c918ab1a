#!/usr/bin/env bash
# Runs every test of handover: installs what a fresh machine lacks, then the
# whole workspace suite (unit, corpus, property, differential, allocation,
# and end-to-end tests against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked "$@"
