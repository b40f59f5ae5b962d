//! Writing through the kernel against s3s-fs, checked through the raw S3 API: uploads on close
//! (single and multipart), appends, truncation, random writes against a model, rm and mv,
//! headers, and failed uploads that keep their data for a retry.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use bucketfs::local_s3::sample_bytes as pseudo_random;
use common::{close, errno, names, sh, stdout, Mount, Server, DENIED_NAME};

fn mounted(label: &str) -> (Server, String, Mount) {
    let server = Server::s3s();
    let bucket = server.bucket(label);
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    (server, bucket, mount)
}

#[test]
fn cp_of_a_multipart_sized_file_arrives_whole() {
    let (server, bucket, mount) = mounted("cp");
    let data = pseudo_random(40 * 1024 * 1024 + 17, 9);
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), &data).unwrap();
    let out = sh(&format!("cp {} {}/big.bin", local.path().display(), mount.path.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.get(&bucket, "big.bin").unwrap() == data, "raw GET differs");
    assert!(std::fs::read(mount.join("big.bin")).unwrap() == data, "read back differs");
    assert_eq!(std::fs::metadata(mount.join("big.bin")).unwrap().len(), data.len() as u64);
}

#[test]
fn echo_append_and_truncate_from_the_shell() {
    let (server, bucket, mount) = mounted("shell");
    let root = mount.path.display();
    assert!(sh(&format!("echo hello > {root}/notes.txt")).status.success());
    assert_eq!(server.get(&bucket, "notes.txt").unwrap(), b"hello\n");
    assert!(sh(&format!("echo world >> {root}/notes.txt")).status.success());
    assert_eq!(server.get(&bucket, "notes.txt").unwrap(), b"hello\nworld\n");
    assert!(sh(&format!("truncate -s 3 {root}/notes.txt")).status.success());
    assert_eq!(server.get(&bucket, "notes.txt").unwrap(), b"hel");
    assert!(sh(&format!("truncate -s 5 {root}/notes.txt")).status.success());
    assert_eq!(server.get(&bucket, "notes.txt").unwrap(), b"hel\0\0");
    assert!(sh(&format!("echo replaced > {root}/notes.txt")).status.success());
    assert_eq!(std::fs::read_to_string(mount.join("notes.txt")).unwrap(), "replaced\n");
    assert!(sh(&format!("touch {root}/empty")).status.success());
    assert_eq!(server.get(&bucket, "empty").unwrap(), b"");
    assert!(sh(&format!("sed -i 's/replaced/edited/' {root}/notes.txt")).status.success());
    assert_eq!(server.get(&bucket, "notes.txt").unwrap(), b"edited\n");
    assert_eq!(names(&mount.path), ["empty", "notes.txt"], "sed -i leaves no temporary file behind");
}

#[test]
fn random_writes_and_truncates_match_a_model() {
    let (server, bucket, mount) = mounted("fsx");
    let path = mount.join("model.bin");
    let mut model: Vec<u8> = Vec::new();
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    File::create(&path).unwrap();
    for round in 0..8 {
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        for step in 0..12 {
            match next(4) {
                0 | 1 => {
                    let offset = next(3 * 1024 * 1024) as usize;
                    let data = pseudo_random(next(200_000) as usize + 1, round * 100 + step);
                    file.write_all_at(&data, offset as u64).unwrap();
                    if model.len() < offset + data.len() {
                        model.resize(offset + data.len(), 0);
                    }
                    model[offset..offset + data.len()].copy_from_slice(&data);
                }
                2 => {
                    let size = next(3 * 1024 * 1024) as usize;
                    file.set_len(size as u64).unwrap();
                    model.resize(size, 0);
                }
                _ => {
                    let offset = next(model.len() as u64 + 1);
                    let mut buf = vec![0; next(300_000) as usize];
                    let n = file.read_at(&mut buf, offset).unwrap();
                    let end = (offset as usize + buf.len()).min(model.len());
                    assert_eq!(n, end.saturating_sub(offset as usize));
                    assert!(buf[..n] == model[offset as usize..end], "read-back differs in round {round}");
                }
            }
        }
        assert_eq!(close(file), 0);
        assert!(server.get(&bucket, "model.bin").unwrap() == model, "S3 differs from the model after round {round}");
    }
    let offset = model.len() / 2;
    let chunk = pseudo_random(5000, 77);
    let chunk_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(chunk_file.path(), &chunk).unwrap();
    let dd = format!(
        "dd if={} of={} bs=5000 seek={offset} oflag=seek_bytes conv=notrunc status=none",
        chunk_file.path().display(),
        path.display()
    );
    assert!(sh(&dd).status.success());
    if model.len() < offset + chunk.len() {
        model.resize(offset + chunk.len(), 0);
    }
    model[offset..offset + chunk.len()].copy_from_slice(&chunk);
    assert!(server.get(&bucket, "model.bin").unwrap() == model, "dd conv=notrunc");
}

