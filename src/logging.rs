//! Log set-up: `tracing` to stderr in the foreground, appended to `--log-file` when given, and
//! to syslog when the daemon runs in the background without a log file, so that a failure
//! after daemonising is never silent. RUST_LOG, when set, replaces `--log-level`. Nothing here
//! formats credentials: the S3 client logs through the SDK, which redacts them, and the trace
//! events of the targets that would log signatures or request bytes are dropped.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where logs go.
pub enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

pub fn init(level: &str, target: LogTarget<'_>) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        // fuser warns when the daemon, ending after an outside `umount`, finds nothing left to
        // unmount: that is how a mount normally ends. bucketfs reports its own unmount failures.
        _ => EnvFilter::try_new(format!("warn,fuser::mnt=error,bucketfs={level}")),
    }
    .map_err(|e| format!("bad log level '{level}': {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match target {
        LogTarget::Stderr => builder.with_writer(std::io::stderr).finish().with(no_secrets()).init(),
        LogTarget::File(path) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(Mutex::new(log)).finish().with(no_secrets()).init();
        }
        LogTarget::Syslog => {
            // SAFETY: the identifier is a static NUL-terminated string that outlives every call.
            unsafe { libc::openlog(c"bucketfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            builder.with_ansi(false).without_time().with_writer(|| Syslog).finish().with(no_secrets()).init();
        }
    }
    Ok(())
}

/// Targets whose trace output holds request signatures or the bytes sent: the SDK's chunked
/// body encoder writes each chunk with its signature, the signer its inputs, the HTTP layers
/// raw data. Credentials never appear in logs, so their trace events are dropped whatever the
/// filter asks; their other levels follow the filter.
const SIGNING_AND_WIRE_TARGETS: [&str; 6] =
    ["aws_sigv4", "aws_runtime::content_encoding", "aws_smithy_runtime::client::http", "hyper", "hyper_util", "h2"];

fn no_secrets() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|meta| {
        *meta.level() != Level::TRACE
            || !SIGNING_AND_WIRE_TARGETS.iter().any(|target| meta.target().starts_with(target))
    })
}

/// Sends each formatted line to syslog.
struct Syslog;

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(line) = CString::new(line.replace('\0', " ")) {
                // SAFETY: a constant format string with one C string argument.
                unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), line.as_ptr()) };
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
