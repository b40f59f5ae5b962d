//! The benchmark behind `scripts/bench.sh`: bucketfs against the raw S3 API doing the same work
//! at its best, and against s3fs and rclone mount when they are installed, on one local server
//! (s3s-fs) in one run. Each figure is the median of `BENCH_RUNS` runs (3 by default), each
//! with a fresh mount, and so a cold page cache for the mount's files. Writes a markdown table and
//! JSON to `target/bench/`. Needs root (to mount).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bucketfs::local_s3::{client, sample_bytes};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";
const BUCKET: &str = "bench";
const MIB: u64 = 1024 * 1024;
const BIG: u64 = 1024 * MIB;
const PAR: u64 = 256 * MIB;
const CHUNK: u64 = 8 * MIB;

struct Work {
    name: &'static str,
    unit: &'static str,
    /// Higher is better (throughput) or lower is better (time, latency, memory).
    higher_is_better: bool,
}

const WORK: &[Work] = &[
    Work { name: "sequential read 1 GiB", unit: "MB/s", higher_is_better: true },
    Work { name: "sequential read 1 GiB, direct I/O", unit: "MB/s", higher_is_better: true },
    Work { name: "4 parallel readers", unit: "MB/s", higher_is_better: true },
    Work { name: "random 4 KiB read latency", unit: "ms", higher_is_better: false },
    Work { name: "random 256 KiB read latency", unit: "ms", higher_is_better: false },
    Work { name: "time to first byte", unit: "ms", higher_is_better: false },
    Work { name: "sequential write 1 GiB", unit: "MB/s", higher_is_better: true },
    Work { name: "ls -l of 5,000 objects, cold", unit: "s", higher_is_better: false },
    Work { name: "find over 20,000 objects", unit: "s", higher_is_better: false },
    Work { name: "create 1,000 small files", unit: "s", higher_is_better: false },
    Work { name: "peak RSS, 4 readers", unit: "MiB", higher_is_better: false },
];

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let work = tempfile::Builder::new().prefix("bucketfs-bench").tempdir().expect("temp dir");
    std::fs::create_dir_all(bucketfs_log().parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(bucketfs_log());
    let (mut server, endpoint) = start_server(&work.path().join("data"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let s3 = client(&endpoint, KEY, SECRET);
    eprintln!("seeding {endpoint} ...");
    runtime.block_on(seed(&s3));
    let source = work.path().join("source.bin");
    std::fs::write(&source, sample_bytes(BIG as usize, 99)).unwrap();

    // BENCH_TOOLS=bucketfs,s3fs,rclone picks the mounts; by default every one installed.
    let wanted = std::env::var("BENCH_TOOLS").unwrap_or_else(|_| "bucketfs,s3fs,rclone".into());
    let tools: Vec<&str> = ["bucketfs", "s3fs", "rclone"]
        .into_iter()
        .filter(|tool| wanted.split(',').any(|w| w == *tool) && (*tool == "bucketfs" || installed(tool)))
        .collect();
    // Runs take turns (raw, then each mount, then again) so that the server's drift over the
    // hour, which is large on a small shared machine, falls on every column alike.
    let mut samples: Vec<Vec<Vec<f64>>> = vec![Vec::new(); tools.len() + 1];
    let mut first_touch = Vec::new();
    for run in 1..=runs {
        first_touch.push(first_touch_secs());
        eprintln!("run {run} of {runs}: raw S3 ...");
        samples[0].push(runtime.block_on(raw(&s3)));
        eprintln!("raw: {:.2?}", samples[0].last().unwrap());
        for (column, tool) in tools.iter().enumerate() {
            eprintln!("run {run} of {runs}: {tool} ...");
            let mountpoint = work.path().join(format!("mnt-{tool}"));
            std::fs::create_dir_all(&mountpoint).unwrap();
            samples[column + 1].push(mounted(tool, &mountpoint, &endpoint, work.path(), &source, &s3, &runtime));
            eprintln!("{tool}: {:.2?}", samples[column + 1].last().unwrap());
        }
    }
    let names = std::iter::once("raw S3 API").chain(tools.iter().copied());
    let table: Vec<(String, Vec<f64>)> =
        names.zip(samples).map(|(name, runs)| (name.to_string(), median(&runs))).collect();
    let _ = server.kill();
    let _ = server.wait();
    report(&table, runs, &first_touch);
}

/// Seconds to write one byte into each page of 1 GiB of newly mapped memory. A page-cache fill
/// (a mount's read, a write's staging file) takes new pages in much the same way, without the
/// zeroing, and the raw API, which reuses its buffers, takes none: on a virtual machine that
/// hands freed memory back to its host, this is several times what it is elsewhere, and it
/// moves the mounts' ratios.
fn first_touch_secs() -> f64 {
    let mut memory = vec![0u8; BIG as usize];
    let start = Instant::now();
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&memory);
    secs(start)
}

/// Each figure's median over the runs that finished it (a failed step is NaN and was reported
/// when it failed), or NaN when none did.
fn median(samples: &[Vec<f64>]) -> Vec<f64> {
    (0..WORK.len())
        .map(|i| {
            let mut values: Vec<f64> = samples.iter().map(|s| s[i]).filter(|v| !v.is_nan()).collect();
            values.sort_by(|a, b| a.total_cmp(b));
            match values.len() {
                0 => f64::NAN,
                n if n % 2 == 0 => (values[n / 2 - 1] + values[n / 2]) / 2.0,
                n => values[n / 2],
            }
        })
        .collect()
}

/// Where the bucketfs mounts of the run log (appended to by every mount).
fn bucketfs_log() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/bucketfs.log")
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_server(root: &Path) -> (Child, String) {
    let exe = Path::new(env!("CARGO_BIN_EXE_bucketfs-local-s3"));
    let mut child = Command::new(exe)
        .args(["--root"])
        .arg(root)
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bucketfs-local-s3 (build it first: cargo build --release)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoint = line.trim().strip_prefix("endpoint ").expect("the server prints its endpoint").to_string();
    (child, endpoint)
}

async fn seed(s3: &aws_sdk_s3::Client) {
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let mut objects: Vec<(String, Vec<u8>)> = vec![("big.bin".into(), sample_bytes(BIG as usize, 1))];
    for n in 0..4 {
        objects.push((format!("par{n}.bin"), sample_bytes(PAR as usize, 10 + n)));
    }
    objects.extend((0..5000).map(|n| (format!("dir5000/f{n:05}"), vec![b'x'; 100])));
    objects.extend((0..20_000).map(|n| (format!("tree/d{}/e{}/f{n:05}", n % 20, n % 7), vec![b'y'; 10])));
    let mut uploads = tokio::task::JoinSet::new();
    for (key, body) in objects {
        let s3 = s3.clone();
        uploads.spawn(async move { s3.put_object().bucket(BUCKET).key(key).body(ByteStream::from(body)).send().await });
        while uploads.len() >= 32 {
            uploads.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(done) = uploads.join_next().await {
        done.unwrap().unwrap();
    }
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn mbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

/// The raw S3 API doing each piece of work at its best.
async fn raw(s3: &aws_sdk_s3::Client) -> Vec<f64> {
    settle();
    let start = Instant::now();
    parallel_get(s3, "big.bin", BIG, 8).await;
    let seq_read = mbps(BIG, secs(start));
    let start = Instant::now();
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let s3 = s3.clone();
            tokio::spawn(async move { parallel_get(&s3, &format!("par{n}.bin"), PAR, 4).await })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let par4 = mbps(4 * PAR, secs(start));
    settle();
    let rand4k = random_gets(s3, 4096).await;
    let rand256k = random_gets(s3, 256 * 1024).await;
    let start = Instant::now();
    get(s3, "par0.bin", 0..1).await;
    let ttfb = secs(start) * 1000.0;

    // Made before the clock starts, as the mounted run's source file is read into memory first.
    let body = Arc::new(sample_bytes(BIG as usize, 2));
    settle();
    let start = Instant::now();
    let id = s3.create_multipart_upload().bucket(BUCKET).key("raw-write.bin").send().await.unwrap();
    let id = id.upload_id().unwrap().to_string();
    let mut parts = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    for n in 0..(BIG / CHUNK) {
        let (s3, body, id) = (s3.clone(), body.clone(), id.clone());
        parts.spawn(async move {
            let slice = body[(n * CHUNK) as usize..((n + 1) * CHUNK) as usize].to_vec();
            let out = s3
                .upload_part()
                .bucket(BUCKET)
                .key("raw-write.bin")
                .upload_id(id)
                .part_number(n as i32 + 1)
                .body(ByteStream::from(slice))
                .send()
                .await
                .unwrap();
            CompletedPart::builder().part_number(n as i32 + 1).e_tag(out.e_tag().unwrap()).build()
        });
        while parts.len() >= 8 {
            done.push(parts.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(part) = parts.join_next().await {
        done.push(part.unwrap());
    }
    done.sort_by_key(|p| p.part_number());
    let upload = CompletedMultipartUpload::builder().set_parts(Some(done)).build();
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key("raw-write.bin")
        .upload_id(id)
        .multipart_upload(upload)
        .send()
        .await
        .unwrap();
    let seq_write = mbps(BIG, secs(start));

    settle();
    let start = Instant::now();
    list(s3, "dir5000/", Some("/")).await;
    let ls = secs(start);
    settle();
    let start = Instant::now();
    list(s3, "tree/", None).await;
    let find = secs(start);
    // New keys, as the mounts get: overwriting is slower on s3s-fs.
    for key in list_keys(s3, "raw-small/").await {
        s3.delete_object().bucket(BUCKET).key(key).send().await.unwrap();
    }
    settle();
    let start = Instant::now();
    for n in 0..1000 {
        s3.put_object()
            .bucket(BUCKET)
            .key(format!("raw-small/f{n}"))
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
    }
    // Timed as the mounts are: until a listing shows every file.
    assert_eq!(list(s3, "raw-small/f", None).await, 1000);
    let create = secs(start);
    // The direct-I/O line's denominator is the same raw read: raw GETs have no page cache.
    vec![seq_read, seq_read, par4, rand4k, rand256k, ttfb, seq_write, ls, find, create, 0.0]
}

async fn get(s3: &aws_sdk_s3::Client, key: &str, range: std::ops::Range<u64>) -> usize {
    let out = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .range(format!("bytes={}-{}", range.start, range.end - 1))
        .send()
        .await
        .unwrap();
    // Each piece counted as it arrives and dropped: no copy, which is the least a client can do.
    let mut body = out.body;
    let mut len = 0;
    while let Some(piece) = body.try_next().await.unwrap() {
        len += piece.len();
    }
    len
}

async fn parallel_get(s3: &aws_sdk_s3::Client, key: &str, size: u64, in_flight: usize) {
    let mut running = tokio::task::JoinSet::new();
    for n in 0..size / CHUNK {
        let (s3, key) = (s3.clone(), key.to_string());
        running.spawn(async move { get(&s3, &key, n * CHUNK..(n + 1) * CHUNK).await });
        while running.len() >= in_flight {
            running.join_next().await.unwrap().unwrap();
        }
    }
    while running.join_next().await.is_some() {}
}

async fn random_gets(s3: &aws_sdk_s3::Client, len: u64) -> f64 {
    let start = Instant::now();
    for n in 0..200u64 {
        let offset = (n * 7_919_993 * 13) % (BIG - len);
        get(s3, "big.bin", offset..offset + len).await;
    }
    secs(start) * 1000.0 / 200.0
}

async fn list(s3: &aws_sdk_s3::Client, prefix: &str, delimiter: Option<&str>) -> usize {
    let (mut count, mut token) = (0, None);
    loop {
        let out = s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        count += out.contents().len() + out.common_prefixes().len();
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return count;
        }
    }
}

/// Writes back what the last step left dirty, so that it does not slow the next. Called before
/// every step, raw or mounted. The page cache is not dropped: a fresh mount starts with none of
/// its own, and dropping the machine's would leave the server reading from disk for the mounts
/// while the raw runs, made without a mount, read from memory.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Mounts `tool`, runs every piece of work through the kernel, unmounts.
fn mounted(
    tool: &str,
    mountpoint: &Path,
    endpoint: &str,
    work: &Path,
    source: &Path,
    s3: &aws_sdk_s3::Client,
    runtime: &tokio::runtime::Runtime,
) -> Vec<f64> {
    let remount = |direct_io: bool| {
        unmount(mountpoint);
        settle();
        mount(tool, mountpoint, endpoint, work, direct_io)
    };
    let daemon = remount(false);
    let start = Instant::now();
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let path = mountpoint.join(format!("par{n}.bin"));
            std::thread::spawn(move || read_all(&path))
        })
        .collect();
    let bytes: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let par4 = mbps(bytes, secs(start));
    let rss = peak_rss_mib(daemon);

    remount(false);
    let start = Instant::now();
    let bytes = read_all(&mountpoint.join("big.bin"));
    let seq_read = mbps(bytes, secs(start));

    let seq_read_direct = if has_direct_io(tool) {
        remount(true);
        let start = Instant::now();
        let bytes = read_all(&mountpoint.join("big.bin"));
        mbps(bytes, secs(start))
    } else {
        NOT_MEASURED
    };

    remount(false);
    let file = std::fs::File::open(mountpoint.join("big.bin")).unwrap();
    let rand = |len: u64| {
        let mut buf = vec![0; len as usize];
        let start = Instant::now();
        for n in 0..200u64 {
            file.read_exact_at(&mut buf, (n * 7_919_993 * 17) % (BIG - len)).unwrap();
        }
        secs(start) * 1000.0 / 200.0
    };
    let rand4k = rand(4096);
    let rand256k = rand(256 * 1024);
    drop(file);
    let start = Instant::now();
    let mut first = [0u8; 1];
    std::fs::File::open(mountpoint.join("par1.bin")).unwrap().read_exact(&mut first).unwrap();
    let ttfb = secs(start) * 1000.0;

    // The clock stops when a HEAD shows the whole size, so the object an earlier run or tool
    // wrote must be gone first: a mount that answers fsync before uploading would else be timed
    // by its local disk.
    runtime.block_on(s3.delete_object().bucket(BUCKET).key("written.bin").send()).unwrap();
    remount(false);
    // The source is read once before the clock starts, so that it comes from memory: the figure
    // is the mount's, not the local disk's.
    read_all(source);
    let target = mountpoint.join("written.bin");
    let start = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "conv=fsync", "status=none"])
        .status()
        .unwrap();
    assert!(status.success(), "{tool}: dd failed");
    while runtime
        .block_on(s3.head_object().bucket(BUCKET).key("written.bin").send())
        .ok()
        .and_then(|h| h.content_length())
        != Some(BIG as i64)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seq_write = mbps(BIG, secs(start));

    remount(false);
    let ls = timed_listing(tool, mountpoint, Command::new("ls").arg("-l").arg(mountpoint.join("dir5000")), 5001);
    remount(false);
    let find =
        timed_listing(tool, mountpoint, Command::new("find").arg(mountpoint.join("tree")).args(["-type", "f"]), 20_000);

    remount(false);
    let dir = mountpoint.join(format!("small-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    runtime.block_on(async {
        let prefix = format!("small-{}/", std::process::id());
        for key in list_keys(s3, &prefix).await {
            s3.delete_object().bucket(BUCKET).key(key).send().await.unwrap();
        }
    });
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("{tool}: cannot make the directory for the small files: {e}");
    }
    let start = Instant::now();
    // A mount that hangs must not hang the benchmark: the writer gets a time limit, like listings.
    let (done, finished) = std::sync::mpsc::channel();
    let writer_dir = dir.clone();
    std::thread::spawn(move || {
        let written = (0..1000).all(|n| std::fs::write(writer_dir.join(format!("f{n}")), "x").is_ok());
        let _ = done.send(written);
    });
    // The files alone: the directory's marker shares the prefix.
    let files = format!("small-{}/f", std::process::id());
    let create = match within_limit(mountpoint, &finished) {
        true => loop {
            if runtime.block_on(list(s3, &files, None)) >= 1000 {
                break secs(start);
            }
            if start.elapsed() > Duration::from_secs(240) {
                eprintln!("{tool}: the 1,000 files did not all reach S3 in 240 s");
                break f64::NAN;
            }
            std::thread::sleep(Duration::from_millis(20));
        },
        false => {
            eprintln!("{tool}: creating 1,000 files did not finish in {LIMIT:?}");
            f64::NAN
        }
    };
    unmount(mountpoint);
    vec![seq_read, seq_read_direct, par4, rand4k, rand256k, ttfb, seq_write, ls, find, create, rss]
}

/// How long a listing or the small-file writer may take before the peer is taken as hung.
const LIMIT: Duration = Duration::from_secs(60);

/// Seconds a listing command takes, or NaN when it does not finish within [`LIMIT`] or lists the
/// wrong number of lines (reported as "did not finish").
fn timed_listing(tool: &str, mountpoint: &Path, command: &mut Command, lines: usize) -> f64 {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let start = Instant::now();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = Command::new("timeout").arg(LIMIT.as_secs().to_string()).arg(program).args(args).output();
        let _ = done.send(out.unwrap());
    });
    let out = within_limit(mountpoint, &finished);
    let elapsed = secs(start);
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    if out.status.success() && listed == lines {
        elapsed
    } else {
        eprintln!("{tool}: listing gave {listed} of {lines} lines in {elapsed:.0} s (limit {LIMIT:?})");
        f64::NAN
    }
}

