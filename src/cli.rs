//! Command-line arguments, parsed once by clap, and their conversion into the plain
//! configuration the mount uses.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fs::MountRoot;
use crate::names::{could_be_bucket, normalise_prefix};

#[derive(Debug, Parser)]
#[command(
    name = "bucketfs",
    version,
    about = "Mount Amazon S3 or any S3-compatible store as a directory",
    after_help = TOP_EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount s3:// (every bucket), s3://BUCKET or s3://BUCKET/PREFIX/ at MOUNTPOINT.
    #[command(after_help = MOUNT_EXAMPLES)]
    Mount(MountArgs),
    /// Send one signed S3 call and print the response, without a mount.
    #[command(after_help = API_EXAMPLES)]
    Api(ApiArgs),
    /// Print a shell completion script: bucketfs completions bash > /etc/bash_completion.d/bucketfs
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): bucketfs man > /usr/local/share/man/man1/bucketfs.1
    Man,
}

const TOP_EXAMPLES: &str = "Examples:
  bucketfs mount s3://my-bucket /mnt/s3          mount a bucket (runs in the background)
  ls /mnt/s3; cp report.pdf /mnt/s3/docs/        use it with any tool
  umount /mnt/s3                                 unmount (non-root: fusermount3 -u /mnt/s3)
  bucketfs api GET /                             one signed S3 call, without a mount

As a mount helper (mount -t fuse.bucketfs, /etc/fstab):
  mount -t fuse.bucketfs s3://my-bucket /mnt/s3 -o region=eu-west-1,ro

See `bucketfs mount --help` for every option.";

const API_EXAMPLES: &str = "Examples:
  bucketfs api GET /
  bucketfs api GET '/my-bucket?location'
  bucketfs api GET '/my-bucket?list-type=2&prefix=photos/'
  bucketfs api PUT /my-bucket/notes.txt -H 'x-amz-meta-owner: me' --data @notes.txt
  bucketfs api DELETE /my-bucket/notes.txt

The exit status is 0 for a 2xx answer and 1 otherwise.";

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// GET, PUT, HEAD, POST, DELETE...
    pub method: String,
    /// Path-style path and query: /, /BUCKET?location, /BUCKET/KEY...
    pub path: String,
    /// A request header, 'Name: value'. Repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The request body: @FILE, or - for standard input.
    #[arg(long, value_name = "@FILE|-")]
    pub data: Option<String>,
    /// The region to sign for; default: the bucket's own, else the AWS configuration's.
    #[arg(long)]
    pub region: Option<String>,
    /// Any S3-compatible endpoint, path style.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The AWS profile to take credentials and settings from.
    #[arg(long)]
    pub profile: Option<String>,
}

const MOUNT_EXAMPLES: &str = "Examples:
  bucketfs mount s3://my-bucket /mnt/s3
  bucketfs mount s3://my-bucket/photos/2019/ /mnt/photos --read-only
  bucketfs mount s3:// /mnt/account --region eu-west-1
  bucketfs mount s3://demo /mnt/demo --endpoint-url http://127.0.0.1:9000

Credentials come from the AWS chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
~/.aws/credentials and ~/.aws/config (--profile or AWS_PROFILE), web identity,
container and instance metadata. Unmount with `umount MOUNTPOINT`.";

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// s3://, s3://BUCKET or s3://BUCKET/PREFIX/
    pub source: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Any S3-compatible endpoint, such as http://127.0.0.1:9000. Path-style addressing is used
    /// for endpoints that are not AWS.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Always use path-style addressing (https://host/bucket/key).
    #[arg(long)]
    pub force_path_style: bool,
    /// The region for requests; defaults to the AWS configuration, else us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// The AWS profile to take credentials and settings from.
    #[arg(long)]
    pub profile: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Stay attached to the terminal; SIGINT or SIGTERM unmounts.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Owner of every file and directory (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file and directory (default: the mounting user's group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files, in octal.
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories, in octal.
    #[arg(long, default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// Let other users reach the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,
    /// How long, in seconds, names and attributes are trusted before S3 is asked again.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_seconds)]
    pub metadata_ttl: Duration,
    /// How long one S3 request may take before it fails (and the caller sees EIO).
    #[arg(long, default_value = "20", value_name = "SECONDS", value_parser = parse_seconds)]
    pub request_timeout: Duration,
    /// The most memory, in MiB, that read-ahead may hold across all open files.
    #[arg(long, default_value = "128", value_name = "MIB")]
    pub read_ahead_memory: u64,
    /// How far, in KiB, the kernel reads ahead of each reader, and so the largest read it sends:
    /// set through /sys/class/bdi, which needs root. 0 leaves the kernel's own (128).
    #[arg(long, default_value = "1024", value_name = "KIB")]
    pub kernel_read_ahead: u64,
    /// Read and write files without the kernel's page cache: every read goes to the daemon and
    /// is answered straight into the reader's buffer. Faster for large reads, slower for small.
    #[arg(long)]
    pub direct_io: bool,
    /// Where files being written are staged (a private directory is made inside it).
    /// Default: $XDG_CACHE_HOME/bucketfs, else ~/.cache/bucketfs.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A header every upload carries, such as 'Cache-Control: max-age=60',
    /// 'x-amz-storage-class: STANDARD_IA' or 'x-amz-meta-team: data'. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// error, warn, info, debug or trace; RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Append logs to this file. Default: stderr in the foreground, syslog in the background.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// Options of `-o` that name a value, and the flag each maps to.
const VALUE_OPTIONS: &[&str] = &[
    "endpoint_url",
    "region",
    "profile",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "metadata_ttl",
    "request_timeout",
    "read_ahead_memory",
    "kernel_read_ahead",
    "cache_dir",
    "header",
    "log_level",
    "log_file",
];

/// Mount options that belong to mount(8), the kernel or systemd, and mean nothing here.
fn ignored_option(option: &str) -> bool {
    const IGNORED: &[&str] = &[
        "defaults",
        "rw",
        "_netdev",
        "nofail",
        "noauto",
        "auto",
        "user",
        "users",
        "nouser",
        "owner",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "sync",
        "async",
        "default_permissions",
    ];
    IGNORED.contains(&option)
        || option.starts_with("x-")
        || option.starts_with("comment=")
        || option.starts_with("fsname=")
        || option.starts_with("subtype=")
}

/// Turns the mount-helper form `bucketfs SOURCE MOUNTPOINT [-o OPTIONS]` (how mount(8) and
/// /etc/fstab call `mount -t fuse.bucketfs` through mount.fuse3) into `bucketfs mount` arguments.
pub fn helper_arguments(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = vec!["bucketfs".to_string(), "mount".to_string()];
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-o" {
            let options = rest.next().ok_or("-o needs a list of options")?;
            for option in options.split(',').filter(|o| !o.is_empty()) {
                out.extend(helper_option(option)?);
            }
        } else if let Some(options) = arg.strip_prefix("-o") {
            for option in options.split(',').filter(|o| !o.is_empty()) {
                out.extend(helper_option(option)?);
            }
        } else {
            out.push(arg.clone());
        }
    }
    Ok(out)
}

