//! [`MemoryStore`]: S3 in memory, for testing the filesystem logic without a server or a
//! kernel. It lists in pages like S3 (sorted keys, CommonPrefixes, continuation tokens),
//! honours If-Match, keeps multipart uploads apart until completed, and counts every call and
//! how many were in flight at once, so tests can check what an operation costs.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    BucketInfo, FileRange, ListPage, ListRequest, ObjectInfo, ObjectStore, Part, PartBody, RangeData, S3Error,
    S3Result, UploadHeaders,
};

/// The size of the pieces a GET's body comes in: not a power of two, so that reads straddle them.
const BODY_PIECE: usize = 100_000;

#[derive(Debug, Clone)]
struct Object {
    data: Vec<u8>,
    etag: String,
    content_type: String,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, BTreeMap<String, Object>>,
    uploads: HashMap<String, BTreeMap<i32, Vec<u8>>>,
    calls: HashMap<&'static str, usize>,
    ranges_asked: Vec<Range<u64>>,
    next_etag: u64,
}

pub struct MemoryStore {
    state: Mutex<State>,
    page_size: usize,
    /// How long each call stays in flight, so that calls issued together overlap.
    latency: Duration,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl MemoryStore {
    /// An empty store with the given buckets, S3's page size of 1,000 and no latency.
    pub fn new(buckets: &[&str]) -> Self {
        let mut state = State::default();
        for bucket in buckets {
            state.buckets.insert(bucket.to_string(), BTreeMap::new());
        }
        MemoryStore {
            state: Mutex::new(state),
            page_size: 1000,
            latency: Duration::ZERO,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn insert(&self, bucket: &str, key: &str, data: impl Into<Vec<u8>>) {
        let mut state = self.lock();
        let object = new_object(&mut state, data.into(), "application/octet-stream".into());
        state.buckets.entry(bucket.to_string()).or_default().insert(key.to_string(), object);
    }

    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().buckets.get(bucket)?.get(key).map(|o| o.data.clone())
    }

    pub fn content_type(&self, bucket: &str, key: &str) -> Option<String> {
        self.lock().buckets.get(bucket)?.get(key).map(|o| o.content_type.clone())
    }

    /// How many times `op` (the trait method's name) was called.
    pub fn calls(&self, op: &str) -> usize {
        self.lock().calls.get(op).copied().unwrap_or(0)
    }

    /// The ranges of the GETs that outlasted the store's latency (one cancelled sooner is not
    /// here), in the order they did.
    pub fn ranges_asked(&self) -> Vec<Range<u64>> {
        self.lock().ranges_asked.clone()
    }

    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    /// Counts a call of `op` and holds it in flight for the store's latency.
    async fn call(&self, op: &'static str) {
        *self.lock().calls.entry(op).or_default() += 1;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket<'a>(state: &'a mut State, bucket: &str) -> S3Result<&'a mut BTreeMap<String, Object>> {
        state.buckets.get_mut(bucket).ok_or(S3Error::NoSuchBucket)
    }
}

fn new_object(state: &mut State, data: Vec<u8>, content_type: String) -> Object {
    state.next_etag += 1;
    Object { data, etag: format!("\"etag-{}\"", state.next_etag), content_type }
}

fn read_range(range: &FileRange) -> S3Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&range.path).map_err(|e| S3Error::Other(e.to_string()))?;
    let mut data = vec![0; range.len as usize];
    file.read_exact_at(&mut data, range.offset).map_err(|e| S3Error::Other(e.to_string()))?;
    Ok(data)
}

