//! Access: other users are kept out unless `--allow-other`, and then the kernel checks each
//! file's mode; credentials, signatures and session tokens never reach the log, even when
//! every crate logs at trace level.

mod common;

use common::{as_nobody, bucketfs, sh, stdout, Mount, Server};

#[test]
fn other_users_are_kept_out_unless_allow_other_and_then_file_modes_apply() {
    let server = Server::s3s();
    let bucket = server.bucket("access");
    server.put(&bucket, "public.txt", "for everyone");
    server.put(&bucket, "private.txt", "for the owner");
    let closed = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let out = as_nobody(&format!("cat {}/public.txt", closed.path.display()));
    assert!(!out.status.success(), "another user reads nothing without --allow-other");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    drop(closed);

    let open = Mount::new(&server, &format!("s3://{bucket}"), &["--allow-other"]);
    let root = open.path.display();
    assert!(sh(&format!("chmod 0600 {root}/private.txt")).status.success());
    let out = as_nobody(&format!("cat {root}/public.txt"));
    assert_eq!(stdout(&out), "for everyone", "{out:?}");
    for (script, what) in [
        (format!("cat {root}/private.txt"), "reading a 0600 file of another user"),
        (format!("echo x > {root}/public.txt"), "writing a 0644 file of another user"),
        (format!("echo x > {root}/new.txt"), "creating in a 0755 directory of another user"),
        (format!("rm {root}/public.txt"), "deleting in it"),
        (format!("cat {root}/.s3api"), "opening the control file"),
    ] {
        let out = as_nobody(&script);
        assert!(!out.status.success(), "{what} is refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{what}: {out:?}");
    }
    assert_eq!(server.get(&bucket, "public.txt").unwrap(), b"for everyone");
    assert_eq!(server.get(&bucket, "new.txt"), None);
}

const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLEsessionTOKENthatMustNeverBeLogged0123456789";

/// Lines of `log` that show a secret: the secret key, the session token, or a signature.
fn secrets_in(log: &str, secret_key: &str) -> Vec<String> {
    log.lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            line.contains(secret_key)
                || line.contains(SESSION_TOKEN)
                || lower.contains("signature=")
                || lower.contains("x-amz-security-token: ")
                || lower.contains("authorization: aws4")
                || lower.contains("\"authorization\": \"aws4")
                || has_signature_value(&lower)
        })
        .map(|line| line.chars().take(300).collect())
        .collect()
}

/// A field named like a signature holding 64 hex digits.
fn has_signature_value(lower: &str) -> bool {
    lower.match_indices("signature").any(|(at, _)| {
        let rest = lower[at + "signature".len()..].trim_start_matches(|c: char| !c.is_ascii_hexdigit());
        rest.len() >= 64 && rest[..64].chars().all(|c| c.is_ascii_hexdigit())
    })
}

#[test]
fn credentials_and_signatures_never_reach_the_log_at_trace_level() {
    let server = Server::s3s();
    let bucket = server.bucket("secrets");
    server.put(&bucket, "dir/seen.txt", "read me");
    let dir = tempfile::TempDir::new().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = dir.path().join("trace.log");
    let mut mount = bucketfs();
    mount
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("RUST_LOG", "trace")
        .args(["mount", &format!("s3://{bucket}")])
        .arg(&mountpoint)
        .args(["--endpoint-url", &server.endpoint, "--log-file"])
        .arg(&log);
    let out = mount.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let _unmount = common::Unmount(&mountpoint);
    let root = mountpoint.display();
    let big = dir.path().join("big.bin");
    let big_shown = big.display();
    std::fs::write(&big, bucketfs::local_s3::sample_bytes(20 * 1024 * 1024, 2)).unwrap();
    let work = format!(
        "set -e; ls -l {root} {root}/dir; cat {root}/dir/seen.txt; echo new > {root}/new.txt; \
         cp {big_shown} {root}/big.bin; cmp {big_shown} {root}/big.bin; mv {root}/new.txt {root}/dir/moved.txt; \
         truncate -s 3 {root}/dir/moved.txt; rm {root}/dir/moved.txt; \
         exec 3<>{root}/.s3api; printf 'GET /{bucket}?list-type=2\\n\\n' >&3; cat <&3 | head -c 100"
    );
    let out = sh(&work);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("HTTP/1.1 200"), "the control file answered");
    let api = bucketfs()
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("RUST_LOG", "trace")
        .args(["api", "GET", &format!("/{bucket}/dir/seen.txt"), "--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    assert!(stdout(&api).contains("read me"), "{api:?}");
    common::unmount(&mountpoint);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 1000, "trace logging was on: {} lines", text.lines().count());
    assert!(text.contains("x-amz-date") || text.contains("signing"), "the log covers request signing");
    let api_log = String::from_utf8_lossy(&api.stderr);
    for (name, text) in [("mount log", text.as_str()), ("bucketfs api", &api_log)] {
        let found = secrets_in(text, &server.secret_key);
        assert!(found.is_empty(), "{name} shows secrets: {found:#?}");
    }
    assert!(has_signature_value(&format!("signature={}", "a".repeat(64))), "the check itself can fail");
}
