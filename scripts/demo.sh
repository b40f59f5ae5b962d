#!/usr/bin/env bash
# The bucketfs demo: builds bucketfs, starts a local S3 server filled with sample data (nested
# folders, a 120 MiB file, a folder of 3,000 small files), mounts the bucket `demo` and the whole
# account, and shows ordinary shell tools working on them. Running it again starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

work="${BUCKETFS_DEMO_DIR:-/tmp/bucketfs-demo}"
bucket_mnt="$work/demo"
account_mnt="$work/account"

for mnt in "$bucket_mnt" "$account_mnt"; do
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" || umount -l "$mnt"; fi
done
if [ -f "$work/server.pid" ]; then kill "$(cat "$work/server.pid")" 2>/dev/null || true; fi
rm -rf "$work"
mkdir -p "$bucket_mnt" "$account_mnt"

echo "== building bucketfs (release)"
cargo build --release --locked --quiet

export AWS_ACCESS_KEY_ID=bucketfs-demo AWS_SECRET_ACCESS_KEY=bucketfs-demo-secret AWS_REGION=us-east-1
unset AWS_CA_BUNDLE AWS_PROFILE

echo "== starting the local S3 server and uploading sample data"
setsid target/release/bucketfs-local-s3 --root "$work/data" --seed-demo >"$work/server.out" 2>&1 </dev/null &
echo $! >"$work/server.pid"
for _ in $(seq 300); do
    grep -q '^endpoint ' "$work/server.out" && break
    kill -0 "$(cat "$work/server.pid")" 2>/dev/null || { cat "$work/server.out"; exit 1; }
    sleep 0.5
done
endpoint=$(awk '/^endpoint /{print $2}' "$work/server.out")
[ -n "$endpoint" ] || { echo "the local S3 server did not start"; cat "$work/server.out"; exit 1; }
echo "   local S3 at $endpoint"

run() { echo; echo "\$ $*"; eval "$@"; }

target/release/bucketfs mount s3://demo "$bucket_mnt" --endpoint-url "$endpoint" --log-file "$work/bucketfs.log"
target/release/bucketfs mount s3:// "$account_mnt" --endpoint-url "$endpoint" --log-file "$work/bucketfs-account.log"

run ls "$account_mnt"
run ls -l "$bucket_mnt"
run ls -l "$bucket_mnt/photos/2019"
run cat "$bucket_mnt/README.txt"
run cat "$bucket_mnt/docs/reports/2024-q1.csv"
run "ls $bucket_mnt/logs | wc -l"
run "find $bucket_mnt -type f | wc -l"
run du -sh "$bucket_mnt"
run "time cp $bucket_mnt/big/dataset.bin $work/dataset.bin"
run cmp "$bucket_mnt/big/dataset.bin" "$work/data/demo/big/dataset.bin" "&& echo identical"
run "grep -c 'log line' $bucket_mnt/logs/app-0042.log"
rm -f "$work/dataset.bin"

cat <<EOT

The mounts stay up for you to try:
  $bucket_mnt   (s3://demo)
  $account_mnt  (s3://, every bucket)
When done:
  umount $bucket_mnt $account_mnt
  kill \$(cat $work/server.pid)
EOT
