/*!
Request and response bodies held in memory, in buffers that are reused while transfers keep
them busy; and the CRC32 of each request body read from a staging file.

Why the CRC32 of our own: given none, the SDK sends a streamed body aws-chunked with a CRC32
trailer and, over plain HTTP, signs every 64 KiB chunk with SHA-256, a fifth of the daemon's CPU
on a large write. Given the checksum and an unsigned payload, it sends the body as it is
(`UNSIGNED-PAYLOAD`), and the server still checks every byte against the CRC32.

Why uploads in memory: a body up to [`IN_MEMORY_BODY`] (every part of a file under 80 GiB) is
read once, and the checksum and the request both use that copy. Streamed from the file, each
byte was copied three times more on its way to the socket (for the checksum, and twice by the
SDK's file reader), and hopped to a blocking thread for every MiB.

Why GET bodies gathered: a body arrives in pieces of a few KiB, and a read of 1 MiB that spans
many of them had to be joined into one buffer anyway, as a FUSE reply takes one slice. Gathered
as they arrive, the pieces' buffers go back to the connection at once.

Why parts held: a streaming writer's part (see `upload.rs`) is gathered in a [`PartBuffer`] as
the writer appends, beside the staging file, and goes up from there: read back from the page
cache, each part cost the daemon a copy out of the kernel (about 0.23 CPU-seconds per GiB here,
against 0.05 for the copy from the write's buffer, which is in the CPU's cache).

Why reused: a new 8 MiB buffer for each part or chunk is 2,048 new pages, which on a virtual
machine that hands free memory back to its host cost a fault in the host as well. A buffer goes
back to its [`BodyBuffers`] when the last slice of its body is dropped, and the next body takes
it, warm. The buffers are freed once no body is out, so a mount that has stopped reading and
writing holds none of them, and the idle ones never outnumber the most that were out at once.
*/

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use aws_sdk_s3::primitives::{ByteStream, Length};
use bytes::Bytes;

use super::{Body, FileRange, S3Error, S3Result};

/// Bodies up to this size are read into memory.
const IN_MEMORY_BODY: u64 = 16 * 1024 * 1024;

/// Bodies up to this size are read where they are needed: the hop to a blocking thread would
/// cost a small file more than the read.
const SMALL_BODY: u64 = 1024 * 1024;

/// Upload bodies in memory at once, across all uploads: 128 MiB of 8 MiB parts, 4 parts in
/// flight for each of 3 large writers, each filling one more. Past it, a body is streamed from
/// its file.
const UPLOAD_BODIES: usize = 16;

/// GET bodies gathered at once: the default read-ahead (128 MiB) in 8 MiB chunks, twice over
/// for the chunks a reader has just passed and the reads that wait for their own GET. Past it,
/// a body is kept in the pieces it came in.
pub const GET_BODIES: usize = 32;

/// GET bodies at least this long are gathered: a shorter one is one read's, which replies
/// with its pieces as they are.
const GATHERED: u64 = 1024 * 1024;

/// The piece a streamed body is read in: each piece is a hop to a blocking thread, and the
/// SDK's default of 64 KiB makes 16,384 of them per GiB.
const BODY_PIECE: usize = 1024 * 1024;

/// The buffers of the bodies held in memory: those out with requests and reads, and those back
/// and waiting for the next body.
pub struct BodyBuffers {
    most: usize,
    state: Mutex<Buffers>,
}

#[derive(Default)]
struct Buffers {
    out: usize,
    idle: Vec<Vec<u8>>,
}

impl BodyBuffers {
    /// Buffers for at most `most` bodies at once.
    pub fn new(most: usize) -> Arc<Self> {
        Arc::new(BodyBuffers { most, state: Mutex::default() })
    }

    /// A buffer of `len` bytes (their values left from its last use), or none when the most
    /// are out already.
    fn take(self: &Arc<Self>, len: usize) -> Option<Buffer> {
        let mut buffer = self.take_empty(len)?;
        buffer.data.resize(len, 0);
        Some(buffer)
    }

