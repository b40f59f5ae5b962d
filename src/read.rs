/*!
Read handles: ranged GETs for one open object, pinned to one version of it, with parallel
read-ahead for sequential readers.

**Pinning.** The version is the ETag known at open (from HEAD or a listing) or, when the server
left it out of the listing, the one the first GET returns. Every later GET sends it as If-Match,
and a response carrying another ETag is refused as well, for servers that ignore If-Match. So a
file replaced under an open handle reads as ESTALE, never as a mix of two versions.

**Read-ahead.** A handle keeps a queue of chunks: ranged GETs already started, in file order,
each a tokio task. A read takes its bytes from the queue, waiting for the chunks it needs. While
reads stay sequential, the distance fetched ahead of the reader doubles, from [`FIRST_AHEAD`] up
to [`MAX_AHEAD`], in chunks of up to [`MAX_CHUNK`], so several GETs are in flight at once.
A read is sequential if it lies in the queue, starts at most [`MAX_GAP`] past the furthest point
read, or, while the queue holds anything, at most [`REORDER`] behind it: the kernel sends its
read-ahead as several requests at once, and they may reach the queue in any order. The chunks
that end within [`REORDER`] behind the furthest point are kept for requests that come late. A
read anywhere else is a seek: the queue is dropped (its GETs are cancelled) and only the bytes
that read asks for are fetched, by a GET the read awaits itself, so a random read costs one GET
of its own size and no hop between threads; read-ahead starts again if the next read follows on.
The first read of a handle, and the one that follows on from a seek, likewise get a GET of
exactly their bytes, with the read-ahead beside it: a reader's first byte waits for no more
than it asked for.

**Memory.** Chunks fetched ahead hold permits of a [`ReadAheadBudget`] shared by every handle of
the mount, until the reader is [`REORDER`] past them; when it is spent, chunks are fetched only
as readers need them. A read always gets the bytes it asks for, so a full budget slows
read-ahead down but never stops a reader. A chunk dropped from the queue cancels its GET,
unless it is small enough that finishing it is cheaper than the new connection a cancelled GET
costs (see [`DRAIN_AT_MOST`]); its permits go back at once, and its bytes, held until it
finishes and then dropped, are never more than a few small chunks per handle.

**Behind the reader.** The kernel keeps every page a reader has read in its page cache, and a
mount drops that cache at the next open anyway. [`ReadHandle::behind_reader`] names what a
sequential run has left [`KEEP_BEHIND`] behind it, in batches of [`DROP_BATCH`], for the
kernel to forget: its pages then go back to the free lists, and the pages the kernel takes for
the next reads are the same ones, warm. On a virtual machine that hands free memory back to its
host, a page the kernel takes fresh costs a fault in the host; a 1 GiB read through the page
cache had spent most of its time there.
*/

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{FsError, FsResult};
use crate::s3::{Body, ObjectStore, RangeData, S3Error, S3Result};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// How far ahead the first sequential read of a handle, or the first to follow a seek, fetches.
const FIRST_AHEAD: u64 = 256 * KIB;
/// The farthest one sequential reader is read ahead.
const MAX_AHEAD: u64 = 64 * MIB;
const MAX_CHUNK: u64 = 8 * MIB;
/// How far past the furthest point read a read may start and still be sequential: the largest
/// read the kernel sends, so that a request that overtakes the one before it keeps read-ahead
/// going. Farther ahead, read-ahead would fetch the bytes skipped.
const MAX_GAP: u64 = MIB;
/// How far out of order the kernel's read-ahead requests may arrive: a few of its largest reads.
/// Treating a late one as a seek cancelled up to [`MAX_AHEAD`] of GETs in flight and started the
/// window afresh, two to twelve times in a 1 GiB `dd`.
const REORDER: u64 = 4 * MIB;
/// How far behind the furthest point read a sequential run's pages stay cached: past the
/// requests that may still arrive late ([`REORDER`]), and past what the kernel has read ahead of
/// the program that reads.
const KEEP_BEHIND: u64 = 2 * REORDER;
/// How much a sequential run leaves behind before the kernel is told to forget it.
const DROP_BATCH: u64 = 8 * MIB;
const PAGE: u64 = 4 * KIB;
/// The largest chunk left to finish when it is dropped in flight: at the 100 MB/s or so one
/// connection to S3 brings, its remainder takes about as long as a new connection's handshake.
const DRAIN_AT_MOST: u64 = MIB;
/// The unit of the read-ahead budget's permits.
const BUDGET_UNIT: u64 = 64 * KIB;

