/*!
`bucketfs mount`: checks that a mount can work, mounts, reports readiness, and unmounts.

In the background (the default) the command starts itself again as a daemon in a new session
and waits on a pipe (fd 3 in the daemon) for one line: `ok`, or `error: WHAT TO DO`. So the
command returns only once the mount answers, and every failure is one line on the user's
terminal with a non-zero exit, whether it happened before or after the fork. `--foreground`
runs the same steps in the calling process and unmounts on SIGINT or SIGTERM.

Nothing is mounted until every check has passed, and a mount that fails its own first `stat`
is unmounted again, so a failure never leaves a half-mounted directory.
*/

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::cli::{default_cache_dir, parse_source, MountArgs};
use crate::control::{ControlFile, RawApi};
use crate::fs::{Fs, FsConfig, MountRoot};
use crate::fuse::FuseAdapter;
use crate::logging::LogTarget;
use crate::read::ReadAheadBudget;
use crate::s3::{ObjectStore, S3Error, SdkStore, SdkStoreOptions, UploadHeaders};
use crate::write::StagingArea;

/// Set in the daemon's environment: the fd on which it reports readiness.
const READY_FD_VAR: &str = "BUCKETFS_READY_FD";
const READY_FD: RawFd = 3;
/// How long the caller waits for the daemon to mount.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(args: MountArgs) -> ExitCode {
    let ready_fd = std::env::var(READY_FD_VAR).ok().and_then(|fd| fd.parse::<RawFd>().ok());
    // Buffers of a megabyte or more (FUSE reads and writes past the kept ones, small uploads'
    // bodies) are mapped, so their memory goes back to the system as soon as they are freed, even
    // while reads go on; what the arenas keep waits for reads to stop (`return_freed_memory`).
    // A fixed threshold also stops glibc raising it after such a free.
    // SAFETY: mallopt only tunes the allocator.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if ready_fd.is_none() && !args.foreground {
        return match start_daemon() {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(&message),
        };
    }
    // SAFETY: the fd was set up by `start_daemon` for this process alone and nothing else uses it.
    let mut ready = ready_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
    std::env::remove_var(READY_FD_VAR);
    let target = match (&args.log_file, &ready) {
        (Some(path), _) => LogTarget::File(path),
        (None, None) => LogTarget::Stderr,
        (None, Some(_)) => LogTarget::Syslog,
    };
    if let Err(message) = crate::logging::init(&args.log_level, target) {
        return report(&mut ready, Err(message));
    }
    match mount(&args, |store| store) {
        Ok(mounted) => {
            if ready.is_some() {
                // The daemon starts in the caller's directory, so that relative paths among its
                // arguments mean what the user meant. They are all resolved by now, and a daemon
                // that stayed there would keep that directory's filesystem busy.
                let _ = std::env::set_current_dir("/");
            }
            report(&mut ready, Ok(()));
            drop(ready);
            notify_systemd();
            mounted.wait_for_unmount()
        }
        Err(message) => report(&mut ready, Err(message)),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("bucketfs: {}", one_line(message));
    ExitCode::FAILURE
}

/// Tells systemd (a `Type=notify` unit) that the mount is ready, when it is listening.
fn notify_systemd() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| UnixDatagram::unbound()?.send_to_addr(b"READY=1", &address));
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "could not tell systemd the mount is ready");
    }
}

/// A failed mount owes the user one line; causes from the SDK may span several.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Tells the waiting parent (or, in the foreground, the terminal) how mounting went.
fn report(ready: &mut Option<File>, outcome: Result<(), String>) -> ExitCode {
    match (ready.as_mut(), &outcome) {
        (Some(pipe), Ok(())) => {
            let _ = pipe.write_all(b"ok\n");
        }
        (Some(pipe), Err(message)) => {
            tracing::error!("{message}");
            let _ = pipe.write_all(format!("error: {}\n", one_line(message)).as_bytes());
        }
        (None, Ok(())) => {}
        (None, Err(message)) => return fail(message),
    }
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Starts this same command as a daemon and waits for its readiness line.
fn start_daemon() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bucketfs executable: {e}"))?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("cannot create a pipe: {}", std::io::Error::last_os_error()));
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: both fds were just created and are owned here.
    let (mut from_daemon, to_daemon) = unsafe { (File::from_raw_fd(read_end), File::from_raw_fd(write_end)) };
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(READY_FD_VAR, READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            let moved = if write_end == READY_FD {
                libc::fcntl(READY_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(write_end, READY_FD)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start the mount daemon: {e}"))?;
    drop(to_daemon);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = from_daemon.read_to_string(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| format!("the mount did not become ready within {}s; see --log-file", READY_TIMEOUT.as_secs()))?;
    match line.lines().next() {
        Some("ok") => Ok(()),
        Some(other) => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
        None => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "the mount daemon exited before the mount was ready ({status}); run with --foreground to see why"
            ))
        }
    }
}