fn info(key: &str, object: &Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: object.data.len() as u64,
        last_modified: Some(SystemTime::UNIX_EPOCH),
        etag: Some(object.etag.clone()),
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>> {
        self.call("list_buckets").await;
        Ok(self.lock().buckets.keys().map(|name| BucketInfo { name: name.clone(), created: None }).collect())
    }

    async fn head_bucket(&self, bucket: &str) -> S3Result<()> {
        self.call("head_bucket").await;
        Self::bucket(&mut self.lock(), bucket).map(drop)
    }

    async fn list_objects(&self, request: ListRequest<'_>) -> S3Result<ListPage> {
        self.call("list_objects").await;
        let mut state = self.lock();
        let objects = Self::bucket(&mut state, request.bucket)?;
        let limit = request.max_keys.map_or(self.page_size, |n| n as usize);
        // Tokens say what the last entry was: `k:KEY` or `p:PREFIX`; after a prefix, every
        // key below it is skipped, as S3 does.
        let token = request.continuation.unwrap_or_default();
        let (after, mut skip_below) = match token.split_once(':') {
            Some(("p", prefix)) => (prefix.to_string(), Some(prefix.to_string())),
            Some((_, key)) => (key.to_string(), None),
            None => (String::new(), None),
        };
        let mut page = ListPage::default();
        let mut last_token = String::new();
        let range = (std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded);
        for (key, object) in objects.range::<String, _>(range) {
            if !key.starts_with(request.prefix) || skip_below.as_ref().is_some_and(|p| key.starts_with(p.as_str())) {
                continue;
            }
            if page.prefixes.len() + page.objects.len() == limit {
                page.next_token = Some(last_token);
                return Ok(page);
            }
            let rest = &key[request.prefix.len()..];
            match request.delimiter.and_then(|d| rest.find(d)) {
                Some(at) => {
                    let prefix = format!("{}{}", request.prefix, &rest[..=at]);
                    last_token = format!("p:{prefix}");
                    skip_below = Some(prefix.clone());
                    page.prefixes.push(prefix);
                }
                None => {
                    last_token = format!("k:{key}");
                    page.objects.push(info(key, object));
                }
            }
        }
        Ok(page)
    }

    async fn head_object(&self, bucket: &str, key: &str) -> S3Result<ObjectInfo> {
        self.call("head_object").await;
        let mut state = self.lock();
        Self::bucket(&mut state, bucket)?.get(key).map(|o| info(key, o)).ok_or(S3Error::NotFound)
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> S3Result<RangeData> {
        self.call("get_range").await;
        let mut state = self.lock();
        state.ranges_asked.push(range.clone());
        let object = Self::bucket(&mut state, bucket)?.get(key).ok_or(S3Error::NotFound)?;
        if if_match.is_some_and(|etag| etag != object.etag) {
            return Err(S3Error::PreconditionFailed);
        }
        let end = (range.end as usize).min(object.data.len());
        let start = (range.start as usize).min(end);
        // In pieces, as a connection delivers a body, so that readers meet piece boundaries here too.
        let data = object.data[start..end].chunks(BODY_PIECE).map(bytes::Bytes::copy_from_slice).collect();
        Ok(RangeData { data, etag: Some(object.etag.clone()) })
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Option<FileRange>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<String>> {
        self.call("put_object").await;
        let data = body.as_ref().map(read_range).transpose()?.unwrap_or_default();
        let mut state = self.lock();
        let object = new_object(&mut state, data, headers.content_type_for(key));
        let etag = object.etag.clone();
        Self::bucket(&mut state, bucket)?.insert(key.to_string(), object);
        Ok(Some(etag))
    }

    async fn create_multipart(&self, bucket: &str, key: &str, _headers: &UploadHeaders) -> S3Result<String> {
        self.call("create_multipart").await;
        let mut state = self.lock();
        Self::bucket(&mut state, bucket)?;
        let id = format!("{bucket}/{key}/{}", state.next_etag);
        state.next_etag += 1;
        state.uploads.insert(id.clone(), BTreeMap::new());
        Ok(id)
    }

    async fn upload_part(&self, _: &str, _: &str, upload_id: &str, number: i32, body: PartBody) -> S3Result<Part> {
        self.call("upload_part").await;
        let data = match body {
            PartBody::Staged(range) => read_range(&range)?,
            PartBody::Held(bytes) => bytes.to_vec(),
        };
        let mut state = self.lock();
        state.uploads.get_mut(upload_id).ok_or(S3Error::NotFound)?.insert(number, data);
        Ok(Part { number, etag: format!("\"part-{number}\"") })
    }

    async fn upload_part_copy(
        &self,
        _: &str,
        _: &str,
        upload_id: &str,
        number: i32,
        source: (&str, &str),
        range: Range<u64>,
    ) -> S3Result<Part> {
        self.call("upload_part_copy").await;
        let mut state = self.lock();
        let object = Self::bucket(&mut state, source.0)?.get(source.1).ok_or(S3Error::NotFound)?;
        let data = object.data[range.start as usize..range.end as usize].to_vec();
        state.uploads.get_mut(upload_id).ok_or(S3Error::NotFound)?.insert(number, data);
        Ok(Part { number, etag: format!("\"part-{number}\"") })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> S3Result<Option<String>> {
        self.call("complete_multipart").await;
        let mut state = self.lock();
        let uploaded = state.uploads.remove(upload_id).ok_or(S3Error::NotFound)?;
        let mut data = Vec::new();
        for part in parts {
            data.extend_from_slice(uploaded.get(&part.number).ok_or(S3Error::Other("missing part".into()))?);
        }
        let object = new_object(&mut state, data, "application/octet-stream".into());
        let etag = object.etag.clone();
        Self::bucket(&mut state, bucket)?.insert(key.to_string(), object);
        Ok(Some(etag))
    }

    async fn abort_multipart(&self, _: &str, _: &str, upload_id: &str) -> S3Result<()> {
        self.call("abort_multipart").await;
        self.lock().uploads.remove(upload_id);
        Ok(())
    }

    async fn copy_object(&self, source: (&str, &str), bucket: &str, key: &str) -> S3Result<()> {
        self.call("copy_object").await;
        let mut state = self.lock();
        let object = Self::bucket(&mut state, source.0)?.get(source.1).cloned().ok_or(S3Error::NotFound)?;
        let copy = new_object(&mut state, object.data, object.content_type);
        Self::bucket(&mut state, bucket)?.insert(key.to_string(), copy);
        Ok(())
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> S3Result<()> {
        self.call("delete_object").await;
        Self::bucket(&mut self.lock(), bucket)?.remove(key);
        Ok(())
    }

    async fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        self.call("create_bucket").await;
        let mut state = self.lock();
        if state.buckets.contains_key(bucket) {
            return Err(S3Error::AlreadyExists);
        }
        state.buckets.insert(bucket.to_string(), BTreeMap::new());
        Ok(())
    }

    async fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        self.call("delete_bucket").await;
        let mut state = self.lock();
        if !Self::bucket(&mut state, bucket)?.is_empty() {
            return Err(S3Error::NotEmpty);
        }
        state.buckets.remove(bucket);
        Ok(())
    }

    async fn bucket_region(&self, bucket: &str) -> S3Result<String> {
        self.call("bucket_region").await;
        Self::bucket(&mut self.lock(), bucket).map(|_| "us-east-1".to_string())
    }

    async fn has_multipart_uploads(&self, bucket: &str) -> S3Result<bool> {
        self.call("has_multipart_uploads").await;
        Ok(self.lock().uploads.keys().any(|id| id.starts_with(&format!("{bucket}/"))))
    }
}
