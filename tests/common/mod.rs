//! Shared test harness: a local S3 server (s3s-fs in this process, or moto as a child process),
//! a seeding client, and a mount of the real `bucketfs` binary through the kernel that is
//! unmounted when the guard drops, even when the test fails.

#![allow(dead_code)]

pub mod proxy;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucketfs::local_s3::{bind, client, serve, LocalS3Config, ServerFaults};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "bucketfs-test";
pub const SECRET_KEY: &str = "bucketfs-test-secret";
/// On s3s-fs, uploads of files whose names start with this are denied.
pub const DENIED_NAME: &str = "denied-";

/// A local S3 endpoint with a seeding client.
pub struct Server {
    pub endpoint: String,
    pub s3: aws_sdk_s3::Client,
    pub access_key: String,
    pub secret_key: String,
    /// Runs the seeding client's calls (and, for s3s-fs, the server itself).
    runtime: Option<tokio::runtime::Runtime>,
    moto: Option<Child>,
    _data: Option<TempDir>,
    faults: Option<Arc<ServerFaults>>,
}

static NEXT_BUCKET: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// s3s-fs on a free port of 127.0.0.1, storing under a fresh temporary directory.
    pub fn s3s() -> Server {
        Server::s3s_with(None)
    }

    /// s3s-fs answering about one request in `one_in` with 503 SlowDown or 500 InternalError.
    pub fn s3s_failing(one_in: u64) -> (Server, Arc<ServerFaults>) {
        let faults = ServerFaults::one_in(one_in);
        (Server::s3s_with(Some(faults.clone())), faults)
    }

    fn s3s_with(faults: Option<Arc<ServerFaults>>) -> Server {
        let data = TempDir::new().expect("temp dir");
        let (runtime, addr) = start_s3s(data.path(), 0, faults.clone());
        let endpoint = format!("http://{addr}");
        let s3 = client(&endpoint, ACCESS_KEY, SECRET_KEY);
        Server {
            endpoint,
            s3,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            runtime: Some(runtime),
            moto: None,
            _data: Some(data),
            faults,
        }
    }

    /// Starts a stopped s3s-fs server again on the same port with the same data.
    pub fn restart(&mut self) {
        let data = self._data.as_ref().expect("only s3s-fs restarts").path().to_path_buf();
        let port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let (runtime, _) = start_s3s(&data, port, self.faults.clone());
        self.runtime = Some(runtime);
    }

    /// A server that behaves like AWS where s3s-fs does not (markers, If-Match, `a` beside
    /// `a/`): the endpoint in BUCKETFS_TEST_ENDPOINT (with BUCKETFS_TEST_ACCESS_KEY and
    /// BUCKETFS_TEST_SECRET_KEY) when set, else moto. `None` when neither is available outside CI.
    pub fn aws_like() -> Option<Server> {
        if let Ok(endpoint) = std::env::var("BUCKETFS_TEST_ENDPOINT") {
            let key =
                |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("BUCKETFS_TEST_ENDPOINT needs {name}"));
            let (access_key, secret_key) = (key("BUCKETFS_TEST_ACCESS_KEY"), key("BUCKETFS_TEST_SECRET_KEY"));
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            return Some(Server {
                s3: client(&endpoint, &access_key, &secret_key),
                endpoint,
                access_key,
                secret_key,
                runtime: Some(runtime),
                moto: None,
                _data: None,
                faults: None,
            });
        }
        let python = std::env::var("BUCKETFS_PYTHON").unwrap_or_else(|_| "python3".into());
        let installed = Command::new(&python).args(["-c", "import moto.server"]).stderr(Stdio::null()).status();
        if !installed.is_ok_and(|s| s.success()) {
            assert!(std::env::var_os("CI").is_none(), "moto is missing: scripts/setup.sh must install moto[server]");
            eprintln!(
                "SKIPPED: moto is not installed (pip install 'moto[server]'); this test needs AWS-like behaviour"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = Server {
            s3: client(&endpoint, ACCESS_KEY, SECRET_KEY),
            endpoint,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            runtime: Some(runtime),
            moto: Some(child),
            _data: None,
            faults: None,
        };
        wait_for(Duration::from_secs(30), "moto to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Some(server)
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.as_ref().expect("server running").block_on(future)
    }

    /// A new bucket with a name unique to this test process.
    pub fn bucket(&self, label: &str) -> String {
        let n = NEXT_BUCKET.fetch_add(1, Ordering::Relaxed);
        let name = format!("{label}-{}-{n}", std::process::id());
        self.block_on(self.s3.create_bucket().bucket(&name).send()).expect("create bucket");
        name
    }

    pub fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        let body = ByteStream::from(body.into());
        self.block_on(self.s3.put_object().bucket(bucket).key(key).body(body).send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// The object's bytes through a raw GET, or None when it does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.block_on(async {
            let out = self.s3.get_object().bucket(bucket).key(key).send().await.ok()?;
            let body = out.body.collect().await.unwrap_or_else(|e| panic!("GET {bucket}/{key}: {e:?}"));
            Some(body.to_vec())
        })
    }

    pub fn head(&self, bucket: &str, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.block_on(self.s3.head_object().bucket(bucket).key(key).send())
            .unwrap_or_else(|e| panic!("HEAD {key}: {e:?}"))
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.block_on(async {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let out = self.s3.list_objects_v2().bucket(bucket).set_continuation_token(token).send().await.unwrap();
                keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
                token = out.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    return keys;
                }
            }
        })
    }

    /// Puts many objects, 16 at a time.
    pub fn put_many(&self, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
        self.block_on(async {
            let mut uploads = tokio::task::JoinSet::new();
            for (key, body) in objects {
                let s3 = self.s3.clone();
                let bucket = bucket.to_string();
                uploads.spawn(async move {
                    s3.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await
                });
                while uploads.len() >= 16 {
                    uploads.join_next().await.unwrap().unwrap().expect("put");
                }
            }
            while let Some(done) = uploads.join_next().await {
                done.unwrap().expect("put");
            }
        });
    }

    /// Stops answering: the s3s-fs server's runtime is shut down, or moto is killed.
    pub fn stop(&mut self) {
        if let Some(mut moto) = self.moto.take() {
            let _ = moto.kill();
            let _ = moto.wait();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_s3s(
    data: &Path,
    port: u16,
    faults: Option<Arc<ServerFaults>>,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = LocalS3Config {
        root: data.to_path_buf(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        deny_uploads_named: Some(DENIED_NAME.into()),
        faults,
    };
    let start = Instant::now();
    let (listener, addr) = loop {
        match runtime.block_on(bind(port)) {
            Ok(bound) => break bound,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                eprintln!("waiting to bind port {port}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot bind port {port}: {e}"),
        }
    };
    runtime.spawn(serve(listener, config));
    (runtime, addr)
}

/// The pid of the bucketfs daemon serving `mountpoint` (found by its command line).
pub fn daemon_pid(mountpoint: &Path) -> i32 {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == wanted) {
            return pid;
        }
    }
    panic!("no daemon serves {}", mountpoint.display());
}

pub fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `bucketfs` command with a clean AWS environment holding the test keys.
pub fn bucketfs() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bucketfs"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG");
    command
}