/// Bytes all the read-ahead of a mount may hold at once, and how many reads the mount has made.
#[derive(Clone)]
pub struct ReadAheadBudget {
    permits: Arc<Semaphore>,
    reads: Arc<AtomicU64>,
}

impl ReadAheadBudget {
    pub fn new(bytes: u64) -> Self {
        let permits = Arc::new(Semaphore::new((bytes / BUDGET_UNIT).max(1) as usize));
        ReadAheadBudget { permits, reads: Arc::default() }
    }

    fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_many_owned(bytes.div_ceil(BUDGET_UNIT) as u32).ok()
    }

    /// Reads of S3 objects made through every handle of the mount so far: once they stop
    /// coming, the memory their bodies took can go back to the system.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

pub struct ReadHandle {
    bucket: Arc<str>,
    key: Arc<str>,
    size: u64,
    budget: ReadAheadBudget,
    state: Mutex<ReadState>,
}

/// One ranged GET, started, with the budget it holds while its bytes wait for the reader.
struct Chunk {
    range: Range<u64>,
    task: JoinHandle<S3Result<RangeData>>,
    data: Option<Body>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Where a read's bytes come from.
enum Source {
    /// The queue's chunks.
    Queue,
    /// A GET of the read's own; after a seek, which has emptied the queue, or not.
    OwnGet { seek: bool },
}

struct ReadState {
    etag: Option<String>,
    chunks: VecDeque<Chunk>,
    /// The furthest point read since the last seek: where a sequential reader's next read starts.
    next_offset: u64,
    /// How far ahead of the reader chunks are started.
    ahead: u64,
    /// Where the pages of the present sequential run that the kernel may still cache begin.
    cached_from: u64,
}

impl Drop for Chunk {
    /// A GET cut off in mid-body takes its connection down with it, and the next request has to
    /// open another (on S3, a TLS handshake). A chunk of up to [`DRAIN_AT_MOST`] is left to
    /// finish instead, its bytes dropped, so that its connection goes back to the pool: a
    /// program that opens a file, reads its head and closes it cuts off the first read-ahead
    /// chunk every time. Larger chunks are cancelled, as their remainder costs more than a
    /// new connection.
    fn drop(&mut self) {
        if self.range.end - self.range.start > DRAIN_AT_MOST {
            self.task.abort();
        }
    }
}

impl ReadHandle {
    pub fn new(bucket: String, key: String, size: u64, etag: Option<String>, budget: ReadAheadBudget) -> Self {
        ReadHandle {
            bucket: bucket.into(),
            key: key.into(),
            size,
            budget,
            // Half, because a first read at 0 counts as sequential and doubles it.
            state: Mutex::new(ReadState {
                etag,
                chunks: VecDeque::new(),
                next_offset: 0,
                ahead: FIRST_AHEAD / 2,
                cached_from: 0,
            }),
        }
    }

    /// Reads up to `len` bytes at `offset`, short only at the end of the object, as slices of the
    /// bodies that brought them, in order.
    pub async fn read(&self, store: &Arc<dyn ObjectStore>, offset: u64, len: u32) -> FsResult<Vec<Bytes>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.budget.reads.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        if let Source::OwnGet { seek } = self.follow(state, store, offset, end) {
            // A seek, or a late request for bytes the queue no longer holds: one GET of exactly
            // these bytes, awaited here, as a task of its own would only add a hop between
            // threads to a random read's latency.
            let got = store.get_range(&self.bucket, &self.key, offset..end, state.etag.as_deref()).await;
            let data = self.check(&mut state.etag, got, offset..end)?;
            state.next_offset = if seek { end } else { state.next_offset.max(end) };
            return Ok(data.into_pieces());
        }
        let mut index = state.chunks.iter().position(|c| offset < c.range.end).unwrap_or(state.chunks.len());
        let mut position = offset;
        while position < end {
            let chunk = state.chunks.get_mut(index).ok_or_else(|| FsError::Io("read-ahead queue is short".into()))?;
            if chunk.data.is_none() {
                let joined = (&mut chunk.task).await.map_err(|e| FsError::Io(format!("a read stopped: {e}")));
                let range = chunk.range.clone();
                match joined.and_then(|got| self.check(&mut state.etag, got, range)) {
                    Ok(data) => chunk.data = Some(data),
                    Err(e) => {
                        // A failed chunk's task is spent: start the next read afresh.
                        state.chunks.clear();
                        return Err(e);
                    }
                }
            }
            position = chunk.range.end;
            index += 1;
        }
        state.next_offset = state.next_offset.max(end);
        arrived(state, offset, end).ok_or_else(|| FsError::Io("read-ahead queue has a gap".into()))
    }

