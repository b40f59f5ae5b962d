//! Everyday tools that write trees through the mount: mkdir and rmdir with folder markers, mv
//! of a directory with markers, tar, rsync and git. Run on moto (or BUCKETFS_TEST_ENDPOINT),
//! because they create empty directories, which s3s-fs cannot list.

mod common;

use common::{errno, names, sh, stdout, Mount, Server};

fn run(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

#[test]
fn mkdir_rmdir_and_moving_a_directory_with_markers() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("dirs");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    std::fs::create_dir(mount.join("empty")).unwrap();
    assert!(server.keys(&bucket).contains(&"empty/".to_string()));
    assert_eq!(errno(std::fs::create_dir(mount.join("empty"))), libc::EEXIST);
    std::fs::create_dir_all(mount.join("full/inner/deeper")).unwrap();
    std::fs::write(mount.join("full/inner/file.txt"), "x").unwrap();
    assert_eq!(errno(std::fs::remove_dir(mount.join("full/inner"))), libc::ENOTEMPTY);

    std::fs::rename(mount.join("full"), mount.join("renamed")).unwrap();
    let mut keys = server.keys(&bucket);
    keys.sort();
    assert_eq!(keys, ["empty/", "renamed/", "renamed/inner/", "renamed/inner/deeper/", "renamed/inner/file.txt"]);
    assert_eq!(names(&mount.join("renamed/inner")), ["deeper", "file.txt"]);

    std::fs::remove_dir(mount.join("renamed/inner/deeper")).unwrap();
    std::fs::remove_dir(mount.join("empty")).unwrap();
    assert!(!server.keys(&bucket).iter().any(|k| k == "empty/" || k.ends_with("deeper/")));
    assert_eq!(errno(std::fs::metadata(mount.join("empty"))), libc::ENOENT);
    assert_eq!(names(&mount.path), ["renamed"]);
}

#[test]
fn tar_rsync_and_git_work_inside_the_mount() {
    let Some(server) = Server::aws_like() else { return };
    let bucket = server.bucket("tools");
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let root = mount.path.display().to_string();
    let work = tempfile::TempDir::new().unwrap();
    let src = work.path().join("src");
    let mut script = format!("mkdir -p {0} && cd {0}", src.display());
    for d in 0..6 {
        script += &format!(" && mkdir -p d{d}/e && mkdir -p d{d}/empty");
        for f in 0..40 {
            script += &format!(" && echo 'file {d}/{f}' > d{d}/f{f}.txt");
        }
        script += &format!(" && head -c {} /dev/urandom > d{d}/e/blob.bin", 1000 + d * 7919);
    }
    run(&script);
    run(&format!("tar -C {} -cf {}/tree.tar .", src.display(), work.path().display()));

    run(&format!("mkdir {root}/untarred && tar -C {root}/untarred -xf {}/tree.tar", work.path().display()));
    run(&format!("diff -r {} {root}/untarred", src.display()));

    run(&format!("rsync -a {}/ {root}/synced/", src.display()));
    let back = work.path().join("back");
    run(&format!("rsync -a {root}/synced/ {}/", back.display()));
    run(&format!("diff -r {} {}", src.display(), back.display()));
    let again = run(&format!("rsync -ai {}/ {root}/synced/", src.display()));
    assert!(again.lines().all(|l| !l.starts_with(">f")), "a second rsync sends nothing: {again}");

    let git = "git -c user.name=t -c user.email=t@example.invalid -c init.defaultBranch=main";
    run(&format!(
        "mkdir {root}/repo && cd {root}/repo && {git} init -q && echo hi > a && {git} add a && {git} commit -qm one"
    ));
    let log = run(&format!("cd {root}/repo && {git} log --format=%s && {git} status --porcelain"));
    assert_eq!(log.trim(), "one");
}
