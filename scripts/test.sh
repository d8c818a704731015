#!/usr/bin/env bash
# Runs every test of the workspace: unit, property and end-to-end tests that start the real
# binaries on loopback (gateway, tunnel client, test signers, stock OpenSSH, Taquito), then the
# local demo, which asserts what it shows. Installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if command -v npm >/dev/null 2>&1 && [ ! -d tests/taquito/node_modules/@taquito/signer ]; then
  echo "== installing the Taquito interop test's Node packages"
  npm ci --prefix tests/taquito --no-audit --no-fund --loglevel=error
fi

# The end-to-end tests run the real binaries: build them first.
cargo build --workspace --bins

# Two cores: more parallel tests would only make the timing-sensitive ones slower.
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so nextest's summary is the last word.
  cargo test --workspace --doc -q
  cargo nextest run --workspace --test-threads 2 --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@" -- --test-threads 2
fi

echo "== local demo (deploy/local/demo.sh)"
bash deploy/local/demo.sh