/// Waits for `finished`. Past [`LIMIT`] the mount's FUSE connection is aborted: a process whose
/// request a hung daemon holds cannot even be killed until the daemon answers, and s3fs answers
/// about a minute later, if ever.
fn within_limit<T>(mountpoint: &Path, finished: &std::sync::mpsc::Receiver<T>) -> T {
    finished.recv_timeout(LIMIT + Duration::from_secs(2)).unwrap_or_else(|_| {
        abort_fuse_connection(mountpoint);
        finished.recv().unwrap()
    })
}

/// Ends every request of the FUSE mount at `mountpoint` with an error; the daemon loses its
/// connection and the mount point is left for `unmount` to detach.
fn abort_fuse_connection(mountpoint: &Path) {
    let wanted = mountpoint.to_string_lossy();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 3 is the device, MAJOR:MINOR; a FUSE connection is named by the device number, which
    // is the minor for the anonymous devices FUSE mounts get.
    let minor = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields.get(4) == Some(&wanted.as_ref()))
        .find_map(|fields| fields[2].split(':').nth(1).map(str::to_string));
    match minor {
        Some(minor) => {
            eprintln!("aborting the hung FUSE connection {minor} of {}", mountpoint.display());
            let connections = Path::new("/sys/fs/fuse/connections");
            if !connections.join(&minor).exists() {
                // The control filesystem is not mounted on every machine.
                let _ = Command::new("mount").args(["-t", "fusectl", "fusectl"]).arg(connections).status();
            }
            let _ = std::fs::write(connections.join(&minor).join("abort"), "1");
        }
        None => eprintln!("no FUSE connection found for {}", mountpoint.display()),
    }
}

