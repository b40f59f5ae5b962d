/*!
Read handles: ranged GETs for one open object, pinned to one version of it.

The version is the ETag known at open (from HEAD or a listing) or, when the server left it out
of the listing, the one the first GET returns. Every later GET sends it as If-Match, and a
response carrying another ETag is refused as well, for servers that ignore If-Match. So a file
replaced under an open handle reads as ESTALE, never as a mix of two versions.

Sequential reads grow a read-ahead window, doubling from the kernel's request size up to
[`MAX_WINDOW`]; a seek resets it. One GET is in flight per handle: parallel read-ahead comes
with the performance work, behind this same `read` call.
*/

use std::ops::Range;

use tokio::sync::Mutex;

use crate::error::{FsError, FsResult};
use crate::s3::{ObjectStore, S3Error};

/// The largest read-ahead window, and so the most one handle buffers.
const MAX_WINDOW: u64 = 8 * 1024 * 1024;
const MIN_WINDOW: u64 = 128 * 1024;

pub struct ReadHandle {
    bucket: String,
    key: String,
    size: u64,
    state: Mutex<ReadState>,
}

struct ReadState {
    etag: Option<String>,
    buffer: Vec<u8>,
    buffer_start: u64,
    /// Where a sequential reader's next read starts.
    next_offset: u64,
    window: u64,
}

impl ReadHandle {
    pub fn new(bucket: String, key: String, size: u64, etag: Option<String>) -> Self {
        ReadHandle {
            bucket,
            key,
            size,
            state: Mutex::new(ReadState {
                etag,
                buffer: Vec::new(),
                buffer_start: 0,
                next_offset: 0,
                window: MIN_WINDOW,
            }),
        }
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(&self, store: &dyn ObjectStore, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let mut state = self.state.lock().await;
        if offset >= end {
            return Ok(Vec::new());
        }
        let buffered = state.buffer_start..state.buffer_start + state.buffer.len() as u64;
        if !(buffered.contains(&offset) && end <= buffered.end) {
            state.window = if offset == state.next_offset { (state.window * 2).min(MAX_WINDOW) } else { MIN_WINDOW };
            let fetch_len = state.window.max(end - offset);
            let range = offset..offset.saturating_add(fetch_len).min(self.size);
            let data = self.fetch(store, &mut state, range).await?;
            state.buffer = data;
            state.buffer_start = offset;
        }
        state.next_offset = end;
        let from = (offset - state.buffer_start) as usize;
        let to = (end - state.buffer_start) as usize;
        Ok(state.buffer[from..to].to_vec())
    }

    async fn fetch(&self, store: &dyn ObjectStore, state: &mut ReadState, range: Range<u64>) -> FsResult<Vec<u8>> {
        let expected = range.end - range.start;
        let got = store.get_range(&self.bucket, &self.key, range.clone(), state.etag.as_deref()).await;
        let got = got.map_err(|err| match err {
            S3Error::PreconditionFailed | S3Error::NotFound | S3Error::InvalidRange => {
                tracing::warn!(bucket = %self.bucket, key = %self.key, "object changed or vanished while open");
                FsError::Stale
            }
            other => {
                tracing::warn!(bucket = %self.bucket, key = %self.key, ?range, error = %other, "read failed");
                FsError::from(other)
            }
        })?;
        match (&state.etag, &got.etag) {
            (Some(pinned), Some(now)) if unquoted(pinned) != unquoted(now) => {
                tracing::warn!(bucket = %self.bucket, key = %self.key, "object replaced while open");
                return Err(FsError::Stale);
            }
            (None, Some(now)) => state.etag = Some(now.clone()),
            _ => {}
        }
        if got.data.len() as u64 != expected {
            tracing::warn!(bucket = %self.bucket, key = %self.key, got = got.data.len(), expected, "short read from S3");
            return Err(FsError::Io(format!("short body: {} of {expected} bytes", got.data.len())));
        }
        Ok(got.data)
    }
}

fn unquoted(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}