    /// An empty buffer with room for `len` bytes, or none when the most are out already.
    fn take_empty(self: &Arc<Self>, len: usize) -> Option<Buffer> {
        let mut state = self.lock();
        if state.out >= self.most {
            return None;
        }
        state.out += 1;
        let reused = state.idle.pop();
        drop(state);
        let mut data = match reused {
            Some(data) if data.capacity() >= len => data,
            _ => Vec::with_capacity(len),
        };
        data.clear();
        Some(Buffer { data, home: self.clone() })
    }

    fn give_back(&self, data: Vec<u8>) {
        let mut state = self.lock();
        state.out -= 1;
        if state.out == 0 {
            state.idle = Vec::new();
        } else {
            state.idle.push(data);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The buffers of every upload body in memory in this process, read from a staging file or held
/// as it was written, so that [`UPLOAD_BODIES`] bounds them all.
pub fn upload_bodies() -> Arc<BodyBuffers> {
    static BODIES: OnceLock<Arc<BodyBuffers>> = OnceLock::new();
    BODIES.get_or_init(|| BodyBuffers::new(UPLOAD_BODIES)).clone()
}

/// A part's bytes, gathered in memory as a writer appends them to the staging file.
pub struct PartBuffer(Buffer);

impl PartBuffer {
    /// An empty buffer for a part of `len` bytes, or none when the most upload bodies are in
    /// memory already or the part is larger than a body held in memory.
    pub fn take(len: u64) -> Option<Self> {
        if len > IN_MEMORY_BODY {
            return None;
        }
        upload_bodies().take_empty(len as usize).map(PartBuffer)
    }

    pub fn size(&self) -> u64 {
        self.0.data.len() as u64
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.0.data.extend_from_slice(bytes);
    }

    /// Appends `range` of a staging file.
    pub fn read_in(&mut self, range: &FileRange) -> std::io::Result<()> {
        if range.len == 0 {
            return Ok(());
        }
        let start = self.0.data.len();
        self.0.data.resize(start + range.len as usize, 0);
        let read = std::fs::File::open(&range.path)
            .and_then(|file| file.read_exact_at(&mut self.0.data[start..], range.offset));
        if read.is_err() {
            self.0.data.truncate(start);
        }
        read
    }

    /// Its first `len` bytes (it holds at least as many), as a part's body.
    pub fn into_part(self, len: u64) -> Bytes {
        Bytes::from_owner(self.0).slice(..len as usize)
    }
}

/// A body's bytes, owned by a request or by the slices of a GET's body until the last of them
/// is dropped.
struct Buffer {
    data: Vec<u8>,
    home: Arc<BodyBuffers>,
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.data));
    }
}

/// A GET's body of `len` bytes, gathered into one buffer as it arrives when a buffer is free,
/// else in the pieces it came in.
pub async fn gathered(
    mut body: ByteStream,
    len: Option<u64>,
    buffers: &Arc<BodyBuffers>,
) -> Result<Body, aws_smithy_types::byte_stream::error::Error> {
    let wanted = len.filter(|len| (GATHERED..=IN_MEMORY_BODY).contains(len));
    let Some(mut buffer) = wanted.and_then(|len| buffers.take_empty(len as usize)) else {
        return Ok(body.collect().await?.into_segments().collect());
    };
    while let Some(piece) = body.try_next().await? {
        buffer.data.extend_from_slice(&piece);
    }
    Ok(std::iter::once(Bytes::from_owner(buffer)).collect())
}

