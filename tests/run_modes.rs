//! The ways users run bucketfs besides `bucketfs mount`: mount(8) and fstab through
//! mount.fuse3, a non-root user with fusermount3, credentials from profiles and
//! credential_process, help, completions and the manual page, and logs after backgrounding.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    bucketfs, daemon_pid, is_mounted, stdout, unmount, wait_for, Mount, Server, Unmount, ACCESS_KEY, SECRET_KEY,
};

const TEST_USER: &str = "bucketfs-tester";

fn binary_dir() -> String {
    Path::new(env!("CARGO_BIN_EXE_bucketfs")).parent().unwrap().display().to_string()
}

/// `mount` with the test keys in the environment, which mount.fuse3 passes on to the helper.
fn mount_command() -> Command {
    let mut command = Command::new("mount");
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_CA_BUNDLE");
    command
}

/// mount.fuse3 runs the helper with the default PATH, so the binary under test is linked into
/// /usr/local/bin for the test (unless a real install is there) and the link removed after.
struct HelperOnPath(Option<std::path::PathBuf>);

impl HelperOnPath {
    fn install() -> Option<HelperOnPath> {
        let link = Path::new("/usr/local/bin/bucketfs");
        match std::fs::symlink_metadata(link) {
            Ok(meta) if !meta.file_type().is_symlink() => {
                eprintln!("SKIPPED: /usr/local/bin/bucketfs is a real install; not replacing it for this test");
                return None;
            }
            Ok(_) => std::fs::remove_file(link).unwrap(),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bucketfs"), link).expect("link the helper into /usr/local/bin");
        Some(HelperOnPath(Some(link.to_path_buf())))
    }
}

impl Drop for HelperOnPath {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            let _ = std::fs::remove_file(link);
        }
    }
}

#[test]
fn mount_t_fuse_bucketfs_and_an_fstab_line() {
    let Some(_helper) = HelperOnPath::install() else { return };
    let server = Server::s3s();
    let bucket = server.bucket("fstab");
    server.put(&bucket, "docs/a.txt", "via mount(8)");
    let (dir, mountpoint) = common::empty_mountpoint();

    let options = format!("endpoint_url={},ro,_netdev,nofail,metadata_ttl=5", server.endpoint);
    let out = mount_command()
        .args(["-t", "fuse.bucketfs", &format!("s3://{bucket}/docs/")])
        .arg(&mountpoint)
        .args(["-o", &options])
        .output()
        .unwrap();
    let guard = Unmount(&mountpoint);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(mountpoint.join("a.txt")).unwrap(), "via mount(8)");
    assert_eq!(common::errno(std::fs::write(mountpoint.join("new"), "x")), libc::EROFS);
    drop(guard);
    assert!(!is_mounted(&mountpoint));

    let fstab = dir.path().join("fstab");
    let line = format!(
        "s3://{bucket}/docs/ {} fuse.bucketfs _netdev,nofail,endpoint_url={} 0 0\n",
        mountpoint.display(),
        server.endpoint
    );
    std::fs::write(&fstab, line).unwrap();
    let out = mount_command().arg("-T").arg(&fstab).arg(&mountpoint).output().unwrap();
    let _guard = Unmount(&mountpoint);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(mountpoint.join("a.txt")).unwrap(), "via mount(8)");

    let out = bucketfs().args([&format!("s3://{bucket}"), "/nowhere", "-o", "nonsense_option"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option 'nonsense_option'"));
}

/// Creates the unprivileged test user once; returns its uid and gid.
fn test_user() -> (u32, u32) {
    let exists = Command::new("id").arg(TEST_USER).output().unwrap().status.success();
    if !exists {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/false", TEST_USER])
            .output()
            .unwrap();
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("exists"), "useradd failed");
    }
    let id = |flag: &str| stdout(&Command::new("id").args([flag, TEST_USER]).output().unwrap()).trim().parse().unwrap();
    (id("-u"), id("-g"))
}

/// A command run as the test user, with its own HOME and the test keys.
fn as_user(home: &Path, program: &str) -> Command {
    let (uid, gid) = test_user();
    let mut command = Command::new("setpriv");
    command
        .args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", program])
        .env("HOME", home)
        .env("PATH", format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", binary_dir()))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE");
    command
}

/// Gives /dev/fuse Debian's default mode, 0666, for one test, where a sandbox made it 0600.
struct DeviceOpenToUsers(Option<u32>);

impl DeviceOpenToUsers {
    fn ensure() -> DeviceOpenToUsers {
        let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o777;
        if mode & 0o006 == 0o006 {
            return DeviceOpenToUsers(None);
        }
        eprintln!("/dev/fuse is {mode:o} here; giving it Debian's default 0666 for this test");
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        DeviceOpenToUsers(Some(mode))
    }
}

impl Drop for DeviceOpenToUsers {
    fn drop(&mut self) {
        if let Some(mode) = self.0 {
            let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(mode));
        }
    }
}