/// A mount of the real binary through the kernel; dropping it unmounts.
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    dir: TempDir,
}

impl Mount {
    /// Mounts `source` from `server` with extra options; panics with the command's message on failure.
    pub fn new(server: &Server, source: &str, options: &[&str]) -> Mount {
        Mount::try_new(server, source, options).unwrap_or_else(|out| {
            panic!("mount failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    }

    pub fn try_new(server: &Server, source: &str, options: &[&str]) -> Result<Mount, Output> {
        Mount::at(&server.endpoint, (&server.access_key, &server.secret_key), source, options)
    }

    /// Mounts `source` from any endpoint with the given keys.
    pub fn at(endpoint: &str, keys: (&str, &str), source: &str, options: &[&str]) -> Result<Mount, Output> {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let log = dir.path().join("bucketfs.log");
        let mut command = bucketfs();
        command
            .env("AWS_ACCESS_KEY_ID", keys.0)
            .env("AWS_SECRET_ACCESS_KEY", keys.1)
            .arg("mount")
            .arg(source)
            .arg(&path)
            .args(["--endpoint-url", endpoint, "--log-file"])
            .arg(&log)
            .args(options);
        // Staged data left by a test that fails an upload on purpose goes with the test's directory.
        if !options.contains(&"--cache-dir") {
            command.arg("--cache-dir").arg(dir.path().join("cache"));
        }
        let out = command.output().expect("run bucketfs");
        if out.status.success() {
            Ok(Mount { path, log, dir })
        } else {
            Err(out)
        }
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    /// Unmounts now, keeping the mount's directory (and its log) until the guard drops.
    pub fn unmount(&self) {
        unmount(&self.path);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's WARN and ERROR lines.
    pub fn warnings(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_string).collect()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.path);
        let _ = &self.dir;
    }
}

/// An empty directory to mount on, inside a temporary directory that holds it.
pub fn empty_mountpoint() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mount point");
    (dir, mountpoint)
}

/// Unmounts a path on drop, for mounts not made through `Mount`.
pub struct Unmount<'a>(pub &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        unmount(self.0);
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(&path))
}

pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let done = Command::new("umount").arg(path).status().is_ok_and(|s| s.success());
    if !done {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Closes `file` and returns what close(2) said: 0, or the errno (an upload's error shows here).
pub fn close(file: std::fs::File) -> i32 {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: the fd was just taken from a File, which no longer owns it.
    if unsafe { libc::close(fd) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

/// A small tmpfs on a fresh directory, unmounted on drop: a staging disk that fills up.
pub struct Tmpfs {
    pub path: String,
    _dir: TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().display().to_string();
        assert!(sh(&format!("mount -t tmpfs -o size={size} tmpfs {path}")).status.success(), "mount a tmpfs");
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", self.path));
    }
}

/// Runs `script` in a shell as uid/gid 65534 (nobody), who owns nothing in a mount.
pub fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
        .output()
        .expect("run setpriv")
}

/// Runs a shell command and returns its output; for real tools (`ls`, `cat`, `find`, `cmp`).
pub fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().expect("run sh")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The errno of a failed std::fs call.
pub fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => panic!("the call should fail"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// Names in a directory, sorted.
pub fn names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