async fn list_keys(s3: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let out = s3.list_objects_v2().bucket(BUCKET).prefix(prefix).send().await.unwrap();
    out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
}

fn read_all(path: &Path) -> u64 {
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; MIB as usize];
    let mut total = 0;
    loop {
        match file.read(&mut buf).unwrap() {
            0 => return total,
            n => total += n as u64,
        }
    }
}

/// A figure for work a tool has no way to do: shown as "-".
const NOT_MEASURED: f64 = -1.0;

/// Whether `tool` has an option to read past the page cache: rclone's `--direct-io` is newer
/// than Debian's rclone (1.60).
fn has_direct_io(tool: &str) -> bool {
    tool != "rclone"
}

/// Mounts, with each tool's own option for reading past the page cache when `direct_io`, and
/// returns the daemon's pid.
fn mount(tool: &str, mountpoint: &Path, endpoint: &str, work: &Path, direct_io: bool) -> u32 {
    let status = match tool {
        "bucketfs" => Command::new(env!("CARGO_BIN_EXE_bucketfs"))
            .args(["mount", &format!("s3://{BUCKET}")])
            .arg(mountpoint)
            .args(["--endpoint-url", endpoint, "--cache-dir"])
            .arg(work.join("cache"))
            // Kept with the results, so that a step that fails can be explained.
            .arg("--log-file")
            .arg(bucketfs_log())
            .args(direct_io.then_some("--direct-io"))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
        "s3fs" => {
            let passwd = work.join("s3fs-passwd");
            std::fs::write(&passwd, format!("{KEY}:{SECRET}\n")).unwrap();
            let _ = Command::new("chmod").arg("600").arg(&passwd).status();
            Command::new("s3fs")
                .arg(BUCKET)
                .arg(mountpoint)
                .args(["-o", &format!("url={endpoint}"), "-o", "use_path_request_style", "-o"])
                .arg(format!("passwd_file={}", passwd.display()))
                .args(direct_io.then_some(["-o", "direct_io"]).into_iter().flatten())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        }
        _ => Command::new("rclone")
            .args(["mount", &format!("bench:{BUCKET}")])
            .arg(mountpoint)
            .args(["--daemon", "--vfs-cache-mode", "writes", "--cache-dir"])
            .arg(work.join("rclone-cache"))
            .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
            .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
            .env("RCLONE_CONFIG_BENCH_ENDPOINT", endpoint)
            .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", KEY)
            .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
    };
    assert!(status.is_ok_and(|s| s.success()), "{tool} did not mount");
    let start = Instant::now();
    while !is_mounted(mountpoint) {
        assert!(start.elapsed() < Duration::from_secs(30), "{tool} did not mount");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon_pid(mountpoint).unwrap_or(0)
}

fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split(' ').nth(1) == Some(&path))
}