#[test]
fn a_file_being_written_reads_back_through_the_mount() {
    let (server, bucket, mount) = mounted("readback");
    let mut writer = File::create(mount.join("live.txt")).unwrap();
    writer.write_all(b"first part;").unwrap();
    assert_eq!(std::fs::read_to_string(mount.join("live.txt")).unwrap(), "first part;");
    assert_eq!(std::fs::metadata(mount.join("live.txt")).unwrap().len(), 11);
    writer.write_all(b" second").unwrap();
    let mut reader = File::open(mount.join("live.txt")).unwrap();
    let mut seen = String::new();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "first part; second");
    assert_eq!(close(writer), 0);
    assert_eq!(server.get(&bucket, "live.txt").unwrap(), b"first part; second");
}

#[test]
fn rm_and_mv_of_files_and_directories() {
    let (server, bucket, mount) = mounted("mv");
    server.put(&bucket, "a.txt", "a");
    let tree: Vec<(String, Vec<u8>)> =
        (0..150).map(|n| (format!("tree/sub{}/f{n}.txt", n % 3), format!("file {n}").into_bytes())).collect();
    server.put_many(&bucket, tree);

    std::fs::rename(mount.join("a.txt"), mount.join("b.txt")).unwrap();
    assert_eq!(server.get(&bucket, "a.txt"), None);
    assert_eq!(server.get(&bucket, "b.txt").unwrap(), b"a");
    assert_eq!(std::fs::read_to_string(mount.join("b.txt")).unwrap(), "a");
    assert_eq!(errno(std::fs::metadata(mount.join("a.txt"))), libc::ENOENT);

    std::fs::rename(mount.join("tree"), mount.join("moved")).unwrap();
    assert_eq!(errno(std::fs::metadata(mount.join("tree"))), libc::ENOENT);
    let keys = server.keys(&bucket);
    assert_eq!(keys.iter().filter(|k| k.starts_with("moved/")).count(), 150, "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("tree/")), "{keys:?}");
    assert_eq!(std::fs::read_to_string(mount.join("moved/sub1/f4.txt")).unwrap(), "file 4");

    std::fs::remove_file(mount.join("b.txt")).unwrap();
    assert_eq!(server.get(&bucket, "b.txt"), None);
    assert_eq!(errno(std::fs::metadata(mount.join("b.txt"))), libc::ENOENT);
    assert_eq!(errno(std::fs::remove_dir(mount.join("moved"))), libc::ENOTEMPTY);
    assert_eq!(errno(std::fs::remove_file(mount.join("moved"))), libc::EISDIR);
    assert_eq!(names(&mount.path), ["moved"]);
}

#[test]
fn an_emptied_directory_is_no_object_and_can_be_made_again_from_another_mount() {
    let (server, bucket, mount) = mounted("remake");
    std::fs::create_dir(mount.join("made")).unwrap();
    std::fs::write(mount.join("made/f.txt"), "x").unwrap();
    std::fs::remove_file(mount.join("made/f.txt")).unwrap();
    // s3s-fs keeps `made` as an empty directory on disk. S3 has no object of that name, and the
    // local server must say so (404), not fail the HEAD (500), or every later lookup is EIO.
    let head = server.block_on(server.s3.head_object().bucket(&bucket).key("made").send());
    assert_eq!(head.err().and_then(|e| e.raw_response().map(|r| r.status().as_u16())), Some(404));
    // A second mount knows nothing of the first, so its lookups go to S3. s3s-fs cannot list a
    // marker, so the empty directory is not seen there (on S3 it is), but it can be made again.
    let other = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    assert_eq!(errno(std::fs::metadata(other.join("made"))), libc::ENOENT);
    std::fs::create_dir(other.join("made")).unwrap();
    std::fs::write(other.join("made/again.txt"), "again").unwrap();
    assert_eq!(server.get(&bucket, "made/again.txt").unwrap(), b"again");
}

#[test]
fn uploads_carry_content_type_and_mount_headers() {
    let server = Server::s3s();
    let bucket = server.bucket("headers");
    let options = ["--header", "Cache-Control: max-age=60", "--header", "x-amz-meta-team: storage"];
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &options);
    std::fs::write(mount.join("page.html"), "<p>hi</p>").unwrap();
    std::fs::write(mount.join("data.json"), "{}").unwrap();
    let head = server.head(&bucket, "page.html");
    assert_eq!(head.content_type(), Some("text/html"));
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(head.metadata().and_then(|m| m.get("team")).map(String::as_str), Some("storage"));
    assert_eq!(server.head(&bucket, "data.json").content_type(), Some("application/json"));

    let dir = tempfile::TempDir::new().unwrap();
    let bad = Mount::try_new(&server, &format!("s3://{bucket}"), &["--header", "Nonsense"]);
    let out = bad.err().expect("a bad header refuses the mount");
    assert!(String::from_utf8_lossy(&out.stderr).contains("'Name: value'"));
    drop(dir);
}

