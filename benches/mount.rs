//! The benchmark behind `scripts/bench.sh`: bucketfs against the raw S3 API doing the same work
//! at its best, and against s3fs and rclone mount when they are installed, on one local server
//! (s3s-fs) in one run. Each figure is the median of `BENCH_RUNS` runs (3 by default), each
//! with a fresh mount, and so a cold page cache for the mount's files. Writes a markdown table and
//! JSON to `target/bench/`. Needs root (to mount).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    step: Step,
}

/// The benchmark's steps. Each is timed on the raw API and then on every mount before the next
/// step begins, so that a ratio compares figures taken a minute or two apart: the server's speed
/// drifts by half over the quarter hour a whole pass takes on this kind of machine.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Step {
    Parallel,
    Sequential,
    Direct,
    Random,
    Write,
    Listing,
    Find,
    Create,
}

const STEPS: [Step; 8] = [
    Step::Parallel,
    Step::Sequential,
    Step::Direct,
    Step::Random,
    Step::Write,
    Step::Listing,
    Step::Find,
    Step::Create,
];

/// The table's rows, in order; a step gives the figures of its rows in this order.
const WORK: &[Work] = &[
    Work { name: "sequential read 1 GiB", unit: "MB/s", higher_is_better: true, step: Step::Sequential },
    Work {
        name: "sequential read: client CPU per GiB",
        unit: "CPU-s",
        higher_is_better: false,
        step: Step::Sequential,
    },
    Work {
        name: "sequential read: server CPU per GiB",
        unit: "CPU-s",
        higher_is_better: false,
        step: Step::Sequential,
    },
    Work { name: "sequential read 1 GiB, direct I/O", unit: "MB/s", higher_is_better: true, step: Step::Direct },
    Work { name: "4 parallel readers", unit: "MB/s", higher_is_better: true, step: Step::Parallel },
    Work { name: "4 readers: client CPU per GiB", unit: "CPU-s", higher_is_better: false, step: Step::Parallel },
    Work { name: "4 readers: server CPU per GiB", unit: "CPU-s", higher_is_better: false, step: Step::Parallel },
    Work { name: "peak RSS, 4 readers", unit: "MiB", higher_is_better: false, step: Step::Parallel },
    Work { name: "random 4 KiB read latency", unit: "ms", higher_is_better: false, step: Step::Random },
    Work { name: "random 256 KiB read latency", unit: "ms", higher_is_better: false, step: Step::Random },
    Work { name: "time to first byte", unit: "ms", higher_is_better: false, step: Step::Random },
    Work { name: "sequential write 1 GiB", unit: "MB/s", higher_is_better: true, step: Step::Write },
    Work { name: "ls -l of 5,000 objects, cold", unit: "s", higher_is_better: false, step: Step::Listing },
    Work { name: "find over 20,000 objects", unit: "s", higher_is_better: false, step: Step::Find },
    Work { name: "create 1,000 small files", unit: "s", higher_is_better: false, step: Step::Create },
];