fn helper_option(option: &str) -> Result<Vec<String>, String> {
    let flag = |name: &str| format!("--{}", name.replace('_', "-"));
    Ok(match option.split_once('=') {
        _ if ignored_option(option) => Vec::new(),
        None if option == "ro" => vec!["--read-only".into()],
        None if matches!(option, "allow_other" | "foreground" | "force_path_style" | "direct_io") => vec![flag(option)],
        Some((name, value)) if VALUE_OPTIONS.contains(&name) => vec![flag(name), value.to_string()],
        _ => {
            return Err(format!(
                "unknown mount option '{option}': use ro, allow_other, force_path_style, direct_io, or {}=VALUE",
                VALUE_OPTIONS.join("=, ")
            ))
        }
    })
}

/// The staging directory's parent when `--cache-dir` is not given.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("bucketfs")
}

fn parse_mode(text: &str) -> Result<u16, String> {
    u16::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("'{text}' is not an octal mode such as 0644"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("'{text}' is not a number of seconds"))
}

/// Turns `s3://`, `s3://BUCKET` or `s3://BUCKET/PREFIX` into what the root of the mount shows.
pub fn parse_source(source: &str) -> Result<MountRoot, String> {
    let rest = source
        .strip_prefix("s3://")
        .ok_or_else(|| format!("'{source}' is not an S3 source: write s3://, s3://BUCKET or s3://BUCKET/PREFIX/"))?;
    if rest.is_empty() {
        return Ok(MountRoot::Account);
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !could_be_bucket(bucket) {
        return Err(format!("'{bucket}' is not a valid bucket name"));
    }
    if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
        return Err(format!("'{prefix}' is not a usable prefix: it has an empty, '.' or '..' component"));
    }
    Ok(MountRoot::Bucket { bucket: bucket.to_string(), prefix: normalise_prefix(prefix) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_parsed() {
        assert_eq!(parse_source("s3://"), Ok(MountRoot::Account));
        assert_eq!(
            parse_source("s3://bucket"),
            Ok(MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() })
        );
        assert_eq!(
            parse_source("s3://bucket/"),
            Ok(MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() })
        );
        assert_eq!(
            parse_source("s3://bucket/photos/2019"),
            Ok(MountRoot::Bucket { bucket: "bucket".into(), prefix: "photos/2019/".into() })
        );
        assert!(parse_source("/tmp/x").is_err());
        assert!(parse_source("s3://a").is_err());
        assert!(parse_source("s3://bucket/a/../b").is_err());
    }

    #[test]
    fn mount_helper_options_map_to_flags() {
        let args: Vec<String> = [
            "s3://b/p/",
            "/mnt",
            "-o",
            "rw,_netdev,nofail,endpoint_url=http://h:9000,region=eu-west-1,ro,allow_other,direct_io,uid=1000,x-systemd.automount",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mapped = helper_arguments(&args).unwrap();
        assert_eq!(
            mapped,
            [
                "bucketfs",
                "mount",
                "s3://b/p/",
                "/mnt",
                "--endpoint-url",
                "http://h:9000",
                "--region",
                "eu-west-1",
                "--read-only",
                "--allow-other",
                "--direct-io",
                "--uid",
                "1000"
            ]
        );
        let parsed = Cli::try_parse_from(&mapped).unwrap();
        let Command::Mount(mount) = parsed.command else { panic!("a mount") };
        assert!(mount.read_only && mount.allow_other && mount.direct_io);
        assert!(helper_arguments(&["s3://b".into(), "/m".into(), "-o".into(), "bogus".into()])
            .unwrap_err()
            .contains("bogus"));
    }

    #[test]
    fn modes_and_durations() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0999").is_err());
        assert_eq!(parse_seconds("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_seconds("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
