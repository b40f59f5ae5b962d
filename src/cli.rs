//! Command-line arguments, parsed once by clap, and their conversion into the plain
//! configuration the mount uses.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fs::MountRoot;
use crate::names::{could_be_bucket, normalise_prefix};

#[derive(Debug, Parser)]
#[command(name = "bucketfs", version, about = "Mount Amazon S3 or any S3-compatible store as a directory")]
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
}

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
    #[arg(long, default_value = "256", value_name = "MIB")]
    pub read_ahead_memory: u64,
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
    /// Append logs to this file (in the background, logs go nowhere else).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
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
