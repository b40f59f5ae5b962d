//! The S3 client as the filesystem sees it: one object-safe trait, [`ObjectStore`], and the
//! plain types its calls return.
//!
//! The filesystem never touches the AWS SDK. Everything it needs from S3 goes through this
//! trait, so tests can wrap a real client (count calls, inject faults) without a mount knowing.
//! Errors are classified once, here, into [`S3Error`]; the filesystem turns those into errno
//! values in `error.rs`.

mod body;
mod faults;
mod headers;
mod memory;
mod region;
mod sdk;

use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use body::PartBuffer;
pub use faults::{Fault, FaultyStore};
pub use headers::UploadHeaders;
pub use memory::MemoryStore;
pub use sdk::{SdkStore, SdkStoreOptions};

/// What an upload sends: a byte range of a local file, which the store reads when it sends it
/// (the SDK store holds up to 16 MiB of it in memory, and streams a larger one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// What a part of a multipart upload sends.
#[derive(Debug, Clone)]
pub enum PartBody {
    /// A byte range of a staging file, read when the part is sent.
    Staged(FileRange),
    /// Bytes already in memory: a streaming writer's part, kept as it was written.
    Held(Bytes),
}

impl PartBody {
    pub fn size(&self) -> u64 {
        match self {
            PartBody::Staged(range) => range.len,
            PartBody::Held(bytes) => bytes.len() as u64,
        }
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: i32,
    pub etag: String,
}

/// A bucket as ListBuckets reports it.
#[derive(Debug, Clone)]
pub struct BucketInfo {
    pub name: String,
    pub created: Option<SystemTime>,
}

/// One object from a listing or a HEAD. Servers may leave out the ETag in listings (s3s-fs
/// does), so it is optional and the reader takes it from the first GET when missing.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    pub etag: Option<String>,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// CommonPrefixes, each ending in the delimiter.
    pub prefixes: Vec<String>,
    pub objects: Vec<ObjectInfo>,
    pub next_token: Option<String>,
}

impl ListPage {
    /// Whether the page shows anything under its prefix: what makes the prefix a directory.
    pub fn names_anything(&self) -> bool {
        !self.objects.is_empty() || !self.prefixes.is_empty()
    }
}

/// A ranged GET's result: the bytes and the ETag of the version they came from.
#[derive(Debug, Clone)]
pub struct RangeData {
    pub data: Body,
    pub etag: Option<String>,
}

/// A response body as the connection delivered it, in pieces that are shared and never gathered
/// into one buffer. Gathering an 8 MiB read-ahead chunk meant fresh memory each time, and faulting
/// it in took a quarter of the daemon's CPU in a sequential read.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pieces: Vec<Bytes>,
    /// Where each piece starts in the body.
    starts: Vec<u64>,
    len: u64,
}

impl Body {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }

    /// Shared slices that hold `range` of the body, in order. `range` lies within the body.
    pub fn slices(&self, range: Range<u64>) -> impl Iterator<Item = Bytes> + '_ {
        debug_assert!(range.start <= range.end && range.end <= self.len, "{range:?} of {}", self.len);
        let first = self.starts.partition_point(|&start| start <= range.start).saturating_sub(1);
        self.pieces[first..].iter().zip(&self.starts[first..]).map_while(move |(piece, &start)| {
            (start < range.end).then(|| {
                let from = range.start.saturating_sub(start) as usize;
                let to = (range.end - start).min(piece.len() as u64) as usize;
                piece.slice(from..to)
            })
        })
    }
}

impl FromIterator<Bytes> for Body {
    fn from_iter<I: IntoIterator<Item = Bytes>>(pieces: I) -> Self {
        let mut body = Body::default();
        for piece in pieces.into_iter().filter(|piece| !piece.is_empty()) {
            body.starts.push(body.len);
            body.len += piece.len() as u64;
            body.pieces.push(piece);
        }
        body
    }
}