#[test]
fn a_normal_user_mounts_and_unmounts_with_fusermount3() {
    let _device = DeviceOpenToUsers::ensure();
    let server = Server::s3s();
    let bucket = server.bucket("nonroot");
    server.put(&bucket, "hello.txt", "hello, user");
    let (uid, gid) = test_user();
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let mountpoint = dir.path().join("mnt");
    for path in [&home, &mountpoint] {
        std::fs::create_dir(path).unwrap();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
    let out = as_user(&home, "bucketfs")
        .args(["mount", &format!("s3://{bucket}")])
        .arg(&mountpoint)
        .args(["--endpoint-url", &server.endpoint])
        .output()
        .unwrap();
    let _guard = Unmount(&mountpoint);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = line.lines().find(|l| l.contains(&*mountpoint.to_string_lossy())).unwrap().to_string();
    assert!(line.contains(&format!("user_id={uid}")), "{line}");
    let out = as_user(&home, "sh")
        .arg("-c")
        .arg(format!("cat {0}/hello.txt && echo written > {0}/by-user.txt && ls -ln {0}", mountpoint.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).starts_with("hello, user"));
    assert!(stdout(&out).contains(&format!(" {uid} {gid} ")), "files belong to the user: {}", stdout(&out));
    assert_eq!(server.get(&bucket, "by-user.txt").unwrap(), b"written\n");
    let out = as_user(&home, "fusermount3").arg("-u").arg(&mountpoint).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&mountpoint));

    let fuse_conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !fuse_conf.lines().any(|l| l.trim() == "user_allow_other") {
        let out = as_user(&home, "bucketfs")
            .args(["mount", &format!("s3://{bucket}")])
            .arg(&mountpoint)
            .args(["--endpoint-url", &server.endpoint, "--allow-other"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("user_allow_other"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mounted(&mountpoint));
    }
}

#[test]
fn credentials_from_a_profile_file_and_credential_process() {
    let server = Server::s3s();
    let bucket = server.bucket("profiles");
    server.put(&bucket, "p.txt", "profile");
    let home = tempfile::TempDir::new().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!("[tester]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let script = home.path().join("creds.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\"}}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile tester]\nregion = us-east-1\n\n[profile process]\nregion = us-east-1\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();

    for (how, extra_env, args) in [
        ("--profile", None, vec!["--profile", "tester"]),
        ("AWS_PROFILE", Some("tester"), vec![]),
        ("credential_process", None, vec!["--profile", "process"]),
    ] {
        let (_dir, mountpoint) = common::empty_mountpoint();
        let mut command = bucketfs();
        command.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env("HOME", home.path());
        if let Some(profile) = extra_env {
            command.env("AWS_PROFILE", profile);
        }
        let out = command
            .args(["mount", &format!("s3://{bucket}")])
            .arg(&mountpoint)
            .args(["--endpoint-url", &server.endpoint])
            .args(&args)
            .output()
            .unwrap();
        let _guard = Unmount(&mountpoint);
        assert!(out.status.success(), "{how}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(mountpoint.join("p.txt")).unwrap(), "profile", "{how}");
    }
}

#[test]
fn help_version_completions_and_manual() {
    let help = stdout(&bucketfs().arg("--help").output().unwrap());
    assert!(help.contains("Examples:") && help.contains("bucketfs mount s3://my-bucket /mnt/s3"), "{help}");
    assert!(help.contains("mount -t fuse.bucketfs"), "{help}");
    let mount_help = stdout(&bucketfs().args(["mount", "--help"]).output().unwrap());
    assert!(mount_help.contains("Examples:") && mount_help.contains("--endpoint-url"), "{mount_help}");
    let version = stdout(&bucketfs().arg("--version").output().unwrap());
    assert_eq!(version.trim(), format!("bucketfs {}", env!("CARGO_PKG_VERSION")));
    let completions = stdout(&bucketfs().args(["completions", "bash"]).output().unwrap());
    assert!(completions.contains("_bucketfs") && completions.contains("--endpoint-url"));
    let manual = stdout(&bucketfs().arg("man").output().unwrap());
    assert!(manual.starts_with(".ie") || manual.contains(".TH bucketfs"), "{}", &manual[..manual.len().min(200)]);
}

#[test]
fn the_daemon_keeps_logging_after_it_backgrounds() {
    let server = Server::s3s();
    let bucket = server.bucket("logs");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    assert!(mount.log_text().contains("mounted"));
    let daemon = daemon_pid(&mount.path);
    mount.unmount();
    wait_for(Duration::from_secs(20), "the daemon to log its unmount", || mount.log_text().contains("unmounted"));
    wait_for(Duration::from_secs(20), "the daemon to exit", || !Path::new(&format!("/proc/{daemon}")).exists());
    // A plain `umount` is how a mount normally ends: nothing about it is a warning.
    let warnings = mount.warnings();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_foreground_mount_tells_systemd_when_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let server = Server::s3s();
    let bucket = server.bucket("notify");
    let dir = tempfile::TempDir::new().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mut child = bucketfs()
        .args(["mount", &format!("s3://{bucket}")])
        .arg(&mountpoint)
        .args(["--endpoint-url", &server.endpoint, "--foreground"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Unmount(&mountpoint);
    let mut message = [0u8; 64];
    let received = loop {
        match socket.recv(&mut message) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    let ready_and_mounted = is_mounted(&mountpoint);
    unmount(&mountpoint);
    let exited = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        unmount(&mountpoint);
    }
    let received = received.expect("a readiness message");
    assert_eq!(&message[..received], b"READY=1");
    assert!(ready_and_mounted, "READY=1 comes once the mount answers");
}
