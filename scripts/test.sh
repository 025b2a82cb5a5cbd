#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the system tools the tests use as independent
# oracles (openssl, curl, certutil from libnss3-tools for `cert trust`, Python's websockets for
# permessage-deflate, Pebble as a real ACME CA, nginx and sslscan for `tlsgate check`, headless
# Chromium for CORS, the Autobahn testsuite's fuzzing client for the hub), then formatting,
# lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
command -v pebble >/dev/null 2>&1 || missing+=(pebble)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# `tlsgate check` is graded against real nginx configs and cross-checked with sslscan.
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v sslscan >/dev/null 2>&1 || missing+=(sslscan)
# CORS is checked against a real browser: headless Chromium runs the page's fetch() calls.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# The proxy tests run a real permessage-deflate WebSocket backend and client (Python).
if ! python3 -c "import websockets" >/dev/null 2>&1; then
  echo "installing: python websockets"
  python3 -m pip install --quiet websockets \
    || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq python3-websockets; } \
    || sudo apt-get install -y -qq python3-websockets
fi

# The JWT tests mint their tokens with PyJWT (an independent implementation).
if ! python3 -c "import jwt, cryptography" >/dev/null 2>&1; then
  echo "installing: python pyjwt cryptography"
  python3 -m pip install --quiet pyjwt cryptography \
    || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq python3-jwt python3-cryptography; } \
    || sudo apt-get install -y -qq python3-jwt python3-cryptography
fi

# The hub's WebSocket layer is run against the Autobahn testsuite's fuzzing client (wstest on
# PyPy 2.7, cached under ~/.cache/tlsgate/autobahn; tests/it/hub_autobahn.rs).
./scripts/install-autobahn.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
