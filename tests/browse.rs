//! Browsing and reading through the kernel against s3s-fs: the account root, nested prefixes,
//! paged listings, prefix mounts, name limits, stable inodes, byte-exact reads.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use bucketfs::local_s3::sample_bytes as pseudo_random;
use common::{errno, names, sh, stdout, wait_for, Mount, Server};

fn sample_bucket(server: &Server) -> String {
    let bucket = server.bucket("browse");
    server.put(&bucket, "a.txt", "hello from S3\n");
    server.put(&bucket, "photos/2019/beach.jpg", pseudo_random(70_000, 1));
    server.put(&bucket, "photos/2019/hill.jpg", pseudo_random(1000, 2));
    server.put(&bucket, "photos/2020/snow.jpg", pseudo_random(5000, 3));
    server.put(&bucket, "docs/reports/q1.csv", "month,sales\njan,10\n");
    bucket
}

#[test]
fn nested_prefixes_browse_and_read_with_shell_tools() {
    let server = Server::s3s();
    let bucket = sample_bucket(&server);
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let root = mount.path.display().to_string();

    assert_eq!(names(&mount.path), ["a.txt", "docs", "photos"]);
    assert_eq!(names(&mount.join("photos")), ["2019", "2020"]);
    assert_eq!(names(&mount.join("photos/2019")), ["beach.jpg", "hill.jpg"]);
    assert_eq!(std::fs::read_to_string(mount.join("a.txt")).unwrap(), "hello from S3\n");

    let meta = std::fs::metadata(mount.join("photos/2019/beach.jpg")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 70_000);
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert!(std::fs::metadata(mount.join("photos")).unwrap().is_dir());

    let out = sh(&format!("cat {root}/docs/reports/q1.csv"));
    assert_eq!(stdout(&out), "month,sales\njan,10\n");
    let out = sh(&format!("cd {root} && find . | sort"));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            ".",
            "./a.txt",
            "./docs",
            "./docs/reports",
            "./docs/reports/q1.csv",
            "./photos",
            "./photos/2019",
            "./photos/2019/beach.jpg",
            "./photos/2019/hill.jpg",
            "./photos/2020",
            "./photos/2020/snow.jpg",
        ]
    );
    let out = sh(&format!("du -sb --apparent-size {root} | cut -f1"));
    let expected = 14 + 70_000 + 1000 + 5000 + 19;
    assert_eq!(stdout(&out).trim(), expected.to_string());
    let copy = tempfile::NamedTempFile::new().unwrap();
    let out = sh(&format!(
        "cp {root}/photos/2019/beach.jpg {0} && cmp {root}/photos/2019/beach.jpg {0}",
        copy.path().display()
    ));
    assert!(out.status.success(), "cp/cmp failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(copy.path()).unwrap(), pseudo_random(70_000, 1));
    let out = sh(&format!("stat -c %s {root}/photos/2020/snow.jpg"));
    assert_eq!(stdout(&out).trim(), "5000");
}

#[test]
fn account_root_lists_buckets() {
    let server = Server::s3s();
    let first = sample_bucket(&server);
    let second = server.bucket("second");
    server.put(&second, "only.txt", "x");
    let mount = Mount::new(&server, "s3://", &[]);
    let buckets = names(&mount.path);
    assert!(buckets.contains(&first) && buckets.contains(&second), "buckets: {buckets:?}");
    assert_eq!(names(&mount.join(&second)), ["only.txt"]);
    assert_eq!(std::fs::read_to_string(mount.join(&first).join("a.txt")).unwrap(), "hello from S3\n");
    assert_eq!(errno(std::fs::metadata(mount.join("no-such-bucket-here"))), libc::ENOENT);
}

#[test]
fn directory_of_many_pages_lists_completely() {
    let server = Server::s3s();
    let bucket = server.bucket("pages");
    let objects: Vec<(String, Vec<u8>)> =
        (0..2600).map(|n| (format!("many/file-{n:05}.txt"), format!("{n}").into_bytes())).collect();
    server.put_many(&bucket, objects);
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let listed = names(&mount.join("many"));
    let expected: Vec<String> = (0..2600).map(|n| format!("file-{n:05}.txt")).collect();
    assert_eq!(listed, expected);
    let out = sh(&format!("ls -l {}/many | grep -c '^-'", mount.path.display()));
    assert_eq!(stdout(&out).trim(), "2600");
    assert_eq!(std::fs::read_to_string(mount.join("many/file-02599.txt")).unwrap(), "2599");
}

#[test]
fn prefix_mount_shows_only_the_prefix() {
    let server = Server::s3s();
    let bucket = sample_bucket(&server);
    let photos = Mount::new(&server, &format!("s3://{bucket}/photos/"), &[]);
    assert_eq!(names(&photos.path), ["2019", "2020"]);
    assert_eq!(std::fs::metadata(photos.join("2020/snow.jpg")).unwrap().len(), 5000);
    assert_eq!(errno(std::fs::metadata(photos.join("a.txt"))), libc::ENOENT);
    let year = Mount::new(&server, &format!("s3://{bucket}/photos/2019"), &[]);
    assert_eq!(names(&year.path), ["beach.jpg", "hill.jpg"]);
    assert_eq!(std::fs::read(year.join("hill.jpg")).unwrap(), pseudo_random(1000, 2));
}