/// What every step needs: the server, the raw client, and where mounts and files go.
struct Bench {
    endpoint: String,
    server: u32,
    work: PathBuf,
    /// The 1 GiB file the mounts' write step copies.
    source: PathBuf,
    s3: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let work = tempfile::Builder::new().prefix("bucketfs-bench").tempdir().expect("temp dir");
    std::fs::create_dir_all(bucketfs_log().parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(bucketfs_log());
    let (mut server, endpoint) = start_server(&work.path().join("data"));
    let bench = Bench {
        s3: client(&endpoint, KEY, SECRET),
        server: server.id(),
        endpoint,
        work: work.path().to_path_buf(),
        source: work.path().join("source.bin"),
        runtime: tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap(),
    };
    eprintln!("seeding {} ...", bench.endpoint);
    bench.runtime.block_on(seed(&bench.s3));
    std::fs::write(&bench.source, sample_bytes(BIG as usize, 99)).unwrap();

    // BENCH_TOOLS=bucketfs,s3fs,rclone picks the mounts; by default every one installed.
    let wanted = std::env::var("BENCH_TOOLS").unwrap_or_else(|_| "bucketfs,s3fs,rclone".into());
    let tools: Vec<&str> = ["bucketfs", "s3fs", "rclone"]
        .into_iter()
        .filter(|tool| wanted.split(',').any(|w| w == *tool) && (*tool == "bucketfs" || installed(tool)))
        .collect();
    // mounts[tool][run][row], and raws[tool][run][row]: the raw figure taken just before it.
    let mut mounts: Vec<Vec<Vec<f64>>> = vec![Vec::new(); tools.len()];
    let mut raws = mounts.clone();
    let mut first_touch = Vec::new();
    for run in 1..=runs {
        first_touch.push(first_touch_secs());
        for column in mounts.iter_mut().chain(&mut raws) {
            column.push(vec![f64::NAN; WORK.len()]);
        }
        for step in STEPS {
            eprintln!("run {run} of {runs}: {step:?}");
            // Each run starts the mounts from the next tool, so that none always goes first.
            for (column, tool) in tools.iter().enumerate().cycle().skip(run - 1).take(tools.len()) {
                // The server's speed changes by up to a factor of two within a minute here, so
                // each mount is measured against raw figures taken just before it.
                let raw_figures = if step == Step::Direct && !has_direct_io(tool) {
                    vec![NOT_MEASURED]
                } else {
                    bench.runtime.block_on(raw(step, &bench.s3, bench.server))
                };
                record(&mut raws[column][run - 1], step, &format!("raw, before {tool}"), raw_figures);
                record(&mut mounts[column][run - 1], step, tool, mounted(step, tool, &bench));
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    report(&tools, &raws, &mounts, &first_touch);
}

/// Puts one step's figures into their rows of a run's figures.
fn record(run: &mut [f64], step: Step, column: &str, figures: Vec<f64>) {
    eprintln!("  {column}: {figures:.2?}");
    let rows: Vec<usize> = (0..WORK.len()).filter(|&row| WORK[row].step == step).collect();
    assert_eq!(rows.len(), figures.len(), "{step:?} gives one figure per row");
    for (row, figure) in rows.into_iter().zip(figures) {
        run[row] = figure;
    }
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

/// Each row's median over the runs that finished it.
fn median(samples: &[Vec<f64>]) -> Vec<f64> {
    (0..WORK.len()).map(|row| median_of(samples.iter().map(|run| run[row]))).collect()
}

/// The median of the figures that are numbers (a failed step is NaN and was reported when it
/// failed), or NaN when none are.
fn median_of(figures: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = figures.filter(|v| !v.is_nan()).collect();
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        n => values[n / 2],
    }
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

/// The raw S3 API doing one step's work at its best.
async fn raw(step: Step, s3: &aws_sdk_s3::Client, server: u32) -> Vec<f64> {
    settle();
    match step {
        // The direct-I/O line's denominator is the same raw read: raw GETs have no page cache.
        Step::Sequential | Step::Direct => {
            let cpu = CpuUse::start(&[], server);
            let start = Instant::now();
            parallel_get(s3, "big.bin", BIG, 8).await;
            sequential_figures(step, mbps(BIG, secs(start)), cpu.per_gib(BIG))
        }
        Step::Parallel => {
            let cpu = CpuUse::start(&[], server);
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
            let throughput = mbps(4 * PAR, secs(start));
            let [client, server] = cpu.per_gib(4 * PAR);
            vec![throughput, client, server, 0.0]
        }
        Step::Random => {
            let rand4k = random_gets(s3, 4096).await;
            let rand256k = random_gets(s3, 256 * 1024).await;
            let start = Instant::now();
            get(s3, "par0.bin", 0..1).await;
            vec![rand4k, rand256k, secs(start) * 1000.0]
        }
        Step::Write => vec![raw_write(s3).await],
        Step::Listing => {
            let start = Instant::now();
            list(s3, "dir5000/", Some("/")).await;
            vec![secs(start)]
        }
        Step::Find => {
            let start = Instant::now();
            list(s3, "tree/", None).await;
            vec![secs(start)]
        }
        Step::Create => vec![raw_create(s3).await],
    }
}

/// MB/s of a 1 GiB multipart upload, 8 parts in flight, each part a slice of one buffer (no copy)
/// sent with the CRC32 the SDK computes and no SHA-256 of the payload: the cheapest way the SDK
/// has to send it with every byte checked.
async fn raw_write(s3: &aws_sdk_s3::Client) -> f64 {
    // Made before the clock starts, as the mounted run's source file is read into memory first.
    let body = bytes::Bytes::from(sample_bytes(BIG as usize, 2));
    // A new key, as the mounts get.
    s3.delete_object().bucket(BUCKET).key("raw-write.bin").send().await.unwrap();
    settle();
    let start = Instant::now();
    let id = s3.create_multipart_upload().bucket(BUCKET).key("raw-write.bin").send().await.unwrap();
    let id = id.upload_id().unwrap().to_string();
    let mut parts = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    for n in 0..(BIG / CHUNK) {
        let (s3, body, id) = (s3.clone(), body.clone(), id.clone());
        parts.spawn(async move {
            let slice = body.slice((n * CHUNK) as usize..((n + 1) * CHUNK) as usize);
            let out = s3
                .upload_part()
                .bucket(BUCKET)
                .key("raw-write.bin")
                .upload_id(id)
                .part_number(n as i32 + 1)
                .body(ByteStream::from(slice))
                .customize()
                .disable_payload_signing()
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
    mbps(BIG, secs(start))
}

/// Seconds for 1,000 one-byte PUTs in turn, until a listing shows them all.
async fn raw_create(s3: &aws_sdk_s3::Client) -> f64 {
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
    assert_eq!(list(s3, "raw-small/f", None).await, 1000);
    secs(start)
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

/// Mounts `tool` afresh, runs one step's work through the kernel, unmounts.
fn mounted(step: Step, tool: &str, bench: &Bench) -> Vec<f64> {
    if step == Step::Direct && !has_direct_io(tool) {
        return vec![NOT_MEASURED];
    }
    let mountpoint = bench.work.join(format!("mnt-{tool}"));
    std::fs::create_dir_all(&mountpoint).unwrap();
    unmount(&mountpoint);
    if step == Step::Write {
        // The clock stops when a HEAD shows the whole size, so the object an earlier run or tool
        // wrote must be gone first: a mount that answers fsync before uploading would else be
        // timed by its local disk.
        bench.runtime.block_on(bench.s3.delete_object().bucket(BUCKET).key("written.bin").send()).unwrap();
    }
    settle();
    let daemon = mount(tool, &mountpoint, &bench.endpoint, &bench.work, step == Step::Direct);
    let figures = match step {
        Step::Parallel => {
            let cpu = CpuUse::start(&[daemon], bench.server);
            let start = Instant::now();
            let readers: Vec<_> = (0..4)
                .map(|n| {
                    let path = mountpoint.join(format!("par{n}.bin"));
                    std::thread::spawn(move || read_all(&path))
                })
                .collect();
            let bytes: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
            let throughput = mbps(bytes, secs(start));
            let [client, server] = cpu.per_gib(bytes);
            vec![throughput, client, server, peak_rss_mib(daemon)]
        }
        Step::Sequential | Step::Direct => {
            let cpu = CpuUse::start(&[daemon], bench.server);
            let start = Instant::now();
            let bytes = read_all(&mountpoint.join("big.bin"));
            sequential_figures(step, mbps(bytes, secs(start)), cpu.per_gib(bytes))
        }
        Step::Random => mounted_random(&mountpoint),
        Step::Write => vec![mounted_write(tool, &mountpoint, bench)],
        Step::Listing => {
            let mut ls = Command::new("ls");
            vec![timed_listing(tool, &mountpoint, ls.arg("-l").arg(mountpoint.join("dir5000")), 5001)]
        }
        Step::Find => {
            let mut find = Command::new("find");
            vec![timed_listing(tool, &mountpoint, find.arg(mountpoint.join("tree")).args(["-type", "f"]), 20_000)]
        }
        Step::Create => vec![mounted_create(tool, &mountpoint, bench)],
    };
    unmount(&mountpoint);
    figures
}

/// Mean ms of 200 reads of 4 KiB and of 256 KiB at scattered offsets, then of a first byte.
fn mounted_random(mountpoint: &Path) -> Vec<f64> {
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
    vec![rand4k, rand256k, secs(start) * 1000.0]
}

/// MB/s of `dd conv=fsync` of 1 GiB onto the mount, until a raw HEAD shows the whole size.
fn mounted_write(tool: &str, mountpoint: &Path, bench: &Bench) -> f64 {
    // The source is read once before the clock starts, so that it comes from memory: the figure
    // is the mount's, not the local disk's.
    read_all(&bench.source);
    let target = mountpoint.join("written.bin");
    let start = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", bench.source.display()))
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "conv=fsync", "status=none"])
        .status()
        .unwrap();
    assert!(status.success(), "{tool}: dd failed");
    let uploaded_size = || {
        let head = bench.s3.head_object().bucket(BUCKET).key("written.bin").send();
        bench.runtime.block_on(head).ok().and_then(|h| h.content_length())
    };
    let seconds =
        seconds_until_s3_shows(start, &format!("{tool}: the written file"), || uploaded_size() == Some(BIG as i64));
    mbps(BIG, seconds)
}

/// Seconds to write 1,000 one-byte files into a new directory, until a raw listing shows them all.
fn mounted_create(tool: &str, mountpoint: &Path, bench: &Bench) -> f64 {
    let dir = mountpoint.join(format!("small-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = format!("small-{}/", std::process::id());
    bench.runtime.block_on(async {
        for key in list_keys(&bench.s3, &prefix).await {
            bench.s3.delete_object().bucket(BUCKET).key(key).send().await.unwrap();
        }
    });
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("{tool}: cannot make the directory for the small files: {e}");
    }
    let start = Instant::now();
    // A mount that hangs must not hang the benchmark: the writer gets a time limit, like listings.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let written = (0..1000).all(|n| std::fs::write(dir.join(format!("f{n}")), "x").is_ok());
        let _ = done.send(written);
    });
    if !within_limit(mountpoint, &finished) {
        eprintln!("{tool}: creating 1,000 files did not finish in {LIMIT:?}");
        return f64::NAN;
    }
    // The files alone: the directory's marker shares the prefix.
    let files = format!("{prefix}f");
    seconds_until_s3_shows(start, &format!("{tool}: the 1,000 files"), || {
        bench.runtime.block_on(list(&bench.s3, &files, None)) >= 1000
    })
}

/// Seconds since `start` once `shown` says S3 has what a mount wrote, or NaN (reported) if it
/// does not within 240 s.
fn seconds_until_s3_shows(start: Instant, what: &str, mut shown: impl FnMut() -> bool) -> f64 {
    while !shown() {
        if start.elapsed() > Duration::from_secs(240) {
            eprintln!("{what} did not reach S3 in 240 s");
            return f64::NAN;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    secs(start)
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

/// The CPU time that a read step costs the client side (this process, which is the raw client or
/// the mount's readers, and the mount's daemon) and the server, from its start: with 2 cores
/// shared, their sum is what bounds a read's throughput.
struct CpuUse {
    client: Vec<u32>,
    server: u32,
    client_start: f64,
    server_start: f64,
}

impl CpuUse {
    fn start(daemons: &[u32], server: u32) -> Self {
        let client = [vec![std::process::id()], daemons.to_vec()].concat();
        CpuUse { client_start: cpu_secs(&client), server_start: cpu_secs(&[server]), client, server }
    }

    /// CPU-seconds per GiB read, the client's and then the server's.
    fn per_gib(&self, bytes: u64) -> [f64; 2] {
        let gib = bytes as f64 / BIG as f64;
        let client = cpu_secs(&self.client) - self.client_start;
        let server = cpu_secs(&[self.server]) - self.server_start;
        [client / gib, server / gib]
    }
}

/// A sequential read's figures: its throughput, and its CPU lines unless it read past the page
/// cache (the direct-I/O line has none).
fn sequential_figures(step: Step, throughput: f64, [client, server]: [f64; 2]) -> Vec<f64> {
    match step {
        Step::Direct => vec![throughput],
        _ => vec![throughput, client, server],
    }
}

/// User and system CPU-seconds the processes have used, their threads' included.
fn cpu_secs(pids: &[u32]) -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |pid: &u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may hold spaces, from state (field 3) on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
    };
    pids.iter().filter_map(ticks).sum::<f64>() / ticks_per_sec
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

/// A mount's figure for one row against the raw API's, so that higher is better for every row:
/// the share of raw throughput, or raw time / mount time. NaN where there is nothing to compare.
fn ratio(work: &Work, raw: f64, figure: f64) -> f64 {
    if raw <= 0.0 || figure == NOT_MEASURED {
        return f64::NAN;
    }
    let ratio = if work.higher_is_better { figure / raw } else { raw / figure };
    if ratio.is_finite() {
        ratio
    } else {
        f64::NAN
    }
}

fn cell(value: f64, format: impl Fn(f64) -> String) -> String {
    if value == NOT_MEASURED || value.is_nan() {
        "-".into()
    } else {
        format(value)
    }
}

fn json_number(value: f64) -> String {
    if value == NOT_MEASURED || value.is_nan() {
        "null".into()
    } else {
        format!("{value:.3}")
    }
}

/// Writes the table: each figure the median of the runs (the raw one, of every raw figure the
/// row has), and each ratio the median of the runs' ratios, each of which compares a mount's
/// figure with the raw figure taken just before it.
fn report(tools: &[&str], raws: &[Vec<Vec<f64>>], mounts: &[Vec<Vec<f64>>], first_touch: &[f64]) {
    let runs = first_touch.len();
    let raw: Vec<f64> = (0..WORK.len())
        .map(|row| median_of(raws.iter().flatten().map(|run| run[row]).filter(|v| *v != NOT_MEASURED)))
        .collect();
    let columns: Vec<(Vec<f64>, Vec<Vec<f64>>)> = mounts
        .iter()
        .zip(raws)
        .map(|(tool_runs, tool_raws)| {
            let run_ratios: Vec<Vec<f64>> = (0..runs)
                .map(|run| {
                    (0..WORK.len()).map(|row| ratio(&WORK[row], tool_raws[run][row], tool_runs[run][row])).collect()
                })
                .collect();
            (median(tool_runs), run_ratios)
        })
        .collect();
    let mut markdown = String::from("| work | raw S3 API |");
    let mut by_run = String::from("| ratios run by run |");
    for tool in tools {
        markdown += &format!(" {tool} | ratio |");
        by_run += &format!(" {tool} |");
    }
    markdown += &format!("\n|---|---|{}\n", "---|---|".repeat(tools.len()));
    by_run += &format!("\n|---|{}\n", "---|".repeat(tools.len()));
    let mut json = Vec::new();
    for (row, work) in WORK.iter().enumerate() {
        let raw_cell = if raw[row] > 0.0 { format!("{:.1} {}", raw[row], work.unit) } else { "-".into() };
        markdown += &format!("| {} | {raw_cell} |", work.name);
        by_run += &format!("| {} |", work.name);
        for (column, (tool, (figures, run_ratios))) in tools.iter().zip(&columns).enumerate() {
            let this_row: Vec<f64> = run_ratios.iter().map(|ratios| ratios[row]).collect();
            let ratio = median_of(this_row.iter().copied());
            let value = match figures[row] {
                v if v == NOT_MEASURED => "-".to_string(),
                v if v.is_nan() => "did not finish".to_string(),
                v => format!("{v:.1} {}", work.unit),
            };
            markdown += &format!(" {value} | {} |", cell(ratio, |r| format!("{r:.2}")));
            let each: Vec<String> = (0..runs)
                .map(|run| match (this_row[run], mounts[column][run][row]) {
                    (_, figure) if figure.is_nan() => "dnf".to_string(),
                    (ratio, _) => cell(ratio, |r| format!("{r:.2}")),
                })
                .collect();
            by_run += &format!(" {} |", each.join(" / "));
            let each: Vec<String> = this_row.iter().map(|r| json_number(*r)).collect();
            json.push(format!(
                "{{\"tool\":\"{tool}\",\"work\":\"{}\",\"value\":{},\"unit\":\"{}\",\"raw\":{},\"ratio\":{},\"run_ratios\":[{}]}}",
                work.name,
                json_number(figures[row]),
                work.unit,
                json_number(raw[row]),
                json_number(ratio),
                each.join(",")
            ));
        }
        markdown += "\n";
        by_run += "\n";
    }
    let touches: Vec<String> = first_touch.iter().map(|s| format!("{s:.2}")).collect();
    json.push(format!(
        "{{\"tool\":\"machine\",\"work\":\"first touch of 1 GiB\",\"values\":[{}],\"unit\":\"s\"}}",
        touches.join(",")
    ));
    let machine = format!(
        "{} cores, {} GiB, {}; s3s-fs on 127.0.0.1; median of {runs} runs; first touch of 1 GiB of new memory {} s, run by run. Each step ran on each mount before the next step, each mount just after the same work on the raw API. Ratios (higher is better): share of raw throughput, or raw time / mount time; each is the median of the runs' ratios, each a mount's figure against the raw figure taken just before it; the raw column is the median of all of them.",
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
    std::fs::write(out.join("results.md"), format!("{markdown}\n{machine}\n\n{by_run}")).unwrap();
    std::fs::write(out.join("results.json"), format!("[\n{}\n]\n", json.join(",\n"))).unwrap();
    println!("{markdown}\n{machine}\n\n{by_run}\nwritten to {}", out.display());
}
