#!/usr/bin/env bash
# Installs the pinned cargo tools .ci/run's hygiene checks use, built from
# crates.io into a cache of their own (nothing if already there), and
# prints the directory to put on PATH.
#   - cargo-machete: dependencies a crate declares and never uses.
#   - cargo-deny: licences, bans and sources of every crate built.
set -euo pipefail
root="${HANDOVER_CARGO_TOOLS:-$HOME/.cache/handover/cargo-tools}"
for pin in cargo-machete@0.9.2 cargo-deny@0.20.2; do
  name="${pin%@*}" version="${pin#*@}"
  if ! "$root/bin/$name" --version 2>/dev/null | grep -q "$version"; then
    echo "install-lint-tools: building $name $version into $root" >&2
    cargo install --quiet --locked --root "$root" --version "$version" "$name" >&2
  fi
done
echo "$root/bin"
