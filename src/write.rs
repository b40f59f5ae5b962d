/*!
Staging: how writes reach S3 without ever being lost or half-visible.

Every inode opened for writing gets one staging file, shared by all its handles, in this
mount's private staging directory (0700; files 0600). Writes, truncations and reads of that
inode go to the staging file. `flush` (close) and `fsync` upload the whole file through
`upload.rs`. While a file staged empty is only appended to, its parts go up as it grows; a
write or truncate behind what was sent drops that early upload, and close sends the file whole.

An upload that fails leaves the staging file dirty and in place. The next close, fsync, or open
of the same inode finds it and retries, and unmounting retries what is still pending. Beside
each `N.data` lies `N.key`, naming `s3://bucket/key`, so that a crash leaves data a person
can recover by hand (see the README).

**Spares.** A staging file released clean is not removed but emptied (its `N.key` first) and
kept for the next file staged, up to [`SPARES`] of them: a new small file then costs two
truncations and a write instead of creating two files and removing them again. On ext4 without
a journal (this project's machines) a new inode skips every one freed in the last minute or
more, so each file removed made the next creations slower, the server's too when it shares the
disk: in a `/tmp` where tests had made and removed many files, a create took about 1 ms, against
17-56 µs elsewhere on the same disk. An empty `N.key` marks a spare, which holds nothing to
recover.

Locking: the map of staged inodes is a std mutex held only for lookups; each staged file has a
tokio mutex held across its upload, so writes to that one file wait for the upload's snapshot
and nothing else does.
*/

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{FsError, FsResult};
use crate::s3::{ObjectStore, S3Result, UploadHeaders};
use crate::upload::{upload, StreamingUpload, MULTIPART_THRESHOLD};
/// Existing objects are fetched into staging in pieces of this size.
const FETCH_CHUNK: u64 = 8 * 1024 * 1024;
/// How many emptied staging files a mount keeps for reuse: enough for a few writers at once.
const SPARES: usize = 16;

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
    /// Every write so far appended to a file staged empty: parts may go up before close.
    appending: bool,
    /// Which staging file this is, among all this mount has made.
    id: u64,
    /// Its files are gone: whoever still holds it must look the inode's staging up again.
    pub released: bool,
    stream: Option<StreamingUpload>,
    /// The file changed below what the early upload already sent.
    stream_stale: bool,
    /// Released and emptied: once dropped, it goes to `spares` for reuse.
    spare: bool,
    spares: Weak<Mutex<Vec<Spare>>>,
}

/// An emptied staging file: its id, its `N.key` empty, its `N.data` still open.
struct Spare {
    id: u64,
    file: File,
}

pub type SharedStaged = Arc<tokio::sync::Mutex<Staged>>;

impl Staged {
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.appending &= offset == self.size;
        self.stream_stale |= offset < self.stream.as_ref().map_or(0, StreamingUpload::sent);
        if let Err(e) = self.file.write_all_at(data, offset) {
            self.write_failed = true;
            return Err(FsError::from_io(e));
        }
        if let Some(stream) = self.stream.as_mut() {
            stream.wrote(offset, data);
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
        self.appending &= size == self.size;
        self.stream_stale |= size < self.stream.as_ref().map_or(0, StreamingUpload::sent);
        self.file.set_len(size).map_err(FsError::from_io)?;
        if let Some(stream) = self.stream.as_mut() {
            stream.truncated(size);
        }
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Sends the parts an appending writer has completed; a failure here only means close
    /// sends the whole file instead.
    pub async fn send_appended(&mut self, store: &Arc<dyn ObjectStore>, headers: &UploadHeaders) {
        if !self.appending || self.stream_stale || self.discarded || self.size <= MULTIPART_THRESHOLD {
            return;
        }
        if self.stream.is_none() {
            match StreamingUpload::start(store, &self.bucket, &self.key, &self.data_path, headers).await {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "no early upload; the file goes up at close");
                    self.appending = false;
                    return;
                }
            }
        }
        let sent = match self.stream.as_mut() {
            Some(stream) => stream.send_written(self.size).await,
            None => Ok(()),
        };
        if let Err(e) = sent {
            tracing::debug!(key = %self.key, error = %e, "early upload failed; the file goes up at close");
            self.stream_stale = true;
        }
    }

    /// Uploads the staged contents if they changed; on failure they stay dirty for a retry.
    /// Returns the new ETag when an upload happened.
    pub async fn upload_if_dirty(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<Option<String>>> {
        if !self.dirty || self.discarded {
            self.abort_stream().await;
            return Ok(None);
        }
        let result = match self.stream.take() {
            Some(stream) if !self.stream_stale => stream.finish(self.size).await,
            stale => {
                if let Some(stream) = stale {
                    stream.abort().await;
                }
                upload(store, &self.bucket, &self.key, &self.data_path, self.size, headers).await
            }
        };
        self.stream_stale = false;
        let etag = result.map_err(|e| {
            tracing::warn!(bucket = %self.bucket, key = %self.key, error = %e, "upload failed; the data stays staged");
            e
        })?;
        self.dirty = false;
        tracing::debug!(bucket = %self.bucket, key = %self.key, size = self.size, "uploaded");
        Ok(Some(etag))
    }

    /// Deleted while open: nothing more goes up, and an early upload is aborted.
    pub async fn discard(&mut self) {
        self.discarded = true;
        self.abort_stream().await;
    }

    async fn abort_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.abort().await;
        }
    }

    /// Points this staging file at another object, its `N.key` too. The new name is written
    /// over the old before the rest is cut, so that a crash never leaves the key empty, which
    /// would mark a spare.
    pub fn rename(&mut self, bucket: &str, key: &str) {
        self.bucket = bucket.to_string();
        self.key = key.to_string();
        let line = key_line(bucket, key);
        let renamed = OpenOptions::new()
            .write(true)
            .open(&self.key_path)
            .and_then(|file| file.write_all_at(line.as_bytes(), 0).and_then(|()| file.set_len(line.len() as u64)));
        if let Err(e) = renamed {
            tracing::warn!(file = %self.key_path.display(), error = %e, "cannot rename a staging file's key");
        }
    }

    fn remove_files(&self) {
        remove_pair(&self.data_path);
    }

    /// Empties both files, `N.key` first: a crash in between leaves a spare, never a key
    /// naming contents that are not its object's.
    fn empty_files(&self) -> std::io::Result<()> {
        OpenOptions::new().write(true).truncate(true).open(&self.key_path)?;
        self.file.set_len(0)
    }
}