fn unmount(path: &Path) {
    if is_mounted(path) {
        let unmounted = Command::new("umount").arg(path).status().is_ok_and(|s| s.success());
        if !unmounted {
            // A mount that hung (a peer that stopped answering) is detached instead.
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The process whose command line names the mount point.
fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    let wanted = mountpoint.to_string_lossy().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains(&wanted) && !cmdline.starts_with("umount")).then_some(pid)
    })
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn report(table: &[(String, Vec<f64>)], runs: usize, first_touch: &[f64]) {
    let raw = &table[0].1;
    let mut markdown = String::from("| work | raw S3 API |");
    for (tool, _) in &table[1..] {
        markdown += &format!(" {tool} | ratio |");
    }
    markdown += "\n|---|---|";
    markdown += &"---|---|".repeat(table.len() - 1);
    markdown += "\n";
    let mut json = Vec::new();
    for (i, work) in WORK.iter().enumerate() {
        let raw_cell = if raw[i] > 0.0 { format!("{:.1} {}", raw[i], work.unit) } else { "-".into() };
        markdown += &format!("| {} | {raw_cell} |", work.name);
        for (tool, figures) in &table[1..] {
            let ratio = match (raw[i] > 0.0, work.higher_is_better) {
                (false, _) => None,
                (true, true) => Some(figures[i] / raw[i]),
                (true, false) => Some(raw[i] / figures[i]),
            };
            let value = if figures[i] == NOT_MEASURED {
                "-".to_string()
            } else if figures[i].is_nan() {
                "did not finish".to_string()
            } else {
                format!("{:.1} {}", figures[i], work.unit)
            };
            let ratio = ratio.filter(|r| r.is_finite() && figures[i] != NOT_MEASURED);
            markdown += &format!(" {value} | {} |", ratio.map_or("-".into(), |r| format!("{r:.2}")));
            let value = if figures[i].is_nan() || figures[i] == NOT_MEASURED {
                "null".to_string()
            } else {
                format!("{:.3}", figures[i])
            };
            json.push(format!(
                "{{\"tool\":\"{tool}\",\"work\":\"{}\",\"value\":{value},\"unit\":\"{}\",\"raw\":{:.3},\"ratio\":{}}}",
                work.name,
                work.unit,
                raw[i],
                ratio.map_or("null".into(), |r| format!("{r:.3}"))
            ));
        }
        markdown += "\n";
    }
    let touches: Vec<String> = first_touch.iter().map(|s| format!("{s:.2}")).collect();
    json.push(format!(
        "{{\"tool\":\"machine\",\"work\":\"first touch of 1 GiB\",\"values\":[{}],\"unit\":\"s\"}}",
        touches.join(",")
    ));
    let machine = format!(
        "{} cores, {} GiB, {}; s3s-fs on 127.0.0.1; median of {runs} runs; first touch of 1 GiB of new memory {} s, run by run. Ratios: share of raw throughput, or raw time / mount time (higher is better for both); for latency, raw / mount.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024 / 1024),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        touches.join(", ")
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), format!("{markdown}\n{machine}\n")).unwrap();
    std::fs::write(out.join("results.json"), format!("[\n{}\n]\n", json.join(",\n"))).unwrap();
    println!("{markdown}\n{machine}\n\nwritten to {}", out.display());
}
