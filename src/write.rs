/*!
Staging and uploading: how writes reach S3 without ever being lost or half-visible.

Every inode opened for writing gets one staging file, shared by all its handles, in this
mount's private staging directory (0700; files 0600). Writes, truncations and reads of that
inode go to the staging file. `flush` (close) and `fsync` upload the whole file: PutObject up
to [`MULTIPART_THRESHOLD`], else a multipart upload with [`PARTS_IN_FLIGHT`] parts at a time and
parts large enough for 5 TiB in 10,000 parts. S3 makes either the whole new object visible or
none of it; a multipart upload that fails is aborted.

An upload that fails leaves the staging file dirty and in place. The next close, fsync, or open
of the same inode finds it and retries, and unmounting retries what is still pending. Beside
each `N.data` lies `N.key`, naming `s3://bucket/key`, so that a crash leaves data a person
can recover by hand (see the README).

Locking: the map of staged inodes is a std mutex held only for lookups; each staged file has a
tokio mutex held across its upload, so writes to that one file wait for the upload's snapshot
and nothing else does.
*/

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{FsError, FsResult};
use crate::s3::{FileRange, ObjectStore, Part, S3Error, S3Result, UploadHeaders};

/// Objects up to this size go up in one PutObject.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
const MIN_PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const PARTS_IN_FLIGHT: usize = 4;
/// Existing objects are fetched into staging in pieces of this size.
const FETCH_CHUNK: u64 = 8 * 1024 * 1024;

/// One inode's staged contents.
pub struct Staged {
    pub bucket: String,
    pub key: String,
    file: File,
    data_path: PathBuf,
    key_path: PathBuf,
    pub size: u64,
    /// Written since the last successful upload.
    pub dirty: bool,
    /// Open handles sharing this file.
    pub handles: usize,
    /// Deleted while open: nothing is uploaded any more.
    pub discarded: bool,
    /// A write failed (the staging disk is full): the contents are incomplete and are never
    /// uploaded, so S3 keeps the previous object whole.
    pub write_failed: bool,
}

pub type SharedStaged = Arc<tokio::sync::Mutex<Staged>>;

impl Staged {
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        if let Err(e) = self.file.write_all_at(data, offset) {
            self.write_failed = true;
            return Err(FsError::from_io(e));
        }
        self.size = self.size.max(offset + data.len() as u64);
        self.dirty = true;
        Ok(())
    }

    pub fn read(&self, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (end - offset) as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(FsError::from_io)?;
        Ok(buf)
    }

    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.file.set_len(size).map_err(FsError::from_io)?;
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Uploads the staged contents if they changed; on failure they stay dirty for a retry.
    /// Returns the new ETag when an upload happened.
    pub async fn upload_if_dirty(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<Option<String>>> {
        if !self.dirty || self.discarded {
            return Ok(None);
        }
        self.file.sync_data().map_err(|e| S3Error::Other(format!("cannot sync the staging file: {e}")))?;
        let etag = upload(store, &self.bucket, &self.key, &self.data_path, self.size, headers).await.map_err(|e| {
            tracing::warn!(bucket = %self.bucket, key = %self.key, error = %e, "upload failed; the data stays staged");
            e
        })?;
        self.dirty = false;
        tracing::debug!(bucket = %self.bucket, key = %self.key, size = self.size, "uploaded");
        Ok(Some(etag))
    }

    fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.data_path);
        let _ = std::fs::remove_file(&self.key_path);
    }
}

/// The staging directory of one mount and the inodes staged in it.
pub struct StagingArea {
    dir: PathBuf,
    next_id: AtomicU64,
    staged: Mutex<HashMap<u64, SharedStaged>>,
}

