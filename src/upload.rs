/*!
Uploading a staged file: the only S3 writes of file contents. It knows a local file, a bucket
and a key, and nothing of inodes or handles.

Two ways up:
- [`upload`]: the whole file at once, at close or fsync. PutObject up to
  [`MULTIPART_THRESHOLD`], else a multipart upload with [`PARTS_IN_FLIGHT`] parts at a time,
  parts sized by [`part_size`] so that 5 TiB fits in 10,000 parts.
- [`StreamingUpload`]: for a writer that only appends, parts go up while it is still writing, so
  that a large `cp` does not wait at close for the whole file. The writer is held back when
  [`PARTS_IN_FLIGHT`] parts are already going up. Its part sizes double every 1,000 parts,
  because the final size is not known in advance. The part being written is also gathered in
  memory as the writes come ([`StreamingUpload::wrote`]), and goes up from there rather than
  read back from the staging file; when no buffer is free, or the writer leaves the straight
  line, parts are read from the file.

Either way S3 shows the new object only when the upload completes, and a multipart upload that
fails is aborted.

Once a part sent while the writer goes on is in S3, its bytes are written to disk and their
pages leave the page cache ([`forget_pages`]): the staging file keeps everything for a retry or
a recovery by hand, and the pages the writer's next bytes take are the ones just freed, warm. On
a virtual machine that hands free memory back to its host, a page the kernel takes fresh costs
a fault in the host, which had been most of a large write's time in the daemon.
*/

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::s3::{FileRange, ObjectStore, Part, PartBody, PartBuffer, S3Error, S3Result, UploadHeaders};

/// Objects up to this size go up in one PutObject.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
const MIN_PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const PARTS_IN_FLIGHT: usize = 4;

/// The part size for an object of `size` bytes: at least 8 MiB, and large enough that the
/// object fits in 10,000 parts, rounded up to a whole MiB.
pub fn part_size(size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    size.div_ceil(MAX_PARTS).div_ceil(MIB).saturating_mul(MIB).max(MIN_PART_SIZE)
}

/// The size of part `number` (from 1) of a streaming upload: 8 MiB, doubling every 1,000 parts,
/// which reaches past 5 TiB within 10,000 parts.
fn streaming_part_size(number: i32) -> u64 {
    let doublings = (number.max(1) - 1) as u32 / 1000;
    MIN_PART_SIZE.saturating_mul(1 << doublings.min(20)).min(MAX_PART_SIZE)
}

