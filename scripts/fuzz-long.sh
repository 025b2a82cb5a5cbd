#!/usr/bin/env bash
# Long property-test hunt over the hand-written parsers (docs/LIFECYCLE.md). CI runs the same
# tests with a few thousand cases each (`cargo test --lib fuzz`); this runs many more.
#   scripts/fuzz-long.sh [CASES] [FILTER]    default: 1000000 cases per target, every target
# A failure is shrunk and its seed written to proptest-regressions/ (commit it, and a fix).
# A release build is much faster per case; CARGO_PROFILE_TEST_OPT_LEVEL=3 would do as well.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-1000000}"
filter="${2:-fuzz}"
export PROPTEST_CASES="$cases"
exec cargo test --release --lib "$filter" -- --test-threads="${FUZZ_THREADS:-2}"