#[test]
fn name_limits_and_missing_names() {
    let server = Server::s3s();
    let bucket = server.bucket("names");
    // s3s-fs cannot store long file names (it keeps metadata in files named after the key);
    // the 255-byte case runs on moto in aws_behaviour.rs.
    let longest = "n".repeat(120);
    server.put(&bucket, &format!("dir/{longest}"), "longest name");
    server.put(&bucket, "dir/with space and ünïcode ✓.txt", "fine");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    assert_eq!(std::fs::read_to_string(mount.join("dir").join(&longest)).unwrap(), "longest name");
    assert_eq!(std::fs::read_to_string(mount.join("dir/with space and ünïcode ✓.txt")).unwrap(), "fine");
    assert_eq!(names(&mount.join("dir")).len(), 2);
    assert_eq!(errno(std::fs::metadata(mount.join("dir").join("n".repeat(256)))), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::metadata(mount.join("dir/missing"))), libc::ENOENT);
    assert_eq!(errno(std::fs::read_dir(mount.join("dir/missing"))), libc::ENOENT);
    assert_eq!(errno(std::fs::read_dir(mount.join("dir").join(&longest))), libc::ENOTDIR);
}

#[test]
fn inode_numbers_stay_stable() {
    let server = Server::s3s();
    let bucket = sample_bucket(&server);
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--metadata-ttl", "0.1"]);
    let inode = |p: &str| std::fs::metadata(mount.join(p)).unwrap().ino();
    let first = [inode("a.txt"), inode("photos"), inode("photos/2019/beach.jpg")];
    assert_eq!(names(&mount.join("photos/2019")).len(), 2);
    std::thread::sleep(Duration::from_millis(300));
    let again = [inode("a.txt"), inode("photos"), inode("photos/2019/beach.jpg")];
    assert_eq!(first, again);
    assert_ne!(first[0], first[1]);
}

#[test]
fn random_offset_reads_match_byte_for_byte() {
    let server = Server::s3s();
    let bucket = server.bucket("random");
    let data = pseudo_random(24 * 1024 * 1024 + 123, 42);
    server.put(&bucket, "big.bin", data.clone());
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let mut file = File::open(mount.join("big.bin")).unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let offset = (rng % data.len() as u64) as usize;
        let len = ((rng >> 40) % 300_000) as usize + 1;
        let end = (offset + len).min(data.len());
        let mut buf = vec![0; end - offset];
        file.seek(SeekFrom::Start(offset as u64)).unwrap();
        file.read_exact(&mut buf).unwrap();
        assert!(buf == data[offset..end], "bytes differ at {offset}..{end}");
    }
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(data.len() as u64 - 10)).unwrap();
    file.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, data[data.len() - 10..]);
    let mut whole = Vec::new();
    File::open(mount.join("big.bin")).unwrap().read_to_end(&mut whole).unwrap();
    assert!(whole == data, "sequential read differs");
}

/// Pages of the file open as `file` that the kernel holds in its page cache.
fn cached_pages(file: &File, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    let page = 4096;
    // SAFETY: a read-only shared mapping of an open file, never touched, only asked about, and
    // unmapped before returning; `resident` has one byte per page of it.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut resident = vec![0u8; len.div_ceil(page)];
        let asked = libc::mincore(map, len, resident.as_mut_ptr());
        libc::munmap(map, len);
        assert_eq!(asked, 0, "mincore: {}", std::io::Error::last_os_error());
        resident.iter().filter(|r| *r & 1 == 1).count()
    }
}

#[test]
fn a_sequential_reader_leaves_little_in_the_page_cache_and_can_read_again() {
    let server = Server::s3s();
    let bucket = server.bucket("behind");
    let data = pseudo_random(48 * 1024 * 1024 + 321, 7);
    server.put(&bucket, "big.bin", data.clone());
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let mut file = File::open(mount.join("big.bin")).unwrap();
    let mut whole = Vec::new();
    file.read_to_end(&mut whole).unwrap();
    assert!(whole == data, "sequential read differs");
    let pages = data.len().div_ceil(4096);
    // The kernel is told from a thread of the daemon's, a moment after the reads.
    wait_for(Duration::from_secs(5), "fewer than half the pages read to stay cached", || {
        cached_pages(&file, data.len()) < pages / 2
    });
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    file.read_to_end(&mut again).unwrap();
    assert!(again == data, "a second read through the same handle differs");
}

#[test]
fn object_replaced_under_open_file_is_an_error_not_a_mix() {
    let server = Server::s3s();
    let bucket = server.bucket("replace");
    let size = 8 * 1024 * 1024;
    server.put(&bucket, "changing.bin", pseudo_random(size, 1));
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let mut file = File::open(mount.join("changing.bin")).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, pseudo_random(size, 1)[..4096]);
    server.put(&bucket, "changing.bin", pseudo_random(size, 2));
    let mut later = vec![0; 4096];
    file.seek(SeekFrom::Start(6 * 1024 * 1024)).unwrap();
    let result = file.read_exact(&mut later);
    assert_eq!(errno(result), libc::ESTALE);
    drop(file);
    std::thread::sleep(Duration::from_millis(1100));
    let reopened = std::fs::read(mount.join("changing.bin")).unwrap();
    assert!(reopened == pseudo_random(size, 2), "a new open reads the new version whole");
}
