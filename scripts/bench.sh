#!/usr/bin/env bash
# The performance benchmark: starts a local S3 server (s3s-fs), seeds it, and measures bucketfs
# against the raw S3 API at its best and against s3fs and rclone mount (installed here from
# Debian unless BENCH_NO_PEERS=1), each figure the median of BENCH_RUNS runs (default 3) with a
# fresh mount, and so a cold page cache for the mount's files. Prints a markdown table and
# writes it, with JSON, to target/bench/. Needs root. Never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${BENCH_NO_PEERS:-}" ]; then
    missing=()
    command -v s3fs >/dev/null || missing+=(s3fs)
    command -v rclone >/dev/null || missing+=(rclone)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
unset AWS_CA_BUNDLE
cargo bench --locked --bench mount
