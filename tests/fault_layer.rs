//! Faults above the network, through the kernel: a mount served from this process with a
//! `FaultyStore` between the filesystem and a real S3 client, failing, slowing or cutting short
//! chosen calls. (Its own test binary: the mount reads credentials from this process's
//! environment.)

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bucketfs::cli::{Cli, Command};
use bucketfs::s3::{Fault, FaultyStore, S3Error};
use clap::Parser;
use common::{errno, is_mounted, wait_for, Server, ACCESS_KEY, SECRET_KEY};

#[test]
fn chosen_calls_fail_slow_down_or_come_back_short() {
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let server = Server::s3s();
    let bucket = server.bucket("layer");
    let data = bucketfs::local_s3::sample_bytes(3 * 1024 * 1024, 21);
    server.put(&bucket, "data.bin", data.clone());
    server.put(&bucket, "dir/x.txt", "x");
    server.put(&bucket, "old.bin", data.clone());
    let (dir, mountpoint) = common::empty_mountpoint();
    let cache = dir.path().join("cache");
    let parsed = Cli::try_parse_from([
        "bucketfs",
        "mount",
        &format!("s3://{bucket}"),
        mountpoint.to_str().unwrap(),
        "--foreground",
        "--metadata-ttl",
        "60",
        "--endpoint-url",
        &server.endpoint,
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .unwrap();
    let Command::Mount(args) = parsed.command else { panic!("a mount command") };
    let (sender, receiver) = mpsc::channel();
    let serving = std::thread::spawn(move || {
        bucketfs::mount::serve_wrapped(&args, |store| {
            let faulty = Arc::new(FaultyStore::new(store));
            sender.send(faulty.clone()).unwrap();
            faulty
        })
    });
    let _unmount = common::Unmount(&mountpoint);
    let faulty = receiver.recv_timeout(Duration::from_secs(30)).expect("the mount started");
    wait_for(Duration::from_secs(30), "the mount", || is_mounted(&mountpoint));

    // The kernel asks again, page by page, after a failed read, so the bodies stay short until
    // the faults are cleared.
    faulty.inject("get_range", Fault::Truncate, 10_000);
    assert_eq!(errno(std::fs::read(mountpoint.join("data.bin"))), libc::EIO, "a short body is never passed on");
    let short_bodies = faulty.injected();
    faulty.clear();
    assert!(std::fs::read(mountpoint.join("data.bin")).unwrap() == data, "the next read starts afresh");

    let mut file = File::create(mountpoint.join("report.txt")).unwrap();
    file.write_all(b"kept").unwrap();
    faulty.inject("put_object", Fault::Fail(S3Error::Other("HTTP 503 SlowDown: retries exhausted".into())), 1);
    assert_eq!(file.sync_all().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    drop(file);
    assert_eq!(server.get(&bucket, "report.txt").unwrap(), b"kept", "the close after the failed fsync uploaded it");

    // Replacing a file (`cp`, `>`, `dd`) never fetches the old contents it throws away.
    faulty.inject("get_range", Fault::Fail(S3Error::Unreachable("no GET expected".into())), 1);
    let mut file = File::create(mountpoint.join("old.bin")).unwrap();
    file.write_all(b"replaced").unwrap();
    assert_eq!(common::close(file), 0);
    assert_eq!(server.get(&bucket, "old.bin").unwrap(), b"replaced");
    assert_eq!(faulty.injected(), short_bodies + 1, "only the PUT failed so far: no GET was asked for");
    faulty.clear();

    // A bug that panics fails its own call with EIO and nothing else, whether it panics on a FUSE
    // thread (an fsync runs there until it first waits) or in the task of a read.
    let mut file = File::create(mountpoint.join("panics.txt")).unwrap();
    file.write_all(b"still staged").unwrap();
    faulty.inject("put_object", Fault::Panic, 1);
    assert_eq!(file.sync_all().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    assert_eq!(common::close(file), 0, "the data stayed staged for the close to upload");
    assert_eq!(server.get(&bucket, "panics.txt").unwrap(), b"still staged");
    // A first read far into a file awaits its own GET in the read's task. The kernel asks again,
    // page by page, after a failed read, so every GET panics until the faults are cleared.
    faulty.inject("get_range", Fault::Panic, 10_000);
    let mut page = [0u8; 4096];
    let far_in = 2 * 1024 * 1024;
    let reader = File::open(mountpoint.join("data.bin")).unwrap();
    assert_eq!(errno(reader.read_exact_at(&mut page, far_in)), libc::EIO);
    faulty.clear();
    let panicked_on = faulty.panicked_on();
    assert!(panicked_on[0].starts_with("fuser"), "the fsync panicked on a FUSE thread: {panicked_on:?}");
    let in_tasks = &panicked_on[1..];
    assert!(!in_tasks.is_empty() && in_tasks.iter().all(|t| !t.starts_with("fuser")), "{panicked_on:?}");
    reader.read_exact_at(&mut page, far_in).unwrap();
    assert!(page[..] == data[far_in as usize..far_in as usize + 4096], "the mount goes on reading");
    drop(reader);

    // One listing: the lookup's, whose page the readdir then starts from.
    faulty.inject("list_objects", Fault::Slow(Duration::from_secs(3)), 1);
    let listing = {
        let path = mountpoint.join("dir");
        std::thread::spawn(move || std::fs::read_dir(path).unwrap().count())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::metadata(mountpoint.join("data.bin")).unwrap().len(), data.len() as u64);
    assert!(!listing.is_finished(), "other calls are answered while a slow listing waits on S3");
    assert_eq!(listing.join().unwrap(), 1);

    assert_eq!(faulty.injected(), short_bodies + 1 + panicked_on.len() as u64 + 1);
    common::unmount(&mountpoint);
    let exit = serving.join().unwrap().expect("served");
    assert_eq!(exit, std::process::ExitCode::SUCCESS);
}