/// A live mount and what is needed to wait for its end.
struct Mounted {
    runtime: tokio::runtime::Runtime,
    fs: Arc<Fs>,
    session: fuser::BackgroundSession,
    mountpoint: PathBuf,
}

/// Mounts as `bucketfs mount --foreground` does, with `wrap` put around the S3 client that the
/// filesystem uses (the control file still reaches S3 directly), and serves until unmounted:
/// the seam through which tests put a failing layer between a real mount and S3.
pub fn serve_wrapped(
    args: &MountArgs,
    wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
) -> Result<ExitCode, String> {
    Ok(mount(args, wrap)?.wait_for_unmount())
}

fn mount(args: &MountArgs, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Result<Mounted, String> {
    let root = parse_source(&args.source)?;
    let headers = UploadHeaders::parse(&args.headers)?;
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    check_fuse_device()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("bucketfs-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let options = SdkStoreOptions {
        endpoint_url: args.endpoint_url.clone(),
        region: args.region.clone(),
        profile: args.profile.clone(),
        force_path_style: args.force_path_style,
        request_timeout: Some(args.request_timeout),
    };
    let store = runtime.block_on(async {
        let store = SdkStore::new(&options).await;
        store.check_credentials().await.map_err(|cause| {
            tracing::debug!(%cause, "credential chain");
            "no AWS credentials found (tried the environment, ~/.aws profiles, web identity, container and \
             instance metadata): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile with --profile"
                .to_string()
        })?;
        check_source(&store, &root, args.endpoint_url.as_deref()).await?;
        Ok::<_, String>(store)
    })?;
    let config = FsConfig {
        root,
        // SAFETY: getuid and getgid cannot fail.
        uid: args.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
        gid: args.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        metadata_ttl: args.metadata_ttl,
        read_only: args.read_only,
        headers,
        read_ahead_bytes: args.read_ahead_memory.saturating_mul(1024 * 1024),
        direct_io: args.direct_io,
    };
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cache_dir =
        std::path::absolute(&cache_dir).map_err(|e| format!("cannot resolve {}: {e}", cache_dir.display()))?;
    for (dir, files) in StagingArea::left_behind(&cache_dir) {
        tracing::warn!(
            "{files} staged file(s) in {} were left by a mount that ended without unmounting; each N.data \
             holds the contents of the object named in N.key (see the README, 'Recovering staged writes')",
            dir.display()
        );
    }
    let staging = StagingArea::create(&cache_dir)?;
    let store = Arc::new(store);
    let control = control_file(&store, args.endpoint_url.clone())?;
    let fs = Arc::new(Fs::new(wrap(store), config, staging).with_control(control));
    runtime.spawn(return_freed_memory(fs.read_ahead().clone()));
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let page_forgetter = adapter.page_forgetter();
    let session =
        start_session(adapter, &mountpoint, args).map_err(|e| mount_error_hint(&mountpoint, &e, args.allow_other))?;
    page_forgetter.start(session.notifier());
    let answered = match std::fs::metadata(&mountpoint) {
        Ok(answered) => answered,
        Err(e) => {
            unmount(&mountpoint);
            return Err(format!("the mount at {} did not answer ({e}); nothing is left mounted", mountpoint.display()));
        }
    };
    if args.kernel_read_ahead > 0 {
        set_kernel_read_ahead(answered.dev(), args.kernel_read_ahead);
    }
    tracing::info!(source = %args.source, mountpoint = %mountpoint.display(), "mounted");
    Ok(Mounted { runtime, fs, session, mountpoint })
}

/// How long reads must have stopped before the daemon hands their memory back.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Hands memory back to the system once reads have stopped. A response body arrives in pieces
/// too small to be mapped on their own, so they are freed into malloc's arenas, which keep them.
async fn return_freed_memory(budget: ReadAheadBudget) {
    let mut every = tokio::time::interval(MEMORY_CHECK_EVERY);
    let mut watch = ReadsWatch::default();
    loop {
        every.tick().await;
        if watch.stopped(budget.reads()) {
            // SAFETY: malloc_trim has no preconditions; it locks each arena while it trims.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

/// Tells from a count of reads, looked at once per interval, when reads have stopped: the count
/// did not move over a whole interval, and it had moved since reads last stopped. Trimming while
/// reads go on would hand back memory that the next pieces fault in again.
#[derive(Default)]
struct ReadsWatch {
    seen: u64,
    stopped_at: u64,
}

impl ReadsWatch {
    fn stopped(&mut self, reads: u64) -> bool {
        let stopped = reads == self.seen && reads != self.stopped_at;
        self.seen = reads;
        if stopped {
            self.stopped_at = reads;
        }
        stopped
    }
}

/// The kernel caps a FUSE mount's read-ahead at 128 KiB whatever the filesystem asks for at
/// init, so a 1 MiB `read` reaches the daemon as eight requests, and a random 256 KiB read as
/// two GETs one after the other. The cap is a property of the mount's backing device, which
/// root may change.
fn set_kernel_read_ahead(device: u64, kib: u64) {
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(device), libc::minor(device));
    match std::fs::write(&path, kib.to_string()) {
        Ok(()) => tracing::debug!(%path, kib, "kernel read-ahead set"),
        Err(e) => tracing::debug!(%path, error = %e, "kernel read-ahead left as it was"),
    }
}

/// The `.s3api` file, acting for the mounting user with the mount's credentials.
fn control_file(store: &Arc<SdkStore>, endpoint: Option<String>) -> Result<ControlFile, String> {
    let credentials = store.credentials_provider().ok_or("no AWS credentials provider is configured")?;
    let api = RawApi::new(credentials, endpoint, store.default_region().to_string(), store.clone())?;
    // SAFETY: getuid cannot fail.
    Ok(ControlFile::new(api, unsafe { libc::getuid() }))
}

/// Root mounts directly; other users through fusermount3.
fn start_session(
    adapter: FuseAdapter,
    mountpoint: &Path,
    args: &MountArgs,
) -> std::io::Result<fuser::BackgroundSession> {
    let config = fuse_config(args);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return fuser::spawn_mount(adapter, mountpoint, &config);
    }
    let mut options = vec![format!("fsname={}", args.source), "subtype=bucketfs".to_string()];
    options.extend(["default_permissions", "nodev", "nosuid", "noatime"].map(str::to_string));
    options.push(if args.read_only { "ro" } else { "rw" }.to_string());
    if args.allow_other {
        options.push("allow_other".to_string());
    }
    let device = crate::fusermount::mount(mountpoint, &options.join(","))?;
    fuser::Session::from_fd(adapter, device, config.acl, config).and_then(fuser::Session::spawn)
}

fn fuse_config(args: &MountArgs) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(args.source.clone()),
        MountOption::Subtype("bucketfs".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if args.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if args.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(2);
    config
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("mount point {shown} does not exist: create it with `mkdir -p {shown}`")
        }
        _ if e.raw_os_error() == Some(libc::ENOTCONN) => {
            format!("mount point {shown} is a mount whose daemon has gone: run `umount {shown}` first")
        }
        _ => format!("cannot use mount point {shown}: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(format!("mount point {shown} is not a directory: choose an empty directory"));
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| format!("cannot read mount point {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!(
            "mount point {shown} is not empty (or is already mounted): choose an empty directory, or `umount {shown}` first"
        ));
    }
    std::fs::canonicalize(path).map_err(|e| format!("cannot resolve mount point {shown}: {e}"))
}

