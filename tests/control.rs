//! The control file `.s3api` and `bucketfs api`, through the kernel against s3s-fs: both ways
//! of use from the shell and from Python, real S3 answers and bucketfs's own errors, privacy,
//! concurrency, and coherence with the mount.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};

use common::{bucketfs, errno, names, sh, stdout, Mount, Server};

fn mounted(label: &str, options: &[&str]) -> (Server, String, Mount) {
    let server = Server::s3s();
    let bucket = server.bucket(label);
    let mount = Mount::new(&server, &format!("s3://{bucket}"), options);
    (server, bucket, mount)
}

/// Write-then-read from the shell: `printf ... > .s3api; cat .s3api`.
fn shell_call(mount: &Mount, request: &str) -> String {
    let control = mount.join(".s3api");
    let script = format!("printf '%s' \"$REQUEST\" > {0} && cat {0}", control.display());
    let out = std::process::Command::new("sh").arg("-c").arg(script).env("REQUEST", request).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[test]
fn both_ways_of_use_from_the_shell_and_python() {
    let (server, bucket, mount) = mounted("ways", &[]);
    server.put(&bucket, "a.txt", "from S3");

    let response = shell_call(&mount, &format!("GET /{bucket}/a.txt\n"));
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(response.ends_with("\r\n\r\nfrom S3"), "{response}");

    let control = mount.join(".s3api").display().to_string();
    let script = format!("exec 3<>{control}; printf 'GET /{bucket}/a.txt HTTP/1.1\\r\\n\\r\\n' >&3; cat <&3");
    let response = stdout(&sh(&script));
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(response.ends_with("from S3"), "{response}");

    let python = format!(
        "f = open('{control}', 'r+b', buffering=0)\n\
         f.write(b'GET /{bucket}/a.txt\\n\\n')\n\
         first = f.read()\n\
         f.write(b'HEAD /{bucket}/a.txt\\n')\n\
         second = f.read()\n\
         print(first.split(b'\\r\\n')[0].decode(), first.endswith(b'from S3'), second.split(b'\\r\\n')[0].decode())"
    );
    let out = std::process::Command::new("python3").arg("-c").arg(python).output().unwrap();
    assert_eq!(stdout(&out).trim(), "HTTP/1.1 200 OK True HTTP/1.1 200 OK", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn s3_calls_and_their_answers() {
    let (server, bucket, mount) = mounted("calls", &[]);
    let listing = shell_call(&mount, "GET /\n");
    assert!(listing.contains(&format!("<Name>{bucket}</Name>")), "{listing}");
    let location = shell_call(&mount, &format!("GET /{bucket}?location HTTP/1.1\r\n\r\n"));
    assert_eq!(status_line(&location), "HTTP/1.1 200 OK");
    assert!(location.contains("LocationConstraint"), "{location}");

    let put = shell_call(
        &mount,
        &format!("PUT /{bucket}/docs/with%20space.txt\nx-amz-meta-owner: ops\nContent-Type: text/plain\n\nbody text"),
    );
    assert_eq!(status_line(&put), "HTTP/1.1 200 OK", "{put}");
    let head = server.head(&bucket, "docs/with space.txt");
    assert_eq!(head.metadata().and_then(|m| m.get("owner")).map(String::as_str), Some("ops"));
    assert_eq!(std::fs::read_to_string(mount.join("docs/with space.txt")).unwrap(), "body text");

    let query = shell_call(&mount, &format!("GET /{bucket}?list-type=2&prefix=docs%2Fwith%20sp&encoding-type=url\n"));
    assert!(query.contains("with%20space.txt") || query.contains("with space.txt"), "{query}");
    let head = shell_call(&mount, &format!("HEAD /{bucket}/docs/with%20space.txt\n"));
    assert!(head.to_ascii_lowercase().contains("content-length: 9"), "{head}");

    let missing = shell_call(&mount, &format!("GET /{bucket}/no-such-key\n"));
    assert_eq!(status_line(&missing), "HTTP/1.1 404 Not Found");
    assert!(missing.contains("NoSuchKey"), "{missing}");
    let denied = shell_call(&mount, &format!("PUT /{bucket}/{}x\n\nno", common::DENIED_NAME));
    assert_eq!(status_line(&denied), "HTTP/1.1 403 Forbidden");

    let delete = shell_call(&mount, &format!("DELETE /{bucket}/docs/with%20space.txt\n"));
    assert_eq!(status_line(&delete), "HTTP/1.1 204 No Content");
    assert_eq!(server.get(&bucket, "docs/with space.txt"), None);
}

#[test]
fn bucketfs_errors_are_responses_marked_as_ours() {
    let (mut server, _bucket, mount) = mounted("errors", &[]);
    let garbage = shell_call(&mount, "this is not a request\n");
    assert_eq!(status_line(&garbage), "HTTP/1.1 400 Bad Request");
    assert!(garbage.contains("x-bucketfs-error: true") && garbage.contains("METHOD PATH"), "{garbage}");
    let signed = shell_call(&mount, "GET /\nAuthorization: mine\n\n");
    assert!(signed.contains("bucketfs adds it"), "{signed}");

    let mut control = OpenOptions::new().write(true).open(mount.join(".s3api")).unwrap();
    let huge = vec![b'x'; 17 * 1024 * 1024];
    assert_eq!(errno(control.write_all(&huge)), libc::EFBIG);
    drop(control);

    server.stop();
    let down = shell_call(&mount, "GET /\n");
    assert_eq!(status_line(&down), "HTTP/1.1 502 Bad Gateway");
    assert!(down.contains("x-bucketfs-error: true"), "{down}");
}

#[test]
fn the_control_file_is_private_unlisted_and_coherent() {
    let (server, bucket, mount) = mounted("private", &["--allow-other"]);
    server.put(&bucket, "f.txt", "f");
    assert_eq!(names(&mount.path), ["f.txt"], "not listed");
    let out = sh(&format!("cd {} && find . && du -a .", mount.path.display()));
    assert!(!stdout(&out).contains(".s3api"));
    let out = sh(&format!("stat -c '%a %u' {}/.s3api", mount.path.display()));
    assert_eq!(stdout(&out).trim(), "600 0");
    let out = common::as_nobody(&format!("cat {}/.s3api", mount.path.display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    assert_eq!(errno(std::fs::remove_file(mount.join(".s3api"))), libc::EPERM);

    assert_eq!(errno(std::fs::metadata(mount.join("late.txt"))), libc::ENOENT);
    let put = shell_call(&mount, &format!("PUT /{bucket}/late.txt\n\narrived"));
    assert_eq!(status_line(&put), "HTTP/1.1 200 OK");
    assert_eq!(std::fs::read_to_string(mount.join("late.txt")).unwrap(), "arrived", "seen at once");
}

#[test]
fn concurrent_users_get_their_own_answers() {
    let (server, bucket, mount) = mounted("concurrent", &[]);
    for n in 0..8 {
        server.put(&bucket, &format!("k{n}"), format!("value {n}"));
    }
    let control = mount.join(".s3api");
    let workers: Vec<_> = (0..8)
        .map(|n| {
            let (control, bucket) = (control.clone(), bucket.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let mut file = OpenOptions::new().read(true).write(true).open(&control).unwrap();
                    file.write_all(format!("GET /{bucket}/k{n}\n").as_bytes()).unwrap();
                    let mut response = String::new();
                    file.read_to_string(&mut response).unwrap();
                    assert!(response.ends_with(&format!("value {n}")), "worker {n} got {response}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

#[test]
fn bucketfs_api_without_a_mount() {
    let server = Server::s3s();
    let bucket = server.bucket("api");
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), "uploaded by the api command").unwrap();
    let data = format!("@{}", body.path().display());
    let put = bucketfs()
        .args(["api", "PUT", &format!("/{bucket}/note.txt"), "-H", "x-amz-meta-by: cli", "--data", &data])
        .args(["--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", stdout(&put));
    assert_eq!(server.get(&bucket, "note.txt").unwrap(), b"uploaded by the api command");
    let get = bucketfs()
        .args(["api", "GET", &format!("/{bucket}/note.txt"), "--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    assert!(get.status.success());
    assert!(stdout(&get).ends_with("uploaded by the api command"));
    let missing = bucketfs()
        .args(["api", "GET", &format!("/{bucket}/nothing"), "--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "a 404 exits non-zero");
    assert!(stdout(&missing).starts_with("HTTP/1.1 404"));
}

#[test]
fn a_child_closing_its_copy_of_the_descriptor_does_not_cut_the_request() {
    let (server, bucket, mount) = mounted("forked", &[]);
    server.put(&bucket, "listed.txt", "x");
    let mut control = OpenOptions::new().read(true).write(true).open(mount.join(".s3api")).unwrap();
    control.write_all(b"GET /").unwrap();
    // The child gets a copy of the descriptor and closes it at exec: the kernel sends a flush.
    assert!(sh("true").status.success());
    control.write_all(format!("{bucket}?list-type=2\n\n").as_bytes()).unwrap();
    let mut response = String::new();
    control.read_to_string(&mut response).unwrap();
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
    assert!(response.contains("<Key>listed.txt</Key>"), "the whole request was sent: {response}");
}
