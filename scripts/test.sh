#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that mount bucketfs through the
# kernel against local S3 servers (s3s-fs in the test process, moto as a child). Needs root or
# fusermount3, and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
# An inherited CA bundle must not change how the tests' own clients connect.
unset AWS_CA_BUNDLE
cargo test --locked "$@"
