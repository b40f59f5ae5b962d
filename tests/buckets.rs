//! The root of an `s3://` mount: Create Bucket by mkdir, Delete Bucket by rmdir, and nothing
//! else. Errnos follow AWS, which moto answers like (409 BucketAlreadyOwnedByYou,
//! BucketNotEmpty); the non-empty refusal also runs on s3s-fs, whose DeleteBucket would delete
//! everything.

mod common;

use common::{errno, names, Mount, Server};

fn raw_buckets(server: &Server) -> Vec<String> {
    let out = server.block_on(server.s3.list_buckets().send()).unwrap();
    out.buckets().iter().filter_map(|b| b.name().map(str::to_string)).collect()
}

#[test]
fn mkdir_and_rmdir_create_and_delete_buckets() {
    let Some(server) = Server::aws_like() else { return };
    let existing = server.bucket("taken");
    let mount = Mount::new(&server, "s3://", &[]);
    let name = format!("made-by-mkdir-{}", std::process::id());

    std::fs::create_dir(mount.join(&name)).unwrap();
    assert!(raw_buckets(&server).contains(&name));
    assert!(names(&mount.path).contains(&name), "the new bucket shows at once");
    std::fs::write(mount.join(&name).join("inside.txt"), "x").unwrap();

    assert_eq!(errno(std::fs::create_dir(mount.join(&existing))), libc::EEXIST);
    for bad in ["UPPER-case", "ab", "two..dots", "192.168.1.1", "xn--punycode", "ends-with-s3alias-s3alias"] {
        assert_eq!(errno(std::fs::create_dir(mount.join(bad))), libc::EINVAL, "{bad}");
        assert!(!raw_buckets(&server).iter().any(|b| b == bad), "{bad} was sent");
    }

    assert_eq!(errno(std::fs::remove_dir(mount.join(&name))), libc::ENOTEMPTY);
    assert_eq!(server.get(&name, "inside.txt").unwrap(), b"x", "contents untouched");
    std::fs::remove_file(mount.join(&name).join("inside.txt")).unwrap();
    std::fs::remove_dir(mount.join(&name)).unwrap();
    assert!(!raw_buckets(&server).contains(&name));
    assert!(!names(&mount.path).contains(&name));
}

#[test]
fn a_bucket_with_an_unfinished_upload_is_not_empty() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("uploading");
    server.block_on(server.s3.create_multipart_upload().bucket(&bucket).key("half").send()).unwrap();
    let mount = Mount::new(&server, "s3://", &[]);
    assert_eq!(errno(std::fs::remove_dir(mount.join(&bucket))), libc::ENOTEMPTY);
    assert!(raw_buckets(&server).contains(&bucket));
}

#[test]
fn rmdir_refuses_a_bucket_with_objects_even_where_the_server_would_not() {
    let server = Server::s3s();
    let bucket = server.bucket("full");
    server.put(&bucket, "keep/me.txt", "kept");
    let mount = Mount::new(&server, "s3://", &[]);
    assert_eq!(errno(std::fs::remove_dir(mount.join(&bucket))), libc::ENOTEMPTY);
    assert_eq!(server.get(&bucket, "keep/me.txt").unwrap(), b"kept");
}

#[test]
fn the_root_holds_only_buckets() {
    let server = Server::s3s();
    let bucket = server.bucket("rooted");
    server.put(&bucket, "f.txt", "f");
    let mount = Mount::new(&server, "s3://", &[]);
    assert_eq!(errno(std::fs::write(mount.join("file-at-root"), "x")), libc::EPERM);
    assert_eq!(errno(std::fs::rename(mount.join(&bucket), mount.join("renamed-bucket"))), libc::EPERM);
    assert_eq!(errno(std::os::unix::fs::symlink(&bucket, mount.join("link"))), libc::EPERM);
    assert_eq!(errno(std::fs::rename(mount.join(&bucket).join("f.txt"), mount.join("f.txt"))), libc::EPERM);
    assert_eq!(server.get(&bucket, "f.txt").unwrap(), b"f");
    let read_only = Mount::new(&server, "s3://", &["--read-only"]);
    assert_eq!(errno(std::fs::create_dir(read_only.join("new-bucket-ro"))), libc::EROFS);
}