impl StagingArea {
    /// Creates this mount's private directory under `cache_dir`.
    pub fn create(cache_dir: &Path) -> Result<Self, String> {
        static AREAS: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "mount-{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            AREAS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = cache_dir.join(unique);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| {
            format!("cannot create the staging directory {}: {e}: choose another --cache-dir", dir.display())
        })?;
        Ok(StagingArea { dir, next_id: AtomicU64::new(1), staged: Mutex::new(HashMap::new()) })
    }

    pub fn get(&self, ino: u64) -> Option<SharedStaged> {
        lock(&self.staged).get(&ino).cloned()
    }

    /// Stages `ino` as an empty file (dirty: even an empty file is uploaded on close).
    pub fn stage_empty(&self, ino: u64, bucket: &str, key: &str) -> FsResult<SharedStaged> {
        let mut staged = self.new_file(bucket, key)?;
        staged.dirty = true;
        Ok(self.insert(ino, staged))
    }

    /// Stages `ino` with the current contents of its object, fetched whole and pinned to one
    /// version, so that a partial change uploads the whole new object.
    pub async fn stage_existing(
        &self,
        ino: u64,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
        size: u64,
        etag: Option<String>,
    ) -> FsResult<SharedStaged> {
        let mut staged = self.new_file(bucket, key)?;
        let mut pinned = etag;
        let mut offset = 0;
        while offset < size {
            let end = (offset + FETCH_CHUNK).min(size);
            let got = store.get_range(bucket, key, offset..end, pinned.as_deref()).await.map_err(|e| {
                staged.remove_files();
                FsError::from(e)
            })?;
            if got.data.len() as u64 != end - offset {
                staged.remove_files();
                return Err(FsError::Stale);
            }
            pinned = pinned.or(got.etag);
            staged.file.write_all_at(&got.data, offset).map_err(FsError::from_io)?;
            offset = end;
        }
        staged.size = size;
        Ok(self.insert(ino, staged))
    }

    fn new_file(&self, bucket: &str, key: &str) -> FsResult<Staged> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data_path = self.dir.join(format!("{id}.data"));
        let key_path = self.dir.join(format!("{id}.key"));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true).mode(0o600);
        std::fs::write(&key_path, format!("s3://{bucket}/{key}\n")).map_err(FsError::from_io)?;
        let file = options.open(&data_path).map_err(FsError::from_io)?;
        Ok(Staged {
            bucket: bucket.to_string(),
            key: key.to_string(),
            file,
            data_path,
            key_path,
            size: 0,
            dirty: false,
            handles: 0,
            discarded: false,
            write_failed: false,
        })
    }

    fn insert(&self, ino: u64, staged: Staged) -> SharedStaged {
        let shared = Arc::new(tokio::sync::Mutex::new(staged));
        lock(&self.staged).insert(ino, shared.clone());
        shared
    }

    /// Forgets `ino` once nothing needs its staging file: no handle and nothing to upload.
    /// Returns true when it was removed.
    pub fn release_if_clean(&self, ino: u64, staged: &Staged) -> bool {
        if staged.handles > 0 || (staged.dirty && !staged.discarded && !staged.write_failed) {
            return false;
        }
        staged.remove_files();
        lock(&self.staged).remove(&ino);
        true
    }

    /// Every staged inode, for uploading what is pending at unmount.
    pub fn all(&self) -> Vec<(u64, SharedStaged)> {
        lock(&self.staged).iter().map(|(ino, s)| (*ino, s.clone())).collect()
    }

    /// Staged inodes whose keys lie under `prefix` of `bucket`.
    pub async fn under(&self, bucket: &str, prefix: &str) -> Vec<(u64, SharedStaged)> {
        let mut inside = Vec::new();
        for (ino, staged) in self.all() {
            let guard = staged.lock().await;
            if guard.bucket == bucket && guard.key.starts_with(prefix) && !guard.discarded {
                drop(guard);
                inside.push((ino, staged));
            }
        }
        inside
    }

    /// Removes the directory at a clean unmount, if nothing is left in it.
    pub fn remove_if_empty(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The part size for an object of `size` bytes: at least 8 MiB, and large enough that the
/// object fits in 10,000 parts, rounded up to a whole MiB.
pub fn part_size(size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    size.div_ceil(MAX_PARTS).div_ceil(MIB).saturating_mul(MIB).max(MIN_PART_SIZE)
}

async fn upload(
    store: &Arc<dyn ObjectStore>,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    headers: &UploadHeaders,
) -> S3Result<Option<String>> {
    if size <= MULTIPART_THRESHOLD {
        let body = FileRange { path: path.to_path_buf(), offset: 0, len: size };
        return store.put_object(bucket, key, Some(body), headers).await;
    }
    let upload_id = store.create_multipart(bucket, key, headers).await?;
    match upload_parts(store, bucket, key, &upload_id, path, size).await {
        Ok(parts) => match store.complete_multipart(bucket, key, &upload_id, parts).await {
            Ok(etag) => Ok(etag),
            Err(e) => {
                abort(store, bucket, key, &upload_id).await;
                Err(e)
            }
        },
        Err(e) => {
            abort(store, bucket, key, &upload_id).await;
            Err(e)
        }
    }
}

async fn abort(store: &Arc<dyn ObjectStore>, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = store.abort_multipart(bucket, key, upload_id).await {
        tracing::warn!(bucket, key, error = %e, "could not abort a failed multipart upload");
    }
}

async fn upload_parts(
    store: &Arc<dyn ObjectStore>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    path: &Path,
    size: u64,
) -> S3Result<Vec<Part>> {
    let part_len = part_size(size);
    let count = size.div_ceil(part_len);
    let mut running = tokio::task::JoinSet::new();
    let mut parts = Vec::with_capacity(count as usize);
    for index in 0..count {
        let offset = index * part_len;
        let body = FileRange { path: path.to_path_buf(), offset, len: part_len.min(size - offset) };
        let (store, bucket, key, upload_id) =
            (store.clone(), bucket.to_string(), key.to_string(), upload_id.to_string());
        running.spawn(async move { store.upload_part(&bucket, &key, &upload_id, index as i32 + 1, body).await });
        if running.len() >= PARTS_IN_FLIGHT {
            parts.push(joined(running.join_next().await)?);
        }
    }
    while let Some(done) = running.join_next().await {
        parts.push(joined(Some(done))?);
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

fn joined(done: Option<Result<S3Result<Part>, tokio::task::JoinError>>) -> S3Result<Part> {
    match done {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(S3Error::Other(format!("a part upload stopped: {e}"))),
        None => Err(S3Error::Other("no part upload was running".into())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_fit_five_tebibytes_in_ten_thousand_parts() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(part_size(20 * MIB), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB), 8 * MIB);
        let five_tib = 5 * 1024 * 1024 * MIB;
        let size = part_size(five_tib);
        assert!(five_tib.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % MIB, 0);
        assert!(size < 5 * 1024 * MIB, "S3's part limit is 5 GiB");
    }
}
