#!/usr/bin/env bash
# Installs what bucketfs needs on a fresh Debian machine: FUSE 3 (fusermount3, for non-root
# mounts), util-linux (unshare, used by a test) and, with --tests, what the tests drive (rsync,
# git) and moto, the AWS-like local S3 server. Safe to run again: it installs only what is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v unshare >/dev/null || missing+=(util-linux)
if [ "${1:-}" = "--tests" ]; then
    command -v rsync >/dev/null || missing+=(rsync)
    command -v git >/dev/null || missing+=(git)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || echo "setup: warning: /dev/fuse is missing; load the module with 'modprobe fuse'" >&2

if [ "${1:-}" = "--tests" ]; then
    python="${BUCKETFS_PYTHON:-python3}"
    if ! "$python" -c 'import moto.server' 2>/dev/null; then
        echo "setup: installing moto[server] for $python"
        "$python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
    fi
fi