    /// A read of `len` bytes at `offset`, done at once if the handle is free and the chunks that
    /// hold the bytes have been received by an earlier read; else `None`, and the read is for
    /// [`read`](Self::read). A chunk holds up to 8 MiB, so most reads qualify. It lets the
    /// FUSE thread answer without the hop to a task, which was most of the time of a small read
    /// past the page cache. Needs a tokio runtime's context, as it may start read-ahead.
    pub fn read_arrived(&self, store: &Arc<dyn ObjectStore>, offset: u64, len: u32) -> Option<Vec<Bytes>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Some(Vec::new());
        }
        let mut guard = self.state.try_lock().ok()?;
        let state = &mut *guard;
        let pieces = arrived(state, offset, end)?;
        self.budget.reads.fetch_add(1, Ordering::Relaxed);
        self.follow(state, store, offset, end);
        state.next_offset = state.next_offset.max(end);
        Some(pieces)
    }

    /// Moves the queue on for a read of `offset..end` and says where the read's bytes come from:
    /// for a sequential reader read-ahead grows and GETs start beyond it, unless the queue has
    /// already let the bytes go; a seek cancels it.
    fn follow(&self, state: &mut ReadState, store: &Arc<dyn ObjectStore>, offset: u64, end: u64) -> Source {
        let queued = state.chunks.front().is_some_and(|c| c.range.start <= offset)
            && state.chunks.back().is_some_and(|c| offset < c.range.end);
        let furthest = state.next_offset;
        let late = offset < furthest && furthest - offset <= REORDER && !state.chunks.is_empty();
        let sequential = queued || late || (furthest..=furthest + MAX_GAP).contains(&offset);
        state.ahead = if sequential { (state.ahead * 2).clamp(FIRST_AHEAD, MAX_AHEAD) } else { 0 };
        if !sequential {
            state.chunks.clear();
            state.cached_from = offset - offset % PAGE;
            return Source::OwnGet { seek: true };
        }
        let furthest = furthest.max(offset);
        while state.chunks.front().is_some_and(|c| c.range.end + REORDER <= furthest) {
            state.chunks.pop_front();
        }
        if state.chunks.front().is_some_and(|c| offset < c.range.start) {
            return Source::OwnGet { seek: false };
        }
        // The bytes this read needs are always fetched; what lies beyond is read-ahead.
        self.fill(state, store, offset, end);
        Source::Queue
    }

    /// Starts GETs so that the queue covers `offset..end` (whatever the budget says) and, if
    /// the budget allows, reaches `ahead` bytes past `offset`.
    fn fill(&self, state: &mut ReadState, store: &Arc<dyn ObjectStore>, offset: u64, end: u64) {
        let target = offset.saturating_add(state.ahead).max(end).min(self.size);
        let chunk_len = (state.ahead / 4).clamp(FIRST_AHEAD, MAX_CHUNK);
        // The first read of a handle, or the first to follow on from a seek, has its bytes
        // fetched by a GET of their own, so it waits for those alone, and read-ahead starts beside
        // it. A reader well into a sequential run that has caught up (a spent budget) keeps whole
        // chunks, or every read would wait on a GET of its own.
        let starting = state.ahead <= FIRST_AHEAD;
        let mut queued_end = state.chunks.back().map_or(offset, |c| c.range.end);
        while queued_end < target {
            let len = if state.chunks.is_empty() && starting { end - offset } else { chunk_len };
            let range = queued_end..queued_end.saturating_add(len).min(self.size);
            let permit = self.budget.try_take(range.end - range.start);
            if permit.is_none() && range.start >= end {
                break;
            }
            let (store, bucket, key, etag) = (store.clone(), self.bucket.clone(), self.key.clone(), state.etag.clone());
            let fetch = range.clone();
            let task = tokio::spawn(async move { store.get_range(&bucket, &key, fetch, etag.as_deref()).await });
            queued_end = range.end;
            state.chunks.push_back(Chunk { range, task, data: None, _permit: permit });
        }
    }

    /// The bytes a sequential run has left far enough behind that the kernel may forget their
    /// pages, once there are [`DROP_BATCH`] of them, as whole pages; each range is named once.
    /// `None` too while another read holds the handle: a later read names what this one left.
    pub fn behind_reader(&self) -> Option<Range<u64>> {
        let mut state = self.state.try_lock().ok()?;
        let keep_from = state.next_offset.saturating_sub(KEEP_BEHIND);
        let keep_from = keep_from - keep_from % PAGE;
        if keep_from < state.cached_from + DROP_BATCH {
            return None;
        }
        let behind = state.cached_from..keep_from;
        state.cached_from = keep_from;
        Some(behind)
    }

    /// Checks a chunk's answer against the pinned version and its expected length.
    fn check(&self, pinned: &mut Option<String>, got: S3Result<RangeData>, range: Range<u64>) -> FsResult<Body> {
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
        match (&*pinned, &got.etag) {
            (Some(pinned), Some(now)) if unquoted(pinned) != unquoted(now) => {
                tracing::warn!(bucket = %self.bucket, key = %self.key, "object replaced while open");
                return Err(FsError::Stale);
            }
            (None, Some(now)) => *pinned = Some(now.clone()),
            _ => {}
        }
        let expected = range.end - range.start;
        if got.data.len() != expected {
            tracing::warn!(bucket = %self.bucket, key = %self.key, got = got.data.len(), expected, "short read from S3");
            return Err(FsError::Io(format!("short body: {} of {expected} bytes", got.data.len())));
        }
        Ok(got.data)
    }
}