/// What went wrong with an S3 call, in the terms the filesystem decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Error {
    /// The key (or, for HEAD, the object) does not exist.
    NotFound,
    NoSuchBucket,
    AccessDenied(String),
    /// If-Match failed: the object changed since it was opened.
    PreconditionFailed,
    /// The range starts past the end of the object.
    InvalidRange,
    /// No answer: connection refused, reset, timed out.
    Unreachable(String),
    /// CreateBucket of a name that is taken, by this account or another.
    AlreadyExists,
    /// DeleteBucket of a bucket that still holds something.
    NotEmpty,
    /// The server refused a bucket name.
    InvalidName,
    /// The server does not offer this call (501), as some S3-compatible servers do not.
    NotImplemented,
    /// The request went to the wrong region; the text names the right one when S3 said it.
    WrongRegion(String),
    /// Anything else the server said, with its status and code.
    Other(String),
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::NotFound => write!(f, "no such key"),
            S3Error::NoSuchBucket => write!(f, "no such bucket"),
            S3Error::AccessDenied(m) => write!(f, "access denied: {m}"),
            S3Error::PreconditionFailed => write!(f, "object changed (If-Match failed)"),
            S3Error::InvalidRange => write!(f, "range not satisfiable"),
            S3Error::Unreachable(m) => write!(f, "S3 endpoint unreachable: {m}"),
            S3Error::AlreadyExists => write!(f, "the bucket exists already"),
            S3Error::NotEmpty => write!(f, "the bucket is not empty"),
            S3Error::InvalidName => write!(f, "invalid bucket name"),
            S3Error::NotImplemented => write!(f, "the server does not implement this call"),
            S3Error::WrongRegion(region) => write!(f, "the bucket is in another region: {region}"),
            S3Error::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for S3Error {}

pub type S3Result<T> = Result<T, S3Error>;

/// Parameters of one ListObjectsV2 call.
#[derive(Debug, Clone, Default)]
pub struct ListRequest<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    /// `Some("/")` for a directory listing, `None` for a flat one.
    pub delimiter: Option<&'a str>,
    pub continuation: Option<String>,
    pub max_keys: Option<i32>,
}

/// The S3 operations bucketfs uses. Object-safe so it can be held as `Arc<dyn ObjectStore>`.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>>;
    /// Succeeds when the bucket exists and the credentials may use it.
    async fn head_bucket(&self, bucket: &str) -> S3Result<()>;
    async fn list_objects(&self, request: ListRequest<'_>) -> S3Result<ListPage>;
    async fn head_object(&self, bucket: &str, key: &str) -> S3Result<ObjectInfo>;
    /// GET of `range` (clamped by the server at the object's end). With `if_match`, a changed
    /// object fails with [`S3Error::PreconditionFailed`] instead of returning other bytes.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> S3Result<RangeData>;
    /// PutObject of `body`, or of nothing (a folder marker); returns the new ETag.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Option<FileRange>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<String>>;
    /// CreateMultipartUpload; returns the upload id.
    async fn create_multipart(&self, bucket: &str, key: &str, headers: &UploadHeaders) -> S3Result<String>;
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PartBody,
    ) -> S3Result<Part>;
    /// UploadPartCopy of `range` of `source_bucket/source_key`.
    async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        source: (&str, &str),
        range: Range<u64>,
    ) -> S3Result<Part>;
    /// CompleteMultipartUpload; returns the new ETag.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> S3Result<Option<String>>;
    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<()>;
    /// CopyObject (objects up to 5 GiB), keeping the source's metadata.
    async fn copy_object(&self, source: (&str, &str), bucket: &str, key: &str) -> S3Result<()>;
    async fn delete_object(&self, bucket: &str, key: &str) -> S3Result<()>;
    /// CreateBucket in the mount's region.
    async fn create_bucket(&self, bucket: &str) -> S3Result<()>;
    async fn delete_bucket(&self, bucket: &str) -> S3Result<()>;
    /// The region requests for `bucket` are signed for.
    async fn bucket_region(&self, bucket: &str) -> S3Result<String>;
    /// True when the bucket holds unfinished multipart uploads.
    async fn has_multipart_uploads(&self, bucket: &str) -> S3Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_in_pieces_slices_like_one_buffer() {
        let whole: Vec<u8> = (0..100u8).collect();
        let body: Body =
            [0..10, 10..10, 10..45, 45..46, 46..100].into_iter().map(|r| Bytes::copy_from_slice(&whole[r])).collect();
        assert_eq!(body.len(), 100);
        assert_eq!(body.pieces().len(), 4, "empty pieces are dropped");
        for (start, end) in [(0, 100), (0, 10), (10, 45), (9, 11), (44, 47), (45, 46), (50, 99), (99, 100), (30, 30)] {
            let got: Vec<u8> = body.slices(start..end).flat_map(|piece| piece.to_vec()).collect();
            assert_eq!(got, whole[start as usize..end as usize], "{start}..{end}");
        }
    }
}
