//! Load: several workers share one mount for a fixed time, doing mixed writes, appends,
//! truncations, writes in place, reads, listings, renames and deletes on overlapping paths.
//! Every operation on a file is checked against a model as it happens, and at the end the
//! mount and the server must both hold exactly what the model says: no deadlock, no panic, no
//! lost or mixed data.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{names, Mount, Server};

const WORKERS: usize = 4;
const RUN_FOR: Duration = Duration::from_secs(20);
const DIRS: [&str; 3] = ["a", "b", "a/deep"];
const FILES_PER_DIR: usize = 4;
/// Never touched by the workers, so that each directory exists without a marker.
const KEEP: &str = "keep";
const OPS: [&str; 8] = ["write", "append", "truncate", "write-in-place", "read", "list", "rename", "delete"];

/// Each path's expected contents, or None when it must not exist. A worker holds a path's lock
/// for the whole of an operation on it, so the model is exact while the mount serves all
/// workers at once.
struct Model {
    paths: Vec<String>,
    files: Vec<Mutex<Option<Vec<u8>>>>,
    done: [AtomicU64; OPS.len()],
}

impl Model {
    fn new() -> Model {
        let paths: Vec<String> =
            DIRS.iter().flat_map(|dir| (0..FILES_PER_DIR).map(move |n| format!("{dir}/f{n}"))).collect();
        let files = paths.iter().map(|_| Mutex::new(None)).collect();
        Model { paths, files, done: Default::default() }
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Option<Vec<u8>>> {
        self.files[index].lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        bucketfs::local_s3::sample_bytes(len, self.next())
    }

    /// Mostly small files, now and then one big enough for a multipart upload.
    fn size(&mut self) -> usize {
        if self.below(40) == 0 {
            17 * 1024 * 1024 + self.below(4096) as usize
        } else {
            self.below(256 * 1024) as usize
        }
    }
}

fn worker(root: &Path, model: &Model, seed: u64, deadline: Instant) {
    let mut rng = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    while Instant::now() < deadline {
        let op = rng.below(OPS.len() as u64) as usize;
        let index = rng.below(model.paths.len() as u64) as usize;
        let path = root.join(&model.paths[index]);
        let context = format!("{} {}", OPS[op], model.paths[index]);
        match OPS[op] {
            "write" => {
                let mut file = model.lock(index);
                let len = rng.size();
                let data = rng.bytes(len);
                std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{context}: {e}"));
                *file = Some(data);
            }
            "append" => {
                let mut file = model.lock(index);
                let len = rng.below(64 * 1024) as usize;
                let extra = rng.bytes(len);
                let mut handle = std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap();
                handle.write_all(&extra).unwrap_or_else(|e| panic!("{context}: {e}"));
                drop(handle);
                file.get_or_insert_with(Vec::new).extend_from_slice(&extra);
            }
            "truncate" => {
                let mut file = model.lock(index);
                if let Some(data) = file.as_mut() {
                    let len = rng.below(data.len() as u64 + 4096) as usize;
                    let handle = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    handle.set_len(len as u64).unwrap_or_else(|e| panic!("{context}: {e}"));
                    drop(handle);
                    data.resize(len, 0);
                }
            }
            "write-in-place" => {
                let mut file = model.lock(index);
                if let Some(data) = file.as_mut().filter(|data| !data.is_empty()) {
                    let at = rng.below(data.len() as u64) as usize;
                    let len = rng.below(8192) as usize + 1;
                    let patch = rng.bytes(len);
                    let handle = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    handle.write_all_at(&patch, at as u64).unwrap_or_else(|e| panic!("{context}: {e}"));
                    drop(handle);
                    if data.len() < at + patch.len() {
                        data.resize(at + patch.len(), 0);
                    }
                    data[at..at + patch.len()].copy_from_slice(&patch);
                }
            }
            "read" => {
                let file = model.lock(index);
                match (&*file, std::fs::read(&path)) {
                    (Some(expected), Ok(got)) => {
                        assert!(got == *expected, "{context}: {} bytes read, {} expected", got.len(), expected.len())
                    }
                    (None, Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{context}"),
                    (Some(_), Err(e)) => panic!("{context}: {e}"),
                    (None, Ok(_)) => panic!("{context}: a deleted file is still there"),
                }
            }
            "list" => {
                let dir = DIRS[rng.below(DIRS.len() as u64) as usize];
                let mut allowed: BTreeSet<String> = (0..FILES_PER_DIR).map(|n| format!("f{n}")).collect();
                allowed.extend([KEEP.to_string(), "deep".to_string()]);
                for name in names(&root.join(dir)) {
                    assert!(allowed.contains(&name), "list {dir}: unexpected {name:?}");
                }
            }
            "rename" => {
                let target = rng.below(model.paths.len() as u64) as usize;
                if target == index {
                    continue;
                }
                let (mut from, mut to) = if index < target {
                    let first = model.lock(index);
                    (first, model.lock(target))
                } else {
                    let second = model.lock(target);
                    (model.lock(index), second)
                };
                let result = std::fs::rename(&path, root.join(&model.paths[target]));
                match from.take() {
                    Some(data) => {
                        result.unwrap_or_else(|e| panic!("{context} to {}: {e}", model.paths[target]));
                        *to = Some(data);
                    }
                    None => assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOENT), "{context}"),
                }
            }
            "delete" => {
                let mut file = model.lock(index);
                let result = std::fs::remove_file(&path);
                match file.take() {
                    Some(_) => result.unwrap_or_else(|e| panic!("{context}: {e}")),
                    None => assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOENT), "{context}"),
                }
            }
            _ => unreachable!(),
        }
        model.done[op].fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn mixed_operations_from_several_workers_match_a_model() {
    let server = Server::s3s();
    let bucket = server.bucket("stress");
    for dir in DIRS {
        server.put(&bucket, &format!("{dir}/{KEEP}"), "kept");
    }
    let mount = Mount::new(&server, &format!("s3://{bucket}"), &[]);
    let model = Arc::new(Model::new());
    let deadline = Instant::now() + RUN_FOR;
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (root, model) = (mount.path.clone(), model.clone());
            std::thread::spawn(move || worker(&root, &model, n as u64 + 1, deadline))
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .filter_map(|w| w.join().err())
        .map(|panic| panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "a worker panicked".into()))
        .collect();
    let warnings = mount.warnings();
    assert!(failures.is_empty(), "{failures:?}\nmount log:\n{}", warnings[..warnings.len().min(20)].join("\n"));

    let mut checked_bytes = 0;
    for (index, path) in model.paths.iter().enumerate() {
        let expected = model.lock(index).clone();
        let through_mount = std::fs::read(mount.join(path)).ok();
        assert!(through_mount == expected, "{path} through the mount differs from the model");
        assert!(server.get(&bucket, path) == expected, "{path} in S3 differs from the model");
        checked_bytes += expected.map_or(0, |data| data.len());
    }
    for dir in DIRS {
        let mut expected: Vec<String> = model
            .paths
            .iter()
            .enumerate()
            .filter(|(index, path)| path.rsplit_once('/').unwrap().0 == dir && model.lock(*index).is_some())
            .map(|(_, path)| path.rsplit('/').next().unwrap().to_string())
            .chain([KEEP.to_string()])
            .chain((dir == "a").then(|| "deep".to_string()))
            .collect();
        expected.sort();
        assert_eq!(names(&mount.join(dir)), expected, "listing of {dir}");
    }
    let done: Vec<String> =
        OPS.iter().zip(&model.done).map(|(op, n)| format!("{op} {}", n.load(Ordering::Relaxed))).collect();
    let total: u64 = model.done.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    assert!(total > 100, "the workers got work done: {done:?}");
    eprintln!("FIGURE stress: {total} operations by {WORKERS} workers in {RUN_FOR:?} ({}); {checked_bytes} bytes checked, 0 lost", done.join(", "));
}
