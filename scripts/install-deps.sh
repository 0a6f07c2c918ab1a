#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, and nothing
# that is already there. Safe to run again.
#   - sipp (Debian package sip-tester): the real user agents of the
#     end-to-end and interop tests.
#   - prometheus: the real server that scrapes /metrics in the metrics tests.
#   - rustfmt and clippy for the pinned toolchain (rust-toolchain.toml).
set -euo pipefail

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)

if ((${#need_apt[@]})); then
  echo "install-deps: installing ${need_apt[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
