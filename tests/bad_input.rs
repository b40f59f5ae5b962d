//! Awkward input: names that shells and S3 handle differently, names at and past the length
//! limit, keys other clients made that cannot be paths, empty objects, and objects larger than
//! the staging disk. Each works or gets its errno; nothing panics or takes the mount down.
//! (Invalid bucket names are in buckets.rs, malformed and huge control-file requests in
//! control.rs.)

mod common;

use std::fs::File;
use std::io::Write;

use common::{errno, is_mounted, names, Mount, Server};

#[test]
fn awkward_names_work_and_overlong_ones_are_enametoolong() {
    let server = Server::s3s();
    let bucket = server.bucket("awkward");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let fine = [
        "with space.txt",
        "new\nline",
        "tab\there",
        "ünïcödé ✓ 文字.txt",
        "-leading-dash",
        "percent%20and+plus?query#hash&amp;",
        "back\\slash",
        " leading and trailing ",
        "zero.bin",
    ];
    for name in fine {
        let contents = if name == "zero.bin" { "" } else { name };
        std::fs::write(mount.join(name), contents).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    let mut expected = fine.to_vec();
    expected.sort();
    assert_eq!(names(&mount.path), expected);
    for name in fine {
        let contents = if name == "zero.bin" { "" } else { name };
        assert_eq!(std::fs::read(mount.join(name)).unwrap(), contents.as_bytes(), "{name:?} reads back");
        assert_eq!(server.get(&bucket, name).unwrap(), contents.as_bytes(), "{name:?} is its own key");
    }
    assert_eq!(std::fs::metadata(mount.join("zero.bin")).unwrap().len(), 0, "an empty file is an empty object");

    let overlong = "o".repeat(256);
    let inside = mount.join(&overlong);
    assert_eq!(errno(File::create(&inside)), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::create_dir(&inside)), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::metadata(&inside)), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::rename(mount.join(fine[0]), &inside)), libc::ENAMETOOLONG);
    let multibyte = "é".repeat(128);
    assert_eq!(errno(File::create(mount.join(&multibyte))), libc::ENAMETOOLONG, "256 bytes in 128 characters");
    assert!(server.keys(&bucket).len() == fine.len(), "nothing overlong was sent");
    eprintln!("FIGURE bad input: {} awkward names and 5 overlong ones tried", fine.len());
    assert!(is_mounted(&mount.path));
}

/// s3s-fs cannot store names near 255 bytes or keys that end in `/` and hold bytes; moto can.
#[test]
fn names_of_255_bytes_and_keys_other_clients_made() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("made-elsewhere");
    server.put(&bucket, "dir/empty.dat", "");
    server.put(&bucket, "dir/not-a-marker/", "a key ending in a slash, with bytes");
    server.put(&bucket, "dir//twice", "x");
    server.put(&bucket, "dir/../escape", "x");
    server.put(&bucket, "dir/./here", "x");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let longest = ["n".repeat(255), format!("{}é", "m".repeat(253))];
    for name in &longest {
        std::fs::write(mount.join(name), name).unwrap();
        assert_eq!(server.get(&bucket, name).unwrap(), name.as_bytes());
    }
    let mut expected = vec!["dir".to_string()];
    expected.extend(longest.iter().cloned());
    expected.sort();
    assert_eq!(names(&mount.path), expected);
    let dir = mount.join("dir");
    assert_eq!(names(&dir), ["empty.dat", "not-a-marker"], "`//`, `..` and `.` keys stay hidden");
    assert_eq!(std::fs::read(dir.join("empty.dat")).unwrap(), b"");
    assert!(std::fs::metadata(dir.join("not-a-marker")).unwrap().is_dir(), "a key ending in / is a directory");
    assert_eq!(errno(std::fs::metadata(dir.join("escape"))), libc::ENOENT);
    eprintln!("FIGURE bad input: 2 names of 255 bytes and 5 keys made elsewhere tried");
}

#[test]
fn objects_larger_than_the_staging_disk_read_fine_and_refuse_changes_with_enospc() {
    let server = Server::s3s();
    let bucket = server.bucket("larger");
    let data = bucketfs::local_s3::sample_bytes(6 * 1024 * 1024, 12);
    server.put(&bucket, "large.bin", data.clone());
    let small = common::Tmpfs::new("1m");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--cache-dir", &small.path]);
    assert!(std::fs::read(mount.join("large.bin")).unwrap() == data, "reading stages nothing");
    let appended = File::options().append(true).open(mount.join("large.bin")).and_then(|mut f| f.write_all(b"more"));
    assert_eq!(errno(appended), libc::ENOSPC, "changing it needs a staged copy that does not fit");
    assert!(server.get(&bucket, "large.bin").unwrap() == data, "the object is untouched");
    assert!(std::fs::read(mount.join("large.bin")).unwrap() == data);
}
