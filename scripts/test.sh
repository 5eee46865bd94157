#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, and the whole test suite (unit, property and
# integration tests; the integration tests start the real server on loopback ports).
# Usage: scripts/test.sh            (from anywhere inside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain components the checks need (no-ops when present).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

# The fuzz targets (fuzz/, their own workspace) must keep compiling; running them needs nightly
# and cargo-fuzz (`cargo fuzz run esl_decode`), which CI does not have.
echo "== fuzz targets: cargo check"
(cd fuzz && cargo check --bins --locked)

# --all-targets also builds the benches and runs each once in criterion's test mode.
echo "== cargo test"
cargo test --all-targets --locked
echo "all checks passed"