impl Drop for Staged {
    /// A spare goes to the area's spares only now, when nothing can reach it through this
    /// `Staged` any more, so that no late holder writes into another file's contents.
    fn drop(&mut self) {
        if !self.spare {
            return;
        }
        let kept = self.spares.upgrade().is_some_and(|spares| {
            let mut spares = lock(&spares);
            match self.file.try_clone() {
                Ok(file) if spares.len() < SPARES => {
                    spares.push(Spare { id: self.id, file });
                    true
                }
                _ => false,
            }
        });
        if !kept {
            self.remove_files();
        }
    }
}

/// The staging directory of one mount and the inodes staged in it.
pub struct StagingArea {
    dir: PathBuf,
    next_id: AtomicU64,
    spares: Arc<Mutex<Vec<Spare>>>,
    /// Each staged inode's staging file, with that file's id.
    staged: Mutex<HashMap<u64, (u64, SharedStaged)>>,
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
        Ok(StagingArea { dir, next_id: AtomicU64::new(1), spares: Arc::default(), staged: Mutex::new(HashMap::new()) })
    }

    pub fn get(&self, ino: u64) -> Option<SharedStaged> {
        lock(&self.staged).get(&ino).map(|(_, staged)| staged.clone())
    }

    /// Stages `ino` as an empty file (dirty: even an empty file is uploaded on close).
    pub fn stage_empty(&self, ino: u64, bucket: &str, key: &str) -> FsResult<SharedStaged> {
        let mut staged = self.new_file(bucket, key)?;
        staged.dirty = true;
        staged.appending = true;
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
        if let Err(e) = Self::fetch(&staged.file, store, bucket, key, size, etag).await {
            staged.remove_files();
            return Err(e);
        }
        staged.size = size;
        Ok(self.insert(ino, staged))
    }

    /// Writes the object's `size` bytes into `file`, every GET pinned to the version `pinned`
    /// names, or else to the one the first GET returns.
    async fn fetch(
        file: &File,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
        size: u64,
        mut pinned: Option<String>,
    ) -> FsResult<()> {
        let mut offset = 0;
        while offset < size {
            let end = (offset + FETCH_CHUNK).min(size);
            let got = store.get_range(bucket, key, offset..end, pinned.as_deref()).await?;
            if got.data.len() != end - offset {
                return Err(FsError::Stale);
            }
            pinned = pinned.or(got.etag);
            for piece in got.data.pieces() {
                file.write_all_at(piece, offset).map_err(FsError::from_io)?;
                offset += piece.len() as u64;
            }
        }
        Ok(())
    }

    fn new_file(&self, bucket: &str, key: &str) -> FsResult<Staged> {
        let named = key_line(bucket, key);
        let spare = lock(&self.spares).pop();
        let (id, file) = match spare.and_then(|spare| self.reuse(spare, &named)) {
            Some(reused) => reused,
            None => self.create_files(&named).map_err(FsError::from_io)?,
        };
        Ok(Staged {
            bucket: bucket.to_string(),
            key: key.to_string(),
            file,
            data_path: self.data_path(id),
            key_path: self.key_path(id),
            size: 0,
            dirty: false,
            handles: 0,
            discarded: false,
            write_failed: false,
            appending: false,
            stream: None,
            stream_stale: false,
            id,
            released: false,
            spare: false,
            spares: Arc::downgrade(&self.spares),
        })
    }

    fn create_files(&self, named: &str) -> std::io::Result<(u64, File)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true).mode(0o600);
        options.open(self.key_path(id))?.write_all_at(named.as_bytes(), 0)?;
        Ok((id, options.open(self.data_path(id))?))
    }

    /// A spare named for its new object. `None` if its files are gone or cannot be written,
    /// and fresh ones are made: the cleanup of another mount's directory may have taken them.
    fn reuse(&self, spare: Spare, named: &str) -> Option<(u64, File)> {
        // Emptied at release, but whoever still held the released `Staged` could write to it
        // until dropping it; emptied first, so that the new name never labels those bytes.
        let renamed = spare.file.set_len(0).and_then(|()| {
            let key = OpenOptions::new().write(true).open(self.key_path(spare.id))?;
            key.write_all_at(named.as_bytes(), 0)
        });
        match renamed {
            Ok(()) => Some((spare.id, spare.file)),
            Err(e) => {
                tracing::debug!(error = %e, "a spare staging file is unusable; making a new one");
                remove_pair(&self.data_path(spare.id));
                None
            }
        }
    }

    fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    fn key_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    fn insert(&self, ino: u64, staged: Staged) -> SharedStaged {
        let id = staged.id;
        let shared = Arc::new(tokio::sync::Mutex::new(staged));
        lock(&self.staged).insert(ino, (id, shared.clone()));
        shared
    }

    /// Forgets `ino` once nothing needs its staging file: no handle and nothing to upload.
    /// Returns true when it was removed.
    pub fn release_if_clean(&self, ino: u64, staged: &mut Staged) -> bool {
        if staged.released || staged.handles > 0 || (staged.dirty && !staged.discarded && !staged.write_failed) {
            return false;
        }
        staged.spare = staged.empty_files().is_ok();
        if !staged.spare {
            staged.remove_files();
        }
        staged.released = true;
        let mut all = lock(&self.staged);
        if all.get(&ino).is_some_and(|(id, _)| *id == staged.id) {
            all.remove(&ino);
        }
        true
    }

    /// Every staged inode, for uploading what is pending at unmount.
    pub fn all(&self) -> Vec<(u64, SharedStaged)> {
        lock(&self.staged).iter().map(|(ino, (_, s))| (*ino, s.clone())).collect()
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

    /// Staging directories under `cache_dir` left by mounts whose process is gone (killed, or
    /// the machine stopped), with the number of staging files each still holds; their spares go,
    /// and so does a directory left with nothing to recover. Staged files are never uploaded on
    /// their own: another client may have written a newer version since, so the README tells
    /// the user how to put them back.
    pub fn left_behind(cache_dir: &Path) -> Vec<(PathBuf, usize)> {
        let Ok(entries) = std::fs::read_dir(cache_dir) else { return Vec::new() };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("mount-").and_then(|rest| rest.split('-').next()) else { continue };
            if pid == std::process::id().to_string() || Path::new("/proc").join(pid).exists() {
                continue;
            }
            let staged = clear_spares(&entry.path());
            if staged == 0 {
                // Only a directory with nothing to recover goes: one on a shared home may belong
                // to a live mount on another machine, whose process this one cannot see (and
                // which makes new staging files when it finds its spares gone).
                let _ = std::fs::remove_dir(entry.path());
            } else {
                found.push((entry.path(), staged));
            }
        }
        found
    }

    /// Removes the directory at a clean unmount, with its spares, if nothing else is left in it.
    pub fn remove_if_empty(&self) {
        lock(&self.spares).clear();
        // By their files, not the list: a handle whose RELEASE the unmount cut off still holds
        // its emptied `Staged`, which has not joined the list.
        clear_spares(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What `N.key` holds: the object its `N.data` is for.
fn key_line(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}\n")
}

/// Removes a staging file, `N.data`, and the `N.key` beside it, as far as they exist.
fn remove_pair(data: &Path) {
    let _ = std::fs::remove_file(data);
    let _ = std::fs::remove_file(data.with_extension("key"));
}

/// Removes the spares in the staging directory `dir` (the pairs whose `N.key` is empty) and
/// returns how many staging files it still holds.
fn clear_spares(dir: &Path) -> usize {
    let Ok(files) = std::fs::read_dir(dir) else { return 0 };
    let data = files.flatten().map(|f| f.path()).filter(|f| f.extension().is_some_and(|e| e == "data"));
    let mut staged = 0;
    for data in data {
        if std::fs::metadata(data.with_extension("key")).is_ok_and(|key| key.len() == 0) {
            remove_pair(&data);
        } else {
            staged += 1;
        }
    }
    staged
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Stages `key` as inode `ino`, writes to it, and releases it as an upload would leave it.
    async fn stage_and_release(area: &StagingArea, ino: u64, key: &str) {
        let staged = area.stage_empty(ino, "bucket", key).unwrap();
        let mut guard = staged.lock().await;
        guard.write(0, b"uploaded bytes").unwrap();
        guard.dirty = false;
        assert!(area.release_if_clean(ino, &mut guard));
    }

    #[tokio::test]
    async fn a_released_file_is_emptied_and_named_afresh_for_the_next() {
        let cache = tempfile::TempDir::new().unwrap();
        let area = StagingArea::create(cache.path()).unwrap();
        stage_and_release(&area, 1, "first").await;
        assert_eq!(files_in(area.dir()), ["1.data", "1.key"]);
        assert_eq!(std::fs::read(area.key_path(1)).unwrap(), b"", "a spare's key is empty");
        assert_eq!(std::fs::read(area.data_path(1)).unwrap(), b"", "and so are its contents");

        let staged = area.stage_empty(2, "bucket", "second").unwrap();
        assert_eq!(files_in(area.dir()), ["1.data", "1.key"], "the spare was reused");
        assert_eq!(std::fs::read_to_string(area.key_path(1)).unwrap(), "s3://bucket/second\n");
        let mut guard = staged.lock().await;
        guard.write(0, b"new").unwrap();
        assert_eq!(guard.read(0, 100).unwrap(), b"new");
        assert_eq!(std::fs::read(area.data_path(1)).unwrap(), b"new");
    }

    #[tokio::test]
    async fn spares_are_kept_up_to_their_bound_and_go_at_unmount() {
        let cache = tempfile::TempDir::new().unwrap();
        let area = StagingArea::create(cache.path()).unwrap();
        let mut held = Vec::new();
        for ino in 0..SPARES as u64 + 4 {
            held.push(area.stage_empty(ino, "bucket", &format!("f{ino}")).unwrap());
        }
        for (ino, staged) in held.into_iter().enumerate() {
            let mut guard = staged.lock().await;
            guard.dirty = false;
            area.release_if_clean(ino as u64, &mut guard);
        }
        assert_eq!(files_in(area.dir()).len(), 2 * SPARES);
        area.remove_if_empty();
        assert!(!area.dir().exists());
    }

    #[tokio::test]
    async fn a_spare_whose_files_are_gone_gives_way_to_new_files() {
        let cache = tempfile::TempDir::new().unwrap();
        let area = StagingArea::create(cache.path()).unwrap();
        stage_and_release(&area, 1, "first").await;
        clear_spares(area.dir());
        let staged = area.stage_empty(2, "bucket", "second").unwrap();
        assert_eq!(files_in(area.dir()), ["2.data", "2.key"]);
        staged.lock().await.write(0, b"kept").unwrap();
        assert_eq!(std::fs::read(area.data_path(2)).unwrap(), b"kept");
    }

    #[tokio::test]
    async fn a_renamed_file_names_its_new_object() {
        let cache = tempfile::TempDir::new().unwrap();
        let area = StagingArea::create(cache.path()).unwrap();
        let staged = area.stage_empty(1, "bucket", "a/long/name").unwrap();
        let mut guard = staged.lock().await;
        guard.rename("other", "short");
        assert_eq!(std::fs::read_to_string(area.key_path(1)).unwrap(), "s3://other/short\n");
        guard.rename("other", "a/longer/name/than/before");
        assert_eq!(std::fs::read_to_string(area.key_path(1)).unwrap(), "s3://other/a/longer/name/than/before\n");
        assert_eq!((guard.bucket.as_str(), guard.key.as_str()), ("other", "a/longer/name/than/before"));
    }

    #[tokio::test]
    async fn a_dead_mounts_spares_are_not_reported_and_go_with_an_empty_directory() {
        let cache = tempfile::TempDir::new().unwrap();
        // No process has a number this large (Linux allows at most 2^22).
        let dead = |n: u32| cache.path().join(format!("mount-99999999-0-{n}"));
        for (n, pairs) in [(0, &[("1", "")][..]), (1, &[("1", ""), ("2", "s3://bucket/unsaved\n")])] {
            std::fs::create_dir(dead(n)).unwrap();
            for (id, key) in pairs {
                std::fs::write(dead(n).join(format!("{id}.key")), key).unwrap();
                std::fs::write(dead(n).join(format!("{id}.data")), "").unwrap();
            }
        }
        assert_eq!(StagingArea::left_behind(cache.path()), [(dead(1), 1)]);
        assert!(!dead(0).exists(), "nothing to recover, so the directory went");
        assert_eq!(files_in(&dead(1)), ["2.data", "2.key"]);
    }
}