/// /dev/fuse must exist; root must be able to open it, while other users mount through the
/// setuid fusermount3, which opens it for them.
fn check_fuse_device() -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    const HINT: &str = "install FUSE (`apt-get install fuse3`) and load it (`modprobe fuse`)";
    let meta = std::fs::metadata("/dev/fuse").map_err(|e| format!("cannot use /dev/fuse ({e}): {HINT}"))?;
    if !meta.file_type().is_char_device() {
        return Err(format!("/dev/fuse is not a device: {HINT}"));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| format!("cannot open /dev/fuse ({e}): {HINT}"))?;
    } else if !Path::new("/bin/fusermount3").exists() && !Path::new("/usr/bin/fusermount3").exists() {
        return Err("mounting as a normal user needs fusermount3: install fuse3 (`apt-get install fuse3`)".into());
    }
    Ok(())
}

/// Fails now, with what to do, if the bucket or the endpoint cannot work.
async fn check_source(store: &SdkStore, root: &MountRoot, endpoint: Option<&str>) -> Result<(), String> {
    let endpoint = endpoint.unwrap_or("AWS S3");
    let result = match root {
        MountRoot::Account => match store.list_buckets().await {
            Err(S3Error::AccessDenied(_)) => Ok(()),
            other => other.map(drop),
        },
        MountRoot::Bucket { bucket, .. } => store.head_bucket(bucket).await,
    };
    let bucket = match root {
        MountRoot::Bucket { bucket, .. } => bucket.as_str(),
        MountRoot::Account => "",
    };
    result.map_err(|err| match err {
        S3Error::NoSuchBucket | S3Error::NotFound => {
            format!("bucket '{bucket}' does not exist at {endpoint}: check the name, --region and --endpoint-url")
        }
        S3Error::AccessDenied(cause) => {
            format!("access denied at {endpoint} ({cause}): check the credentials and their permissions")
        }
        S3Error::Unreachable(cause) => {
            format!("cannot reach {endpoint} ({cause}): check --endpoint-url and the network")
        }
        other => format!("S3 at {endpoint} refused the mount: {other}"),
    })
}