/// `range` of a staging file as a request body, with its CRC32 (base64, for the
/// `x-amz-checksum-crc32` header). Send it with the payload unsigned.
pub async fn staged_body(range: &FileRange, buffers: &Arc<BodyBuffers>) -> S3Result<(ByteStream, String)> {
    let buffer = if range.len <= IN_MEMORY_BODY { buffers.take(range.len as usize) } else { None };
    let Some(mut buffer) = buffer else {
        return streamed_body(range).await;
    };
    let staged = range.clone();
    let read = move || read_staged(&staged, &mut buffer.data).map(|crc32| (buffer, crc32));
    let read = if range.len <= SMALL_BODY {
        read()
    } else {
        tokio::task::spawn_blocking(read).await.map_err(|e| unreadable(range, e))?
    };
    let (buffer, crc32) = read.map_err(|e| unreadable(range, e))?;
    Ok((ByteStream::from(Bytes::from_owner(buffer)), crc32))
}

/// A part already in memory as a request body, with its CRC32 as [`staged_body`] gives it.
pub fn held_body(bytes: &Bytes) -> (ByteStream, String) {
    (ByteStream::from(bytes.clone()), crc32_of(bytes))
}

fn crc32_of(data: &[u8]) -> String {
    crc32_header(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data))
}

/// Fills `data` from `range` and returns its CRC32.
fn read_staged(range: &FileRange, data: &mut [u8]) -> std::io::Result<String> {
    std::fs::File::open(&range.path)?.read_exact_at(data, range.offset)?;
    Ok(crc32_of(data))
}

/// A body not held in memory: its CRC32 from one pass over the file, then the file streamed.
async fn streamed_body(range: &FileRange) -> S3Result<(ByteStream, String)> {
    let staged = range.clone();
    let crc32 = tokio::task::spawn_blocking(move || staged_crc32(&staged))
        .await
        .map_err(|e| unreadable(range, e))?
        .map_err(|e| unreadable(range, e))?;
    let body = ByteStream::read_from()
        .path(&range.path)
        .offset(range.offset)
        .length(Length::Exact(range.len))
        .buffer_size(BODY_PIECE)
        .build()
        .await
        .map_err(|e| unreadable(range, e))?;
    Ok((body, crc32))
}

fn staged_crc32(range: &FileRange) -> std::io::Result<String> {
    let file = std::fs::File::open(&range.path)?;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
    let mut piece = vec![0; BODY_PIECE];
    let mut done = 0;
    while done < range.len {
        let want = (range.len - done).min(BODY_PIECE as u64) as usize;
        file.read_exact_at(&mut piece[..want], range.offset + done)?;
        digest.update(&piece[..want]);
        done += want as u64;
    }
    Ok(crc32_header(digest.finalize()))
}

/// The `x-amz-checksum-crc32` value of a CRC32 (`crc_fast` gives it in a `u64`).
fn crc32_header(crc32: u64) -> String {
    aws_smithy_types::base64::encode((crc32 as u32).to_be_bytes())
}

