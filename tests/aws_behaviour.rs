//! What only an AWS-like server can show (moto, or BUCKETFS_TEST_ENDPOINT; see the README):
//! folder markers, a directory beside an object of the same name, keys that cannot be paths,
//! 255-byte names, and If-Match pinning on a server that honours it.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use bucketfs::local_s3::sample_bytes as pseudo_random;
use common::{errno, names, Mount, Server};

#[test]
fn markers_are_directories_and_the_directory_wins() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("markers");
    server.put(&bucket, "empty/", "");
    server.put(&bucket, "marked/", "");
    server.put(&bucket, "marked/inside.txt", "inside");
    server.put(&bucket, "x", "the object x, hidden by the directory x/");
    server.put(&bucket, "x/y.txt", "y");
    server.put(&bucket, "x-1.txt", "sorts between x and x/");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);

    assert_eq!(names(&mount.path), ["empty", "marked", "x", "x-1.txt"]);
    assert!(std::fs::metadata(mount.join("empty")).unwrap().is_dir());
    assert_eq!(names(&mount.join("empty")), Vec::<String>::new());
    assert_eq!(names(&mount.join("marked")), ["inside.txt"]);
    assert!(std::fs::metadata(mount.join("x")).unwrap().is_dir());
    assert_eq!(names(&mount.join("x")), ["y.txt"]);
    assert_eq!(std::fs::read_to_string(mount.join("x-1.txt")).unwrap(), "sorts between x and x/");
}

#[test]
fn lookups_without_a_listing_also_let_the_directory_win() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("lookup");
    server.put(&bucket, "x", "object");
    server.put(&bucket, "x/y.txt", "y");
    server.put(&bucket, "lonely/", "");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    assert!(std::fs::metadata(mount.join("x")).unwrap().is_dir());
    assert!(std::fs::metadata(mount.join("lonely")).unwrap().is_dir());
    assert_eq!(std::fs::read_to_string(mount.join("x/y.txt")).unwrap(), "y");
}

#[test]
fn keys_that_cannot_be_paths_are_hidden_and_logged() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("hidden");
    let longest = "l".repeat(255);
    for key in ["ok.txt", "a//double.txt", "./dot.txt", "b/../up.txt", "c/./here.txt"] {
        server.put(&bucket, key, key);
    }
    server.put(&bucket, &format!("{}.txt", "z".repeat(260)), "too long");
    server.put(&bucket, &longest, "255 bytes is allowed");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    // `a/`, `b/` and `c/` are real prefixes; what is below them cannot be shown.
    assert_eq!(names(&mount.path), vec!["a".to_string(), "b".into(), "c".into(), longest.clone(), "ok.txt".into()]);
    assert_eq!(names(&mount.join("a")), Vec::<String>::new());
    assert_eq!(names(&mount.join("b")), Vec::<String>::new());
    assert_eq!(names(&mount.join("c")), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(mount.join(&longest)).unwrap(), "255 bytes is allowed");
    let log = mount.log_text();
    assert!(log.contains("hiding a key that cannot be a path"), "log: {log}");
    assert!(log.contains("\"a//\"") && log.contains("\"./\""), "log: {log}");
}

#[test]
fn if_match_pins_the_version_of_an_open_file() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("pinned");
    let size = 3 * 1024 * 1024;
    server.put(&bucket, "v.bin", pseudo_random(size, 1));
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let mut file = File::open(mount.join("v.bin")).unwrap();
    let mut first = vec![0; 4096];
    file.read_exact(&mut first).unwrap();
    assert_eq!(first, pseudo_random(size, 1)[..4096]);
    server.put(&bucket, "v.bin", pseudo_random(size, 2));
    file.seek(SeekFrom::Start(2 * 1024 * 1024 + 5)).unwrap();
    let mut later = vec![0; 4096];
    assert_eq!(errno(file.read_exact(&mut later)), libc::ESTALE, "{}", mount.log_text());
}
