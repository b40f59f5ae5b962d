//! Log set-up: `tracing` to stderr in the foreground, or appended to `--log-file`. RUST_LOG,
//! when set, replaces `--log-level`. Nothing here ever formats credentials: the S3 client logs
//! through the SDK, which redacts them.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, file: Option<&Path>, to_stderr: bool) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(format!("warn,bucketfs={level}")),
    }
    .map_err(|e| format!("bad log level '{level}': {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match file {
        Some(path) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(Mutex::new(log)).init();
        }
        None if to_stderr => builder.with_writer(std::io::stderr).init(),
        None => {}
    }
    Ok(())
}