fn unreadable(range: &FileRange, cause: impl std::fmt::Display) -> S3Error {
    S3Error::Other(format!("cannot read staged data {}: {cause}", range.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_bytes(body: ByteStream) -> Vec<u8> {
        body.collect().await.unwrap().into_bytes().to_vec()
    }

    fn reference_crc32(data: &[u8]) -> String {
        let crc32 = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data) as u32;
        aws_smithy_types::base64::encode(crc32.to_be_bytes())
    }

    #[tokio::test]
    async fn bodies_in_memory_and_streamed_carry_the_crc32_s3_expects() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let large = (IN_MEMORY_BODY + 1) as usize;
        file.write_all(b"xx123456789yy").unwrap();
        file.write_all(&vec![7; large]).unwrap();
        let range = |offset, len| FileRange { path: file.path().to_path_buf(), offset, len };
        let buffers = BodyBuffers::new(UPLOAD_BODIES);

        let (body, crc32) = staged_body(&range(2, 9), &buffers).await.unwrap();
        // The CRC-32 check value of "123456789" is 0xCBF43926.
        assert_eq!(crc32, "y/Q5Jg==");
        assert_eq!(body_bytes(body).await, b"123456789");

        let (body, crc32) = staged_body(&range(13, large as u64), &buffers).await.unwrap();
        assert_eq!(crc32, reference_crc32(&vec![7; large]));
        assert_eq!(body_bytes(body).await.len(), large, "a body past the memory bound is streamed whole");

        let near_the_end = 13 + large as u64 - 5;
        let past_the_end = staged_body(&range(near_the_end, SMALL_BODY * 2), &buffers).await;
        assert!(past_the_end.is_err(), "a range past the end of the file is an error");
        assert_eq!(buffers.lock().out, 0, "and its buffer is back");
        assert!(staged_crc32(&range(13, large as u64 + 1)).is_err(), "and so when streamed");
    }

    #[tokio::test]
    async fn a_returned_buffer_serves_the_next_body_and_none_is_kept_once_all_are_back() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let part = 2 * SMALL_BODY as usize;
        file.write_all(&vec![1; part]).unwrap();
        file.write_all(&vec![2; part]).unwrap();
        let range = |offset| FileRange { path: file.path().to_path_buf(), offset, len: part as u64 };
        let buffers = BodyBuffers::new(UPLOAD_BODIES);

        let (held, _) = staged_body(&range(0), &buffers).await.unwrap();
        let (first, _) = staged_body(&range(0), &buffers).await.unwrap();
        assert_eq!(body_bytes(first).await, vec![1; part]);
        assert_eq!(buffers.lock().idle.len(), 1, "a body's buffer comes back when it is dropped");

        let (second, crc32) = staged_body(&range(part as u64), &buffers).await.unwrap();
        assert_eq!(buffers.lock().idle.len(), 0, "the next body took it");
        assert_eq!(crc32, reference_crc32(&vec![2; part]));
        assert_eq!(body_bytes(second).await, vec![2; part], "with none of the last body's bytes");

        drop(held);
        let state = buffers.lock();
        assert_eq!((state.out, state.idle.len()), (0, 0), "with no body out, no buffer is kept");
    }

    /// A GET-like body of `data`, arriving in pieces of 64 KiB.
    async fn arriving(data: &[u8]) -> (tempfile::NamedTempFile, ByteStream) {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(data).unwrap();
        let stream = ByteStream::read_from().path(file.path()).buffer_size(64 * 1024).build().await.unwrap();
        (file, stream)
    }

    #[tokio::test]
    async fn a_long_get_body_is_gathered_into_one_piece_and_a_short_one_kept_in_its_pieces() {
        let buffers = BodyBuffers::new(GET_BODIES);
        let long: Vec<u8> = (0..3 * GATHERED as usize).map(|i| (i % 251) as u8).collect();
        let (_file, stream) = arriving(&long).await;
        let body = gathered(stream, Some(long.len() as u64), &buffers).await.unwrap();
        assert_eq!(body.pieces().len(), 1);
        assert!(body.pieces()[0] == long);
        let slice = body.slices(5..GATHERED * 2).next().unwrap();
        drop(body);
        assert_eq!(buffers.lock().out, 1, "a slice still holds the buffer");
        drop(slice);
        assert_eq!(buffers.lock().out, 0);

        let short = &long[..GATHERED as usize / 2];
        let (_file, stream) = arriving(short).await;
        let body = gathered(stream, Some(short.len() as u64), &buffers).await.unwrap();
        assert!(body.pieces().len() > 1, "a short body stays in the pieces it came in");
        assert!(body.pieces().concat() == short);
    }

    #[tokio::test]
    async fn past_the_memory_bound_bodies_are_streamed() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"abc").unwrap();
        let range = FileRange { path: file.path().to_path_buf(), offset: 0, len: 3 };
        let buffers = BodyBuffers::new(UPLOAD_BODIES);
        let mut held = Vec::new();
        for _ in 0..UPLOAD_BODIES + 2 {
            held.push(staged_body(&range, &buffers).await.unwrap().0);
        }
        assert_eq!(buffers.lock().out, UPLOAD_BODIES);
        for body in held {
            assert_eq!(body_bytes(body).await, b"abc");
        }
        assert_eq!(buffers.lock().out, 0);
    }
}
