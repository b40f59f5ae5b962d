//! [`FaultyStore`]: any [`ObjectStore`] with chosen calls made to fail, answer slowly or come
//! back short, so that tests can show what a mount does when S3 misbehaves above the network.
//! (The tests' TCP proxy and the local server's injected 503s cover the layers below.)

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    BucketInfo, FileRange, ListPage, ListRequest, ObjectInfo, ObjectStore, Part, PartBody, RangeData, S3Error,
    S3Result, UploadHeaders,
};

/// What happens to one call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call fails with this error without reaching the store.
    Fail(S3Error),
    /// The call waits this long, then goes ahead.
    Slow(Duration),
    /// A `list_objects` goes ahead at once, and its answer is held back this long: an answer
    /// that a change made meanwhile overtakes.
    Late(Duration),
    /// A `get_range` answers with only the first half of its bytes.
    Truncate,
    /// The call panics, as a bug would: the mount must fail that one call with EIO and go on.
    Panic,
}

/// A store whose calls, by trait method name, meet queued faults before reaching `inner`.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    queued: Mutex<HashMap<&'static str, Vec<Fault>>>,
    injected: AtomicU64,
    /// The names of the threads that met [`Fault::Panic`], in order.
    panicked_on: Mutex<Vec<String>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            queued: Mutex::new(HashMap::new()),
            injected: AtomicU64::new(0),
            panicked_on: Mutex::new(Vec::new()),
        }
    }

    /// The next `times` calls of `op` meet `fault` (after any faults queued before).
    pub fn inject(&self, op: &'static str, fault: Fault, times: usize) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.entry(op).or_default().extend(std::iter::repeat_n(fault, times));
    }

    /// Drops every fault not yet met.
    pub fn clear(&self) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Faults met so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The names of the threads that met [`Fault::Panic`] so far, in order: whether a call
    /// panicked on a FUSE thread or in a task.
    pub fn panicked_on(&self) -> Vec<String> {
        self.panicked_on.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies the next fault of `op`: an error to return, or what to do after the call.
    async fn meet(&self, op: &'static str) -> S3Result<After> {
        let fault = {
            let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            queued.get_mut(op).filter(|faults| !faults.is_empty()).map(|faults| faults.remove(0))
        };
        let Some(fault) = fault else { return Ok(After::Nothing) };
        self.injected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(op, ?fault, "injected fault");
        match fault {
            Fault::Fail(error) => Err(error),
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                Ok(After::Nothing)
            }
            Fault::Late(delay) => Ok(After::Hold(delay)),
            Fault::Truncate => Ok(After::Truncate),
            Fault::Panic => {
                let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
                self.panicked_on.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
                panic!("a fault injected in {op}")
            }
        }
    }
}

/// What a fault leaves to do once the call has been made.
enum After {
    Nothing,
    Truncate,
    Hold(Duration),
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>> {
        self.meet("list_buckets").await?;
        self.inner.list_buckets().await
    }

    async fn head_bucket(&self, bucket: &str) -> S3Result<()> {
        self.meet("head_bucket").await?;
        self.inner.head_bucket(bucket).await
    }

    async fn list_objects(&self, request: ListRequest<'_>) -> S3Result<ListPage> {
        let after = self.meet("list_objects").await?;
        let page = self.inner.list_objects(request).await;
        if let After::Hold(delay) = after {
            tokio::time::sleep(delay).await;
        }
        page
    }

    async fn head_object(&self, bucket: &str, key: &str) -> S3Result<ObjectInfo> {
        self.meet("head_object").await?;
        self.inner.head_object(bucket, key).await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> S3Result<RangeData> {
        let after = self.meet("get_range").await?;
        let mut got = self.inner.get_range(bucket, key, range, if_match).await?;
        if matches!(after, After::Truncate) {
            got.data = got.data.slices(0..got.data.len() / 2).collect();
        }
        Ok(got)
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Option<FileRange>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<String>> {
        self.meet("put_object").await?;
        self.inner.put_object(bucket, key, body, headers).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, headers: &UploadHeaders) -> S3Result<String> {
        self.meet("create_multipart").await?;
        self.inner.create_multipart(bucket, key, headers).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PartBody,
    ) -> S3Result<Part> {
        self.meet("upload_part").await?;
        self.inner.upload_part(bucket, key, upload_id, number, body).await
    }

    async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        source: (&str, &str),
        range: Range<u64>,
    ) -> S3Result<Part> {
        self.meet("upload_part_copy").await?;
        self.inner.upload_part_copy(bucket, key, upload_id, number, source, range).await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> S3Result<Option<String>> {
        self.meet("complete_multipart").await?;
        self.inner.complete_multipart(bucket, key, upload_id, parts).await
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<()> {
        self.meet("abort_multipart").await?;
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn copy_object(&self, source: (&str, &str), bucket: &str, key: &str) -> S3Result<()> {
        self.meet("copy_object").await?;
        self.inner.copy_object(source, bucket, key).await
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> S3Result<()> {
        self.meet("delete_object").await?;
        self.inner.delete_object(bucket, key).await
    }

    async fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        self.meet("create_bucket").await?;
        self.inner.create_bucket(bucket).await
    }

    async fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        self.meet("delete_bucket").await?;
        self.inner.delete_bucket(bucket).await
    }

    async fn bucket_region(&self, bucket: &str) -> S3Result<String> {
        self.meet("bucket_region").await?;
        self.inner.bucket_region(bucket).await
    }

    async fn has_multipart_uploads(&self, bucket: &str) -> S3Result<bool> {
        self.meet("has_multipart_uploads").await?;
        self.inner.has_multipart_uploads(bucket).await
    }
}