#[test]
fn a_failed_upload_errors_on_close_keeps_the_data_and_retries() {
    let mut server = Server::s3s();
    let bucket = server.bucket("retry");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--request-timeout", "2"]);
    let data = pseudo_random(3 * 1024 * 1024, 5);
    let mut file = File::create(mount.join("precious.bin")).unwrap();
    file.write_all(&data).unwrap();
    server.stop();
    assert_eq!(close(file), libc::EIO);
    assert!(std::fs::read(mount.join("precious.bin")).unwrap() == data, "the data is still there");
    server.restart();
    let reopened = File::open(mount.join("precious.bin")).unwrap();
    assert_eq!(close(reopened), 0, "open-and-close retries the upload");
    assert!(server.get(&bucket, "precious.bin").unwrap() == data, "every byte arrived");
    assert!(mount.log_text().contains("the data stays staged"));
}

#[test]
fn a_denied_upload_is_eacces() {
    let (server, bucket, mount) = mounted("denied");
    let name = format!("{DENIED_NAME}report.txt");
    let mut file = File::create(mount.join(&name)).unwrap();
    file.write_all(b"secret").unwrap();
    assert_eq!(close(file), libc::EACCES);
    assert_eq!(server.get(&bucket, &name), None);
    let out = sh(&format!("cp /etc/hostname {}/{DENIED_NAME}copy", mount.path.display()));
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

#[test]
fn links_and_special_files_are_refused() {
    let (_server, _bucket, mount) = mounted("links");
    std::fs::write(mount.join("target"), "t").unwrap();
    assert_eq!(errno(std::os::unix::fs::symlink("target", mount.join("link"))), libc::EPERM);
    assert_eq!(errno(std::fs::hard_link(mount.join("target"), mount.join("hard"))), libc::EPERM);
    let out = sh(&format!("mkfifo {}/fifo", mount.path.display()));
    assert!(!out.status.success());
}

#[test]
fn chmod_chown_and_times_are_kept_while_mounted() {
    let (_server, _bucket, mount) = mounted("attrs");
    std::fs::write(mount.join("f"), "x").unwrap();
    let root = mount.path.display();
    assert!(sh(&format!("chmod 0600 {root}/f && chown 1234:5678 {root}/f && touch -d 2001-02-03 {root}/f"))
        .status
        .success());
    let out = sh(&format!("stat -c '%a %u %g %y' {root}/f"));
    assert!(stdout(&out).starts_with("600 1234 5678 2001-02-03"), "{}", stdout(&out));
    let local = tempfile::TempDir::new().unwrap();
    let out = sh(&format!("cp -p {root}/f {0}/f && stat -c %a {0}/f", local.path().display()));
    assert_eq!(stdout(&out).trim(), "600");
}

#[test]
fn unmount_finishes_pending_uploads() {
    let mut server = Server::s3s();
    let bucket = server.bucket("pending");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--request-timeout", "2"]);
    let mut file = File::create(mount.join("late.txt")).unwrap();
    file.write_all(b"uploaded at unmount").unwrap();
    server.stop();
    assert_eq!(close(file), libc::EIO);
    server.restart();
    // The staging directory lives in the mount's temporary directory: keep it until the daemon
    // has read the data back.
    mount.unmount();
    common::wait_for(std::time::Duration::from_secs(30), "the upload at unmount", || {
        server.get(&bucket, "late.txt").is_some()
    });
    assert_eq!(server.get(&bucket, "late.txt").unwrap(), b"uploaded at unmount");
}

/// `dd conv=fsync` and `umount` straight after, as scripts do: the last close's RELEASE reaches
/// the kernel before the unmount ends the connection, and nothing is left staged.
#[test]
fn an_unmount_right_after_the_last_close_leaves_nothing_behind() {
    let server = Server::s3s();
    let bucket = server.bucket("quick-unmount");
    let cache = tempfile::TempDir::new().unwrap();
    let cache_arg = cache.path().to_string_lossy().into_owned();
    for round in 0..3 {
        let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--cache-dir", &cache_arg]);
        let daemon = common::daemon_pid(&mount.path);
        let data = pseudo_random(16 * 1024 * 1024, round);
        let mut file = File::create(mount.join("copied.bin")).unwrap();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
        assert_eq!(close(file), 0);
        mount.unmount();
        let gone = format!("/proc/{daemon}");
        common::wait_for(std::time::Duration::from_secs(30), "the daemon to exit", || {
            !std::path::Path::new(&gone).exists()
        });
        assert!(server.get(&bucket, "copied.bin").unwrap() == data, "round {round}: uploaded whole");
        assert_eq!(mount.warnings(), Vec::<String>::new(), "round {round}");
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "round {round}: left behind {left:?}");
    }
}

