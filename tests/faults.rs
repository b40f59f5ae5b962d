//! Faults below the SDK, through the kernel: a server answering a fifth of its requests with
//! 503 or 500, a network that drops, stalls or cuts answers short (a TCP proxy), a daemon killed
//! with writes pending, and SIGTERM with uploads pending. Nothing may hang, pass short data off
//! as whole, or lose a byte.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bucketfs::local_s3::sample_bytes;
use common::proxy::{Mode, Proxy};
use common::{bucketfs, close, daemon_pid, errno, is_mounted, names, sh, stdout, wait_for, Mount, Server, Unmount};

fn through_proxy(server: &Server, proxy: &Proxy, bucket: &str, options: &[&str]) -> Mount {
    let keys = (server.access_key.as_str(), server.secret_key.as_str());
    Mount::at(&proxy.endpoint, keys, &format!("s3://{bucket}"), options).expect("mount through the proxy")
}

#[test]
fn a_fifth_of_requests_failing_with_503_and_500_is_retried_through() {
    let (server, faults) = Server::s3s_failing(5);
    let bucket = server.bucket("flaky");
    server.put(&bucket, "seed.txt", "seeded");
    // s3s-fs cannot hold folder markers, so the copy goes into a directory that has a file.
    server.put(&bucket, "in/seed.txt", "seeded");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let local = tempfile::TempDir::new().unwrap();
    let src = local.path().join("in");
    std::fs::create_dir(&src).unwrap();
    for n in 0..30 {
        std::fs::write(src.join(format!("small-{n}.txt")), sample_bytes(1000 + n * 37, n as u64)).unwrap();
    }
    std::fs::write(src.join("large.bin"), sample_bytes(24 * 1024 * 1024, 99)).unwrap();
    std::fs::write(src.join("seed.txt"), "seeded").unwrap();
    let before = faults.failed();
    let root = mount.path.display();
    let src_shown = src.display();
    let out = sh(&format!("cp {src_shown}/* {root}/in/ && ls -l {root}/in | wc -l && cat {root}/seed.txt"));
    assert!(out.status.success(), "cp, ls, cat: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), "33\nseeded", "32 files and a total line, then the seeded file");
    let out =
        sh(&format!("diff -r {src_shown} {root}/in && mv {root}/in {root}/moved && diff -r {src_shown} {root}/moved"));
    assert!(out.status.success(), "diff, mv, diff: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let keys = server.keys(&bucket);
    assert_eq!(keys.iter().filter(|k| k.starts_with("moved/")).count(), 32, "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("in/")), "the move deleted its sources");
    assert!(server.get(&bucket, "moved/large.bin").unwrap() == sample_bytes(24 * 1024 * 1024, 99));
    let injected = faults.failed() - before;
    assert!(injected >= 20, "faults were injected: {injected}");
    eprintln!("FIGURE faults: {injected} of {} requests answered 503/500; no operation failed", faults.requests());
}

#[test]
fn a_dropped_or_stalled_network_gives_eio_in_bounded_time_and_recovers_without_remount() {
    let server = Server::s3s();
    let bucket = server.bucket("network");
    server.put(&bucket, "dir/a.txt", "in a directory");
    let data = sample_bytes(4 * 1024 * 1024, 3);
    server.put(&bucket, "big.bin", data.clone());
    let proxy = Proxy::to(&server.endpoint);
    let mount = through_proxy(&server, &proxy, &bucket, &["--metadata-ttl", "0", "--request-timeout", "3"]);
    assert_eq!(names(&mount.path), ["big.bin", "dir"]);
    for mode in [Mode::Drop, Mode::Stall] {
        proxy.set(mode);
        let start = Instant::now();
        assert_eq!(errno(std::fs::read_dir(mount.join("dir"))), libc::EIO, "{mode:?}: listing");
        assert_eq!(errno(std::fs::read(mount.join("big.bin"))), libc::EIO, "{mode:?}: reading");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(60), "{mode:?}: bounded, took {took:?}");
        eprintln!("FIGURE faults: {mode:?}: a listing and a read failed with EIO in {took:.1?}");
        proxy.set(Mode::Pass);
        assert_eq!(names(&mount.join("dir")), ["a.txt"], "{mode:?}: works again with no remount");
        assert!(std::fs::read(mount.join("big.bin")).unwrap() == data);
    }
    assert!(is_mounted(&mount.path));
}

#[test]
fn a_body_cut_short_is_eio_never_short_data() {
    let server = Server::s3s();
    let bucket = server.bucket("cut");
    let data = sample_bytes(6 * 1024 * 1024, 4);
    server.put(&bucket, "big.bin", data.clone());
    let proxy = Proxy::to(&server.endpoint);
    let mount = through_proxy(&server, &proxy, &bucket, &["--request-timeout", "5"]);
    assert_eq!(std::fs::metadata(mount.join("big.bin")).unwrap().len(), data.len() as u64);
    // The headers of a GET's answer (under 1 KB) pass and every body is cut: a cut that spared
    // small GETs would let the kernel fall back to reading page by page and get the whole file.
    proxy.set(Mode::CutAfter(1_000));
    assert_eq!(errno(std::fs::read(mount.join("big.bin"))), libc::EIO);
    let out = sh(&format!("cat {} | wc -c", mount.join("big.bin").display()));
    assert_ne!(stdout(&out).trim(), data.len().to_string(), "cat never sees the whole size");
    assert!(mount.log_text().contains("GET body failed; asking again"), "the cut body was retried");
    proxy.set(Mode::Pass);
    assert!(std::fs::read(mount.join("big.bin")).unwrap() == data);
}

#[test]
fn an_upload_while_the_network_is_down_errors_keeps_the_data_and_retries_whole() {
    let server = Server::s3s();
    let bucket = server.bucket("upload-down");
    let proxy = Proxy::to(&server.endpoint);
    let mount = through_proxy(&server, &proxy, &bucket, &["--request-timeout", "3"]);
    let data = sample_bytes(20 * 1024 * 1024, 6);
    let mut file = File::create(mount.join("report.bin")).unwrap();
    file.write_all(&data).unwrap();
    proxy.set(Mode::Stall);
    assert_eq!(file.sync_all().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "fsync reports the failure");
    proxy.set(Mode::Drop);
    assert_eq!(close(file), libc::EIO, "so does close");
    // A call that timed out here may still finish at a loaded server: the object may then be
    // there, but only ever whole.
    let visible = server.get(&bucket, "report.bin");
    assert!(visible.is_none() || visible.as_deref() == Some(&data[..]), "nothing half-visible");
    assert!(std::fs::read(mount.join("report.bin")).unwrap() == data, "the data is still there");
    proxy.set(Mode::Pass);
    let again = File::options().append(true).open(mount.join("report.bin")).unwrap();
    assert_eq!(close(again), 0);
    assert!(server.get(&bucket, "report.bin").unwrap() == data, "every byte arrived");
}

#[test]
fn sigterm_finishes_pending_uploads_before_exit() {
    let server = Server::s3s();
    let bucket = server.bucket("sigterm");
    let proxy = Proxy::to(&server.endpoint);
    let (_dir, mountpoint) = common::empty_mountpoint();
    let mut daemon = bucketfs()
        .args(["mount", &format!("s3://{bucket}")])
        .arg(&mountpoint)
        .args(["--foreground", "--request-timeout", "2", "--endpoint-url", &proxy.endpoint])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Unmount(&mountpoint);
    wait_for(Duration::from_secs(30), "the mount", || is_mounted(&mountpoint));
    let mut file = File::create(mountpoint.join("pending.txt")).unwrap();
    file.write_all(b"finished at exit").unwrap();
    proxy.set(Mode::Drop);
    assert_eq!(close(file), libc::EIO);
    proxy.set(Mode::Pass);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(server.get(&bucket, "pending.txt").unwrap(), b"finished at exit", "uploaded before the daemon exited");
    assert!(!is_mounted(&mountpoint));
}

/// The `N.data` files under `cache`: those holding staged writes, and the spares (emptied for
/// reuse, their `N.key` empty).
fn staging_files(cache: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut found = Vec::new();
    for area in std::fs::read_dir(cache).unwrap().flatten() {
        for file in std::fs::read_dir(area.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "data") {
                found.push(file.path());
            }
        }
    }
    found.into_iter().partition(|data| std::fs::metadata(data.with_extension("key")).unwrap().len() > 0)
}

#[test]
fn a_killed_daemon_leaves_its_staged_data_and_the_mount_point_can_be_mounted_again() {
    let server = Server::s3s();
    let bucket = server.bucket("killed");
    let cache = tempfile::TempDir::new().unwrap();
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let source = format!("s3://{bucket}");
    let first = Mount::new(&server, &source, &["--cache-dir", &cache_arg]);
    // Two files written at once and closed leave two spares; the next file takes one.
    let saved: Vec<File> = (0..2).map(|n| File::create(first.join(&format!("saved{n}"))).unwrap()).collect();
    for mut file in saved {
        file.write_all(b"uploaded").unwrap();
        assert_eq!(close(file), 0);
    }
    wait_for(Duration::from_secs(10), "two spares", || staging_files(cache.path()).1.len() == 2);
    let data = sample_bytes(3 * 1024 * 1024, 8);
    let mut file = File::create(first.join("unsaved.bin")).unwrap();
    file.write_all(&data).unwrap();
    let pid = daemon_pid(&first.path);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "the daemon to die", || !Path::new(&format!("/proc/{pid}")).exists());
    drop(file);
    assert_eq!(errno(std::fs::metadata(&first.path)), libc::ENOTCONN);
    assert_eq!(server.get(&bucket, "unsaved.bin"), None);

    let (staged, spares) = staging_files(cache.path());
    assert_eq!((staged.len(), spares.len()), (1, 1), "{staged:?} {spares:?}");
    assert!(std::fs::read(&staged[0]).unwrap() == data, "the written bytes survive on disk");
    let named = std::fs::read_to_string(staged[0].with_extension("key")).unwrap();
    assert_eq!(named, format!("s3://{bucket}/unsaved.bin\n"));

    let refused = bucketfs()
        .args(["mount", &source])
        .arg(&first.path)
        .args(["--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("run `umount"), "{refused:?}");
    assert!(sh(&format!("umount {}", first.path.display())).status.success());
    let log = first.path.with_file_name("second.log");
    let out = bucketfs()
        .args(["mount", &source])
        .arg(&first.path)
        .args(["--endpoint-url", &server.endpoint, "--cache-dir", &cache_arg, "--log-file"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _again = Unmount(&first.path);
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(warned.contains("1 staged file(s) in"), "only what holds writes is reported: {warned}");
    assert!(warned.contains("left by a mount that ended without unmounting"), "{warned}");
    // The README's recovery: copy each N.data back to the object its N.key names.
    let out = sh(&format!("cp {} {}/unsaved.bin", staged[0].display(), first.path.display()));
    assert!(out.status.success());
    assert!(server.get(&bucket, "unsaved.bin").unwrap() == data, "recovered whole");
}