fn mount_error_hint(mountpoint: &Path, err: &std::io::Error, allow_other: bool) -> String {
    let mut message = format!("cannot mount at {}: {err}", mountpoint.display());
    if allow_other && err.to_string().contains("allow_other") {
        message.push_str(": --allow-other needs a line `user_allow_other` in /etc/fuse.conf");
    } else if err.to_string().contains("/dev/fuse") {
        message
            .push_str(": users need read and write access to /dev/fuse (Debian's default is `chmod 0666 /dev/fuse`)");
    } else if err.kind() == std::io::ErrorKind::NotFound {
        message.push_str(": non-root users need fusermount3 (`apt-get install fuse3`)");
    }
    message
}

impl Mounted {
    /// Serves until the mount is unmounted from outside, or SIGINT/SIGTERM unmounts it.
    fn wait_for_unmount(self) -> ExitCode {
        let Mounted { runtime, fs, session, mountpoint } = self;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = ended_tx.send(session.join());
        });
        let outcome = runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut interrupt = signal(SignalKind::interrupt()).ok();
            let mut terminate = signal(SignalKind::terminate()).ok();
            let mut ended_rx = ended_rx;
            tokio::select! {
                ended = &mut ended_rx => return ended,
                _ = recv(&mut interrupt) => tracing::info!("SIGINT: unmounting"),
                _ = recv(&mut terminate) => tracing::info!("SIGTERM: unmounting"),
            }
            let path = mountpoint.clone();
            let _ = tokio::task::spawn_blocking(move || unmount(&path)).await;
            ended_rx.await
        });
        let pending = runtime.block_on(fs.finish_pending());
        match outcome {
            _ if pending > 0 => ExitCode::FAILURE,
            Ok(Ok(())) | Err(_) => {
                tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                tracing::error!("the FUSE session ended with an error: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Unmounts `path`; a busy mount is detached so the daemon can still finish.
fn unmount(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: `c_path` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            tracing::warn!(mountpoint = %path.display(), "mount busy: detaching it");
            // SAFETY: as above.
            unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        }
        Some(libc::EPERM) => {
            let status = Command::new("fusermount3").arg("-u").arg(path).status();
            if !status.is_ok_and(|s| s.success()) {
                tracing::error!(mountpoint = %path.display(), "cannot unmount: run `fusermount3 -u` on it");
            }
        }
        _ => tracing::error!(mountpoint = %path.display(), error = %err, "cannot unmount"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_once_per_pause_in_reading() {
        let mut watch = ReadsWatch::default();
        let stopped: Vec<bool> = [0, 0, 5, 9, 9, 9, 9, 12, 12].into_iter().map(|reads| watch.stopped(reads)).collect();
        assert_eq!(stopped, [false, false, false, false, true, false, false, false, true]);
    }
}