/// Uploads `size` bytes of the file at `path` as the object `bucket/key`; returns its ETag.
pub async fn upload(
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
    let mut upload = StreamingUpload::start(store, bucket, key, path, headers).await?;
    let part_len = part_size(size);
    while upload.sent < size {
        let len = part_len.min(size - upload.sent);
        if let Err(e) = upload.send_part(len, Pages::Keep).await {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.complete().await
}

/// What becomes of a part's pages in the page cache once the part is in S3.
#[derive(Clone, Copy, PartialEq)]
enum Pages {
    /// Dropped: the writer is still writing, and its next bytes can take them.
    Forget,
    /// Left: the file is whole, and goes when its staging file does.
    Keep,
}

/// Writes `range` of a staging file to disk and drops its pages from the page cache. Failing
/// to only leaves them cached.
fn forget_pages(range: &FileRange) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(&range.path) else { return };
    let (offset, len) = (range.offset as libc::off64_t, range.len as libc::off64_t);
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain system calls on a descriptor that `file` keeps open.
    let written = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if written != 0 {
        tracing::debug!(path = %range.path.display(), error = %std::io::Error::last_os_error(), "staged pages stay cached");
        return;
    }
    // SAFETY: as above.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

/// A multipart upload fed part by part, with at most [`PARTS_IN_FLIGHT`] parts going up.
pub struct StreamingUpload {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    path: PathBuf,
    upload_id: String,
    /// Bytes handed to parts so far: the file below this must not change any more.
    sent: u64,
    /// The staging file's bytes from `sent` on, as written, for the next part.
    held: Option<PartBuffer>,
    running: JoinSet<S3Result<Part>>,
    parts: Vec<Part>,
}

impl StreamingUpload {
    pub async fn start(
        store: &Arc<dyn ObjectStore>,
        bucket: &str,
        key: &str,
        path: &Path,
        headers: &UploadHeaders,
    ) -> S3Result<Self> {
        let upload_id = store.create_multipart(bucket, key, headers).await?;
        Ok(StreamingUpload {
            store: store.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            path: path.to_path_buf(),
            upload_id,
            sent: 0,
            held: None,
            running: JoinSet::new(),
            parts: Vec::new(),
        })
    }

    /// How far the file has been handed to parts.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Keeps a copy of `data`, just written at `offset` of the staging file, when it carries
    /// on the bytes held for the next part; any other write leaves that part to the file.
    pub fn wrote(&mut self, offset: u64, data: &[u8]) {
        let part_len = streaming_part_size(self.next_number());
        let Some(held) = self.held.as_mut() else { return };
        if offset != self.sent + held.size() {
            self.held = None;
            return;
        }
        let room = part_len.saturating_sub(held.size());
        held.extend(&data[..data.len().min(room as usize)]);
    }

    /// The staging file was cut to `size`: held bytes past it are gone.
    pub fn truncated(&mut self, size: u64) {
        if self.held.as_ref().is_some_and(|held| self.sent + held.size() > size) {
            self.held = None;
        }
    }

    /// Sends every whole streaming part that lies below `written`, then gathers the start of
    /// the next one from the file to carry on from the writes.
    pub async fn send_written(&mut self, written: u64) -> S3Result<()> {
        loop {
            let len = streaming_part_size(self.next_number());
            if self.sent + len > written {
                break;
            }
            self.send_part(len, Pages::Forget).await?;
        }
        if self.held.is_none() {
            self.hold(written);
        }
        Ok(())
    }

    /// Starts holding the next part, with the bytes of it already written up to `written`.
    fn hold(&mut self, written: u64) {
        let Some(mut held) = PartBuffer::take(streaming_part_size(self.next_number())) else { return };
        let range = FileRange { path: self.path.clone(), offset: self.sent, len: written - self.sent };
        match held.read_in(&range) {
            Ok(()) => self.held = Some(held),
            Err(e) => tracing::debug!(path = %self.path.display(), error = %e, "the next part is read from the file"),
        }
    }

    fn next_number(&self) -> i32 {
        (self.parts.len() + self.running.len()) as i32 + 1
    }

    /// Starts the next part, the `len` bytes from `sent`, after waiting for a free place. The
    /// part goes from the held bytes when they cover it.
    async fn send_part(&mut self, len: u64, pages: Pages) -> S3Result<()> {
        while self.running.len() >= PARTS_IN_FLIGHT {
            self.wait_one().await?;
        }
        let number = self.next_number();
        let range = FileRange { path: self.path.clone(), offset: self.sent, len };
        let body = match self.held.take() {
            Some(held) if held.size() >= len => PartBody::Held(held.into_part(len)),
            _ => PartBody::Staged(range.clone()),
        };
        let (store, bucket, key, id) =
            (self.store.clone(), self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        self.running.spawn(async move {
            let part = store.upload_part(&bucket, &key, &id, number, body).await?;
            if pages == Pages::Forget {
                tokio::task::spawn_blocking(move || forget_pages(&range));
            }
            Ok(part)
        });
        self.sent += len;
        Ok(())
    }

    async fn wait_one(&mut self) -> S3Result<()> {
        match self.running.join_next().await {
            Some(Ok(part)) => {
                self.parts.push(part?);
                Ok(())
            }
            Some(Err(e)) => Err(S3Error::Other(format!("a part upload stopped: {e}"))),
            None => Ok(()),
        }
    }

    /// Sends what is left of a file of `size` bytes and completes; aborts on failure.
    pub async fn finish(mut self, size: u64) -> S3Result<Option<String>> {
        let mut outcome = Ok(());
        while outcome.is_ok() && self.sent < size {
            let len = streaming_part_size(self.next_number()).min(size - self.sent);
            outcome = self.send_part(len, Pages::Keep).await;
        }
        match outcome {
            Ok(()) => self.complete().await,
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn complete(mut self) -> S3Result<Option<String>> {
        let mut outcome = Ok(());
        while outcome.is_ok() && !self.running.is_empty() {
            outcome = self.wait_one().await;
        }
        if let Err(e) = outcome {
            self.abort().await;
            return Err(e);
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.number);
        match self.store.complete_multipart(&self.bucket, &self.key, &self.upload_id, parts).await {
            Ok(etag) => Ok(etag),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Stops the parts still going up and aborts the upload, so that no parts are left behind.
    pub async fn abort(mut self) {
        self.running.abort_all();
        while self.running.join_next().await.is_some() {}
        if let Err(e) = self.store.abort_multipart(&self.bucket, &self.key, &self.upload_id).await {
            tracing::warn!(bucket = %self.bucket, key = %self.key, error = %e, "could not abort a multipart upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::MemoryStore;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_sizes_fit_five_tebibytes_in_ten_thousand_parts() {
        assert_eq!(part_size(20 * MIB), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB), 8 * MIB);
        let five_tib = 5 * 1024 * 1024 * MIB;
        let size = part_size(five_tib);
        assert!(five_tib.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % MIB, 0);
        assert!(size < MAX_PART_SIZE);
    }

    #[test]
    fn streaming_parts_reach_five_tebibytes_in_ten_thousand_parts() {
        let total: u64 = (1..=MAX_PARTS as i32).map(streaming_part_size).sum();
        assert!(total >= 5 * 1024 * 1024 * MIB, "only {total} bytes");
        assert_eq!(streaming_part_size(1), 8 * MIB);
        assert_eq!(streaming_part_size(1001), 16 * MIB);
        assert!((1..=MAX_PARTS as i32).all(|n| streaming_part_size(n) <= MAX_PART_SIZE));
    }

    #[test]
    fn forgotten_pages_keep_their_bytes() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3 * MIB).map(|i| (i % 239) as u8).collect();
        std::fs::write(file.path(), &data).unwrap();
        forget_pages(&FileRange { path: file.path().to_path_buf(), offset: MIB, len: MIB });
        assert!(std::fs::read(file.path()).unwrap() == data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_go_up_while_the_file_grows() {
        let memory = Arc::new(MemoryStore::new(&["b"]));
        let store: Arc<dyn ObjectStore> = memory.clone();
        let file = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..30 * MIB).map(|i| (i % 241) as u8).collect();
        let mut upload = StreamingUpload::start(&store, "b", "k", file.path(), &Default::default()).await.unwrap();
        std::fs::write(file.path(), &data[..20 * MIB as usize]).unwrap();
        upload.send_written(20 * MIB).await.unwrap();
        assert_eq!(upload.sent(), 16 * MIB, "two whole parts while the writer goes on");
        use std::io::Write;
        let mut appender = std::fs::OpenOptions::new().append(true).open(file.path()).unwrap();
        appender.write_all(&data[20 * MIB as usize..]).unwrap();
        upload.finish(data.len() as u64).await.unwrap();
        assert!(memory.object("b", "k").unwrap() == data);
        assert_eq!(memory.calls("upload_part"), 4);
        assert_eq!(memory.open_uploads(), 0);
    }

    /// A streaming upload of `data` written in 1 MiB appends, each handed to the upload as
    /// the write path does, with `change` applied to the file and the upload after `at` bytes.
    async fn streamed(data: &[u8], at: u64, change: impl FnOnce(&std::fs::File, &mut StreamingUpload)) -> Vec<u8> {
        streamed_beside(data, data, at, change).await
    }

    /// As [`streamed`], with the upload told of `told` while the file gets `data`.
    async fn streamed_beside(
        data: &[u8],
        told: &[u8],
        at: u64,
        change: impl FnOnce(&std::fs::File, &mut StreamingUpload),
    ) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let memory = Arc::new(MemoryStore::new(&["b"]));
        let store: Arc<dyn ObjectStore> = memory.clone();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut upload = StreamingUpload::start(&store, "b", "k", file.path(), &Default::default()).await.unwrap();
        let mut change = Some(change);
        let mut size = 0;
        for (piece, told) in data.chunks(MIB as usize).zip(told.chunks(MIB as usize)) {
            file.as_file().write_all_at(piece, size).unwrap();
            upload.wrote(size, told);
            size += piece.len() as u64;
            if size == at {
                (change.take().unwrap())(file.as_file(), &mut upload);
                size = file.as_file().metadata().unwrap().len();
            }
            upload.send_written(size).await.unwrap();
        }
        upload.finish(size).await.unwrap();
        assert_eq!(memory.open_uploads(), 0);
        memory.object("b", "k").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_parts_carry_the_bytes_written() {
        let data: Vec<u8> = (0..30 * MIB + 5).map(|i| (i % 251) as u8).collect();
        assert!(streamed(&data, 0, |_, _| {}).await == data);

        let told: Vec<u8> = data.iter().map(|byte| byte ^ 0xff).collect();
        let object = streamed_beside(&data, &told, 0, |_, _| {}).await;
        let first = MIB as usize;
        assert!(object[..first] == data[..first], "written before anything was held: read from the file");
        assert!(object[first..] == told[first..], "the rest went up from the bytes held as written");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_inside_the_held_part_goes_up_from_the_file() {
        use std::os::unix::fs::FileExt;
        let mut data: Vec<u8> = (0..30 * MIB).map(|i| (i % 251) as u8).collect();
        let object = streamed(&data, 19 * MIB, |file, upload| {
            file.write_all_at(b"changed", 17 * MIB).unwrap();
            upload.wrote(17 * MIB, b"changed");
        })
        .await;
        data[17 * MIB as usize..][..7].copy_from_slice(b"changed");
        assert!(object == data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_below_the_held_bytes_drops_them() {
        let data: Vec<u8> = (0..30 * MIB).map(|i| (i % 251) as u8).collect();
        let object = streamed(&data, 20 * MIB, |file, upload| {
            file.set_len(18 * MIB).unwrap();
            upload.truncated(18 * MIB);
            file.set_len(20 * MIB).unwrap();
            upload.truncated(20 * MIB);
        })
        .await;
        let mut expected = data.clone();
        expected[18 * MIB as usize..20 * MIB as usize].fill(0);
        assert!(object == expected);
    }
}