#[test]
fn staging_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::s3s();
    let bucket = server.bucket("private");
    let cache = tempfile::TempDir::new().unwrap();
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--cache-dir", &cache_arg]);
    let mut file = File::create(mount.join("open.txt")).unwrap();
    file.write_all(b"staged").unwrap();
    let area = std::fs::read_dir(cache.path()).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::metadata(&area).unwrap().permissions().mode() & 0o777, 0o700);
    let data = std::fs::read_dir(&area).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().unwrap() == "data");
    let data = data.expect("a staging file");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o600);
    let key_file = data.with_extension("key");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), format!("s3://{bucket}/open.txt\n"));
    assert_eq!(close(file), 0);
    // The kernel sends RELEASE after close(2) returns. The files stay as a spare for the next
    // file: emptied, the key first, so that nothing names the object any more.
    common::wait_for(std::time::Duration::from_secs(10), "the staging file to be emptied", || {
        std::fs::metadata(&key_file).unwrap().len() == 0
    });
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 0);
}

#[test]
fn a_full_staging_disk_is_enospc_and_uploads_nothing() {
    let (server, bucket, _) = mounted("unused");
    server.put(&bucket, "kept.bin", "the previous version");
    let small = common::Tmpfs::new("1m");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &["--cache-dir", &small.path]);
    let mut file = File::create(mount.join("kept.bin")).unwrap();
    let result = file.write_all(&pseudo_random(4 * 1024 * 1024, 1));
    assert_eq!(errno(result), libc::ENOSPC);
    assert_eq!(close(file), libc::ENOSPC);
    assert_eq!(server.get(&bucket, "kept.bin").unwrap(), b"the previous version");
    drop(mount);
}

#[test]
fn two_writers_of_one_file_share_it_and_the_last_close_uploads_both() {
    let (server, bucket, mount) = mounted("shared");
    let first = OpenOptions::new().write(true).create(true).truncate(true).open(mount.join("f")).unwrap();
    let second = OpenOptions::new().write(true).open(mount.join("f")).unwrap();
    first.write_all_at(b"AAAA", 0).unwrap();
    second.write_all_at(b"BB", 4).unwrap();
    assert_eq!(close(first), 0);
    assert_eq!(server.get(&bucket, "f").unwrap(), b"AAAABB");
    second.write_all_at(b"CC", 6).unwrap();
    assert_eq!(close(second), 0);
    assert_eq!(server.get(&bucket, "f").unwrap(), b"AAAABBCC");
}

#[test]
fn a_script_opening_files_is_told_they_are_not_terminals_and_logs_nothing() {
    let (server, bucket, mount) = mounted("python-open");
    // Python asks each file it opens whether it is a terminal (TCGETS), before any read or write.
    let script = format!(
        "import os\nfor n in range(3):\n    with open('{0}/f%d' % n, 'w') as f: f.write('x')\n\
         print(open('{0}/f2').read())",
        mount.path.display()
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out).trim(), "x");
    assert_eq!(server.get(&bucket, "f0").unwrap(), b"x");

    let file = File::open(mount.join("f1")).unwrap();
    let mut terminal = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: TCGETS writes at most one termios into the buffer it is given.
    let asked = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::TCGETS, terminal.as_mut_ptr()) };
    assert_eq!(asked, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOTTY));
    drop(file);
    assert_eq!(mount.warnings(), Vec::<String>::new());
}
