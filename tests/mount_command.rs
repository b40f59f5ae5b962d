//! The `mount` command itself: every refusal is one line that says what to do and leaves
//! nothing mounted; relative paths; `--read-only`; `--kernel-read-ahead`; `--direct-io`;
//! `--foreground` with SIGTERM; a server that goes away.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{bucketfs, errno, is_mounted, names, wait_for, Mount, Server, Unmount};

/// Runs `bucketfs mount` and returns its output, checking the failure contract.
fn refused(mut command: std::process::Command, mountpoint: &Path) -> String {
    let out: Output = command.output().expect("run bucketfs");
    assert!(!out.status.success(), "mount should fail");
    assert!(!is_mounted(mountpoint), "a failed mount left {} mounted", mountpoint.display());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected, got: {stderr}");
    assert!(stderr.starts_with("bucketfs: "), "{stderr}");
    stderr
}

fn mount_command(server: &Server, source: &str, mountpoint: &Path) -> std::process::Command {
    let mut command = bucketfs();
    command.arg("mount").arg(source).arg(mountpoint).args(["--endpoint-url", &server.endpoint]);
    command
}

#[test]
fn missing_and_non_empty_mount_points_are_refused() {
    let server = Server::s3s();
    let bucket = server.bucket("mp");
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("missing");
    let message = refused(mount_command(&server, &format!("s3://{bucket}"), &missing), &missing);
    assert!(message.contains("does not exist") && message.contains("mkdir -p"), "{message}");

    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("file"), "x").unwrap();
    let message = refused(mount_command(&server, &format!("s3://{bucket}"), &full), &full);
    assert!(message.contains("is not empty"), "{message}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let message = refused(mount_command(&server, "/not/an/s3/url", &empty), &empty);
    assert!(message.contains("s3://BUCKET"), "{message}");
}

#[test]
fn missing_bucket_unreachable_endpoint_and_no_credentials_are_refused() {
    let server = Server::s3s();
    let bucket = server.bucket("creds");
    let (_dir, mountpoint) = common::empty_mountpoint();

    let message = refused(mount_command(&server, "s3://no-such-bucket-anywhere", &mountpoint), &mountpoint);
    assert!(message.contains("'no-such-bucket-anywhere' does not exist"), "{message}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = bucketfs();
    command.arg("mount").arg(format!("s3://{bucket}")).arg(&mountpoint);
    command.args(["--endpoint-url", &format!("http://127.0.0.1:{closed}")]);
    let message = refused(command, &mountpoint);
    assert!(message.contains("cannot reach") && message.contains("--endpoint-url"), "{message}");

    let home = tempfile::TempDir::new().unwrap();
    let mut command = mount_command(&server, &format!("s3://{bucket}"), &mountpoint);
    command.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env("HOME", home.path());
    let message = refused(command, &mountpoint);
    assert!(message.contains("no AWS credentials") && message.contains("AWS_ACCESS_KEY_ID"), "{message}");

    let mut command = mount_command(&server, &format!("s3://{bucket}"), &mountpoint);
    command.env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    let message = refused(command, &mountpoint);
    assert!(message.contains("access denied"), "{message}");
}

#[test]
fn missing_fuse_device_is_refused() {
    let server = Server::s3s();
    let bucket = server.bucket("nofuse");
    let (_dir, mountpoint) = common::empty_mountpoint();
    // A private mount namespace whose /dev has no fuse device in it.
    let mut command = std::process::Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", r#"mount -t tmpfs none /dev && exec "$@""#, "sh"]);
    let inner = mount_command(&server, &format!("s3://{bucket}"), &mountpoint);
    command.arg(inner.get_program()).args(inner.get_args()).arg("--foreground");
    command.envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    for (name, value) in inner.get_envs() {
        if value.is_none() {
            command.env_remove(name);
        }
    }
    let message = refused(command, &mountpoint);
    assert!(message.contains("/dev/fuse") && message.contains("fuse3"), "{message}");
}

#[test]
fn read_only_mount_is_read_only_to_the_kernel() {
    let server = Server::s3s();
    let bucket = server.bucket("ro");
    server.put(&bucket, "f.txt", "data");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--read-only"]);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(&*mount.path.to_string_lossy())).unwrap();
    assert!(line.split(' ').nth(3).unwrap().split(',').any(|o| o == "ro"), "{line}");
    assert_eq!(errno(std::fs::File::create(mount.join("new"))), libc::EROFS);
    assert_eq!(errno(std::fs::OpenOptions::new().write(true).open(mount.join("f.txt"))), libc::EROFS);
    assert_eq!(errno(std::fs::create_dir(mount.join("newdir"))), libc::EROFS);
    assert_eq!(errno(std::fs::remove_file(mount.join("f.txt"))), libc::EROFS);
    assert_eq!(errno(std::fs::rename(mount.join("f.txt"), mount.join("g.txt"))), libc::EROFS);
    assert_eq!(std::fs::read_to_string(mount.join("f.txt")).unwrap(), "data");
    assert_eq!(server.get(&bucket, "f.txt").unwrap(), b"data");
}

/// The mount's backing-device read-ahead, which the kernel caps at 128 KiB for FUSE.
fn kernel_read_ahead_kib(mount: &Mount) -> u64 {
    let device = std::fs::metadata(&mount.path).unwrap().dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(device), libc::minor(device));
    std::fs::read_to_string(&path).unwrap().trim().parse().unwrap()
}