/// The bytes of `offset..end` as slices of queued chunks, if every chunk that holds them has
/// arrived.
fn arrived(state: &ReadState, offset: u64, end: u64) -> Option<Vec<Bytes>> {
    let mut pieces = Vec::new();
    let mut position = offset;
    for chunk in state.chunks.iter().skip_while(|c| c.range.end <= offset) {
        if position >= end {
            break;
        }
        if chunk.range.start > position {
            return None;
        }
        let to = end.min(chunk.range.end);
        pieces.extend(chunk.data.as_ref()?.slices(position - chunk.range.start..to - chunk.range.start));
        position = to;
    }
    (position >= end).then_some(pieces)
}

fn unquoted(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::s3::{Fault, FaultyStore, MemoryStore};

    /// What a read of `handle` returns, joined into one buffer.
    async fn read(handle: &ReadHandle, store: &Arc<dyn ObjectStore>, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        Ok(handle.read(store, offset, len).await?.concat())
    }

    fn object(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    /// `memory` holding an object of `size` bytes as b/k, and a handle on it with `budget`.
    fn opened(memory: MemoryStore, size: usize, budget: u64) -> (Arc<MemoryStore>, Vec<u8>, ReadHandle) {
        let memory = Arc::new(memory);
        let data = object(size);
        memory.insert("b", "k", data.clone());
        let handle = ReadHandle::new("b".into(), "k".into(), size as u64, None, ReadAheadBudget::new(budget));
        (memory, data, handle)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_reads_go_ahead_in_parallel_and_match() {
        let memory = MemoryStore::new(&["b"]).with_latency(Duration::from_millis(5));
        let (memory, data, handle) = opened(memory, 100 * MIB as usize + 7, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let mut offset = 0;
        while offset < data.len() {
            let got = read(&handle, &store, offset as u64, 128 * 1024).await.unwrap();
            assert!(got == data[offset..(offset + 128 * 1024).min(data.len())], "at {offset}");
            offset += got.len();
        }
        assert!(memory.most_in_flight() >= 4, "GETs overlapped: {}", memory.most_in_flight());
        assert!(memory.calls("get_range") < 40, "big chunks: {} GETs", memory.calls("get_range"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_that_arrive_out_of_order_are_still_sequential() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 64 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        // The second MiB before the first, then in order until read-ahead is well under way, then
        // every pair swapped, as the kernel's requests sometimes reach the queue.
        let mut order: Vec<u64> = vec![1, 0];
        order.extend(2..8);
        for pair in (8..48).step_by(2) {
            order.extend([pair + 1, pair]);
        }
        for n in order {
            let offset = n * MIB;
            let got = read(&handle, &store, offset, MIB as u32).await.unwrap();
            assert!(got == data[offset as usize..][..MIB as usize], "at {offset}");
        }
        let mut asked = memory.ranges_asked();
        asked.sort_by_key(|r| r.start);
        assert!(asked.windows(2).all(|w| w[0].end <= w[1].start), "a byte was fetched twice: {asked:?}");
        assert!(asked.len() < 30, "read ahead in chunks: {} GETs", asked.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_of_bytes_already_here_is_answered_at_once_and_only_then() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 16 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let queued = |state: &ReadState| state.chunks.iter().map(|c| c.range.clone()).collect::<Vec<_>>();
        assert!(read(&handle, &store, 0, 64 * 1024).await.unwrap() == data[..64 * 1024]);
        assert!(handle.read_arrived(&store, 64 * 1024, 4096).is_none(), "read-ahead not yet joined");
        assert!(read(&handle, &store, 64 * 1024, 4096).await.unwrap() == data[64 * 1024..][..4096]);

        let before = queued(&*handle.state.lock().await);
        assert!(handle.read_arrived(&store, 10 * MIB, 4096).is_none(), "a seek is not answered at once");
        assert_eq!(queued(&*handle.state.lock().await), before, "and leaves the queue alone");

        let at = 68 * 1024;
        let got = handle.read_arrived(&store, at, 4096).expect("the bytes are here").concat();
        assert!(got == data[at as usize..][..4096]);
        let state = handle.state.lock().await;
        assert_eq!(state.next_offset, at + 4096, "the reader moved on");
        assert!(queued(&state).len() > before.len(), "and read-ahead with it: {:?}", queued(&state));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_run_names_the_pages_it_left_behind_once_each() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 40 * MIB as usize + 5, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let mut named = Vec::new();
        for offset in (0..data.len() as u64).step_by(MIB as usize) {
            let got = read(&handle, &store, offset, MIB as u32).await.unwrap();
            assert!(got[..] == data[offset as usize..(offset + MIB).min(data.len() as u64) as usize]);
            if let Some(behind) = handle.behind_reader() {
                assert!(behind.end + KEEP_BEHIND <= offset + MIB, "{behind:?} is too close to the reader at {offset}");
                named.push(behind);
            }
        }
        assert_eq!(named.first().map(|r| r.start), Some(0), "{named:?}");
        assert!(named.windows(2).all(|w| w[0].end == w[1].start), "each page named once: {named:?}");
        assert!(named.iter().all(|r| r.end - r.start >= DROP_BATCH && r.end % PAGE == 0), "{named:?}");
        assert!(named.last().unwrap().end >= data.len() as u64 - KEEP_BEHIND - DROP_BATCH, "{named:?}");

        // A seek starts a new run: what lies before it is not named.
        read(&handle, &store, 2 * MIB + 100, 4096).await.unwrap();
        assert_eq!(handle.behind_reader(), None);
        for offset in (3 * MIB..22 * MIB).step_by(MIB as usize) {
            read(&handle, &store, offset, MIB as u32).await.unwrap();
        }
        assert_eq!(handle.behind_reader(), Some(2 * MIB..14 * MIB));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_reads_leave_nothing_behind() {
        let (memory, _, handle) = opened(MemoryStore::new(&["b"]), 64 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        for n in 1..=20u64 {
            read(&handle, &store, (n * 7_919_993) % (60 * MIB), 256 * 1024).await.unwrap();
            assert_eq!(handle.behind_reader(), None, "read {n}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_reads_fetch_little() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 64 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        // From 1: a first read at 0 counts as the start of a sequential reader.
        for n in 1..=20u64 {
            let offset = (n * 7_919_993) % (data.len() as u64 - 4096);
            let got = read(&handle, &store, offset, 4096).await.unwrap();
            assert!(got == data[offset as usize..offset as usize + 4096]);
        }
        assert!(memory.calls("get_range") <= 20, "one GET per random read: {}", memory.calls("get_range"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_reads_close_together_fetch_little_too() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 8 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        // Within 4 MiB of each other, back and forth, each forward step a little over 1 MiB.
        for n in 1..=20u64 {
            let offset = (n * 1_234_567) % (4 * MIB);
            let got = read(&handle, &store, offset, 4096).await.unwrap();
            assert!(got == data[offset as usize..offset as usize + 4096]);
        }
        let asked = memory.ranges_asked();
        assert!(asked.iter().all(|r| r.end - r.start == 4096), "one GET of each read's size: {asked:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_read_and_a_read_after_a_seek_wait_for_their_own_bytes_alone() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 64 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let queued = |state: &ReadState| state.chunks.iter().map(|c| c.range.clone()).collect::<Vec<_>>();

        assert!(read(&handle, &store, 0, 16 * 1024).await.unwrap() == data[..16 * 1024]);
        let first = queued(&*handle.state.lock().await);
        assert_eq!(first[0], 0..16 * 1024, "the first read's own GET: {first:?}");
        assert_eq!(first.get(1).map(|r| r.start), Some(16 * 1024), "read-ahead beside it: {first:?}");

        let (offset, len) = (40 * MIB + 123, 260 * 1024);
        let got = read(&handle, &store, offset, len).await.unwrap();
        assert!(got == data[offset as usize..offset as usize + len as usize]);
        let asked: Vec<_> = memory.ranges_asked().into_iter().filter(|r| r.start >= offset).collect();
        assert_eq!(asked, vec![offset..offset + u64::from(len)], "one GET of the read's size");
        assert_eq!(queued(&*handle.state.lock().await), vec![], "and nothing read ahead");

        let follow_on = offset + u64::from(len);
        assert!(read(&handle, &store, follow_on, 4096).await.unwrap() == data[follow_on as usize..][..4096]);
        let resumed = queued(&*handle.state.lock().await);
        assert_eq!(resumed[0], follow_on..follow_on + 4096, "the read that follows on gets its own GET: {resumed:?}");
        assert!(resumed.len() > 1, "and read-ahead starts again beside it: {resumed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_handle_lets_small_gets_finish_and_cancels_large_ones() {
        let memory = MemoryStore::new(&["b"]).with_latency(Duration::from_millis(50));
        let (memory, _, handle) = opened(memory, 64 * MIB as usize, 256 * MIB);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let queued = {
            let mut state = handle.state.lock().await;
            // A first read's own GET and the read-ahead beside it, then a window far enough on
            // for chunks over the limit.
            handle.fill(&mut state, &store, 0, 4096);
            state.ahead = 16 * MIB;
            handle.fill(&mut state, &store, 0, 4096);
            state.chunks.iter().map(|c| c.range.clone()).collect::<Vec<_>>()
        };
        let (small, large): (Vec<_>, Vec<_>) = queued.into_iter().partition(|r| r.end - r.start <= DRAIN_AT_MOST);
        assert!(!small.is_empty() && !large.is_empty(), "both kinds in flight: {small:?} {large:?}");
        drop(handle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut answered = memory.ranges_asked();
        answered.sort_by_key(|r| r.start);
        assert_eq!(answered, small, "the small GETs finished, the large ones were cancelled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_budget_slows_read_ahead_but_never_stops_a_reader() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 20 * MIB as usize, 0);
        let store: Arc<dyn ObjectStore> = memory.clone();
        let mut offset = 0;
        while offset < data.len() {
            let got = read(&handle, &store, offset as u64, 1024 * 1024).await.unwrap();
            assert!(got == data[offset..offset + got.len()]);
            offset += got.len();
        }
        assert!(
            memory.calls("get_range") < 20,
            "a reader caught up in a sequential run fetches whole chunks, not a GET per read"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_read_is_an_error_and_the_next_read_starts_afresh() {
        let (memory, data, handle) = opened(MemoryStore::new(&["b"]), 4 * MIB as usize, 64 * MIB);
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let store: Arc<dyn ObjectStore> = faulty.clone();
        // Every GET fails while the first read runs: its own GET and the read-ahead beside it race.
        faulty.inject("get_range", Fault::Fail(S3Error::Unreachable("reset".into())), 8);
        assert!(matches!(read(&handle, &store, 0, 4096).await, Err(FsError::Io(_))));
        faulty.clear();
        assert!(read(&handle, &store, 0, 4096).await.unwrap() == data[..4096]);
        memory.insert("b", "k", object(4 * MIB as usize));
        assert_eq!(read(&handle, &store, 3 * MIB, 4096).await, Err(FsError::Stale), "a new version is refused");
    }
}
