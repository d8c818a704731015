#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, and end-to-end tests that start the
# real binaries on loopback. Installs what the tests need (Node packages for the Taquito
# interop test) so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if [ ! -d tests/taquito/node_modules ]; then
    echo "== installing the Taquito interop test's Node packages"
    npm ci --prefix tests/taquito --no-audit --no-fund --loglevel=error
  fi
else
  echo "!! node/npm not found: the Taquito interop test will fail (set SKIP_NODE_TESTS=1 to skip it)" >&2
fi

# The end-to-end tests run the real signer-gateway binary: build every binary first.
cargo build --workspace --bins

# Two cores: more parallel tests would only make the timing-sensitive ones slower.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --test-threads 2 --no-fail-fast "$@"
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@" -- --test-threads 2
fi