#[test]
fn a_root_mount_sets_the_kernel_read_ahead_it_is_given() {
    let server = Server::s3s();
    let bucket = server.bucket("readahead");
    let source = format!("s3://{bucket}");
    assert_eq!(kernel_read_ahead_kib(&Mount::new(&server, &source, &[])), 1024, "the default");
    assert_eq!(kernel_read_ahead_kib(&Mount::new(&server, &source, &["--kernel-read-ahead", "512"])), 512);
    assert_eq!(
        kernel_read_ahead_kib(&Mount::new(&server, &source, &["--kernel-read-ahead", "0"])),
        128,
        "the kernel's"
    );
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Shared mappings of a direct-I/O file need FUSE_DIRECT_IO_ALLOW_MMAP, new in Linux 6.6.
fn kernel_maps_direct_files_shared() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 6)
}

/// Reads `path` whole with `read`, then maps it and returns how many of its pages the page cache
/// held before the mapping was touched, and what the mapping reads.
fn read_then_map(path: &Path, sharing: libc::c_int) -> (usize, Vec<u8>) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = std::fs::File::open(path).unwrap();
    let mut read = Vec::new();
    file.read_to_end(&mut read).unwrap();
    let len = read.len();
    // SAFETY: a read-only mapping of an open file, unmapped before the file closes; the slice
    // made from it is copied out before that.
    let (counted, cached, mapped) = unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, sharing, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut resident = vec![0u8; len.div_ceil(page_size())];
        let counted = libc::mincore(map, len, resident.as_mut_ptr()) == 0;
        let cached = resident.iter().filter(|page| *page & 1 == 1).count();
        let mapped = std::slice::from_raw_parts(map as *const u8, len).to_vec();
        libc::munmap(map, len);
        (counted, cached, mapped)
    };
    assert!(counted, "mincore failed");
    assert!(read == mapped, "read and the mapping agree");
    (cached, mapped)
}

#[test]
fn direct_io_reads_past_the_page_cache_and_still_maps() {
    let server = Server::s3s();
    let bucket = server.bucket("directio");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i: u32| (i % 253) as u8).collect();
    server.put(&bucket, "f.bin", data.clone());
    let source = format!("s3://{bucket}");
    let pages = data.len().div_ceil(page_size());
    let shared = if kernel_maps_direct_files_shared() { libc::MAP_SHARED } else { libc::MAP_PRIVATE };

    let cached = Mount::new(&server, &source, &[]);
    let (resident, mapped) = read_then_map(&cached.path.join("f.bin"), shared);
    // Nearly all, not all: one run counted 768 of 769 while other tests ran. The kernel may
    // reclaim a page at any time, and this kind of machine pages out memory it finds cold (DAMON).
    assert!(mapped == data, "the mapping reads the object");
    assert!(resident >= pages * 9 / 10, "by default a read fills the page cache: {resident} of {pages} pages");

    let direct = Mount::new(&server, &source, &["--direct-io"]);
    let (resident, mapped) = read_then_map(&direct.path.join("f.bin"), shared);
    assert_eq!((resident, mapped == data), (0, true), "with --direct-io it does not, and mmap still works");
    std::fs::write(direct.path.join("new.bin"), &data[..5000]).unwrap();
    assert!(server.get(&bucket, "new.bin").as_deref() == Some(&data[..5000]), "and writes go up whole");
}

#[test]
fn relative_paths_are_the_callers_and_the_daemon_then_leaves_its_directory() {
    let server = Server::s3s();
    let bucket = server.bucket("relative");
    server.put(&bucket, "f.txt", "data");
    let (dir, mountpoint) = common::empty_mountpoint();
    let out = bucketfs()
        .current_dir(dir.path())
        .args(["mount", &format!("s3://{bucket}"), "./mnt", "--endpoint-url", &server.endpoint])
        .args(["--cache-dir", "cache", "--log-file", "mount.log"])
        .output()
        .unwrap();
    let guard = Unmount(&mountpoint);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(mountpoint.join("f.txt")).unwrap(), "data");
    let daemon = common::daemon_pid(Path::new("./mnt"));
    assert_eq!(std::fs::read_link(format!("/proc/{daemon}/cwd")).unwrap(), Path::new("/"));
    // Written after the daemon left the caller's directory: staged in the caller's `cache`.
    std::fs::write(mountpoint.join("new.txt"), "staged").unwrap();
    assert_eq!(server.get(&bucket, "new.txt").unwrap(), b"staged");
    assert!(dir.path().join("cache").is_dir());
    assert!(dir.path().join("mount.log").is_file());
    drop(guard);
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm() {
    let server = Server::s3s();
    let bucket = server.bucket("fg");
    server.put(&bucket, "f.txt", "data");
    let (_dir, mountpoint) = common::empty_mountpoint();
    let mut child = mount_command(&server, &format!("s3://{bucket}"), &mountpoint)
        .arg("--foreground")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = Unmount(&mountpoint);
    wait_for(Duration::from_secs(30), "the foreground mount", || is_mounted(&mountpoint));
    assert_eq!(std::fs::read_to_string(mountpoint.join("f.txt")).unwrap(), "data");
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "bucketfs did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&mountpoint));
    drop(guard);
}

#[test]
fn server_gone_gives_eio_in_bounded_time_and_no_hang() {
    let mut server = Server::s3s();
    let bucket = server.bucket("gone");
    server.put(&bucket, "dir/f.txt", "data");
    server.put(&bucket, "g.txt", "more");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--metadata-ttl", "0", "--request-timeout", "2"]);
    assert_eq!(names(&mount.path), ["dir", "g.txt"]);
    server.stop();
    let start = Instant::now();
    assert_eq!(errno(std::fs::read_dir(mount.join("dir"))), libc::EIO);
    assert_eq!(errno(std::fs::read(mount.join("g.txt"))), libc::EIO);
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
    assert!(mount.log_text().contains("S3 call failed"), "the failure is logged");
    assert!(is_mounted(&mount.path), "the mount stays up");
}
