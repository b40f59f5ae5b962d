//! The filesystem logic without a kernel, over an in-memory S3 that counts its calls: what a
//! listing, a lookup and a huge directory cost in requests.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bucketfs::error::FsError;
use bucketfs::fs::{Fs, FsConfig, MountRoot};
use bucketfs::inode::ROOT_INO;
use bucketfs::s3::{BucketInfo, ListPage, ListRequest, ObjectInfo, ObjectStore, RangeData, S3Error, S3Result};

/// One bucket in memory, listing pages of at most `page_size` entries, as S3 does.
struct MemoryS3 {
    objects: BTreeMap<String, Vec<u8>>,
    page_size: usize,
    calls: Mutex<HashMap<&'static str, usize>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl MemoryS3 {
    fn new(keys: impl IntoIterator<Item = String>) -> Self {
        MemoryS3 {
            objects: keys.into_iter().map(|k| (k.clone(), k.into_bytes())).collect(),
            page_size: 1000,
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    fn calls(&self, op: &str) -> usize {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Counts the call and keeps it in flight briefly, so calls issued together overlap.
    async fn call(&self, op: &'static str) {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn info(&self, key: &str) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: self.objects[key].len() as u64, last_modified: None, etag: None }
    }
}

#[async_trait]
impl ObjectStore for MemoryS3 {
    async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>> {
        self.call("list_buckets").await;
        Ok(vec![BucketInfo { name: "bucket".into(), created: None }])
    }

    async fn head_bucket(&self, _bucket: &str) -> S3Result<()> {
        self.call("head_bucket").await;
        Ok(())
    }

    async fn list_objects(&self, request: ListRequest<'_>) -> S3Result<ListPage> {
        self.call("list").await;
        let limit = request.max_keys.map_or(self.page_size, |n| n as usize);
        let after = request.continuation.unwrap_or_default();
        let mut page = ListPage::default();
        let mut last = String::new();
        for key in self.objects.keys().filter(|k| k.starts_with(request.prefix) && **k > after) {
            if !last.is_empty() && key.starts_with(&last) && last.ends_with('/') {
                continue; // inside a CommonPrefix already returned
            }
            if page.prefixes.len() + page.objects.len() == limit {
                page.next_token = Some(last);
                return Ok(page);
            }
            let rest = &key[request.prefix.len()..];
            match request.delimiter.and_then(|d| rest.find(d)) {
                Some(at) => {
                    last = format!("{}{}", request.prefix, &rest[..=at]);
                    page.prefixes.push(last.clone());
                }
                None => {
                    last = key.clone();
                    page.objects.push(self.info(key));
                }
            }
        }
        Ok(page)
    }

    async fn head_object(&self, _bucket: &str, key: &str) -> S3Result<ObjectInfo> {
        self.call("head").await;
        if self.objects.contains_key(key) {
            Ok(self.info(key))
        } else {
            Err(S3Error::NotFound)
        }
    }

    async fn get_range(&self, _: &str, key: &str, range: Range<u64>, _: Option<&str>) -> S3Result<RangeData> {
        self.call("get").await;
        let data = self.objects.get(key).ok_or(S3Error::NotFound)?;
        let end = (range.end as usize).min(data.len());
        Ok(RangeData { data: data[range.start as usize..end].to_vec(), etag: Some("\"e\"".into()) })
    }
}

fn mount(store: Arc<MemoryS3>) -> Fs {
    Fs::new(
        store,
        FsConfig {
            root: MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() },
            uid: 1000,
            gid: 1000,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(60),
        },
    )
}

/// Reads a whole directory as the kernel does, returning the names and the largest batch.
async fn read_dir(fs: &Fs, ino: u64) -> (Vec<String>, usize) {
    let fh = fs.opendir(ino).unwrap();
    let (mut names, mut largest, mut offset) = (Vec::new(), 0, 0);
    loop {
        let entries = fs.readdir(fh, offset).await.unwrap();
        if entries.is_empty() {
            fs.releasedir(fh);
            return (names, largest);
        }
        largest = largest.max(entries.len());
        for entry in entries.iter().take(300) {
            offset = entry.cookie;
            names.push(entry.name.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_gives_attributes_without_a_head_per_entry() {
    let store = Arc::new(MemoryS3::new((0..50).map(|n| format!("dir/file-{n:02}"))));
    let fs = mount(store.clone());
    let dir = fs.lookup(ROOT_INO, b"dir").await.unwrap();
    let (names, _) = read_dir(&fs, dir.ino).await;
    assert_eq!(names.len(), 52);
    let lists = store.calls("list");
    for n in 0..50 {
        let attr = fs.lookup(dir.ino, format!("file-{n:02}").as_bytes()).await.unwrap();
        assert_eq!(attr.size, 11);
        fs.getattr(attr.ino).await.unwrap();
    }
    assert_eq!(store.calls("head"), 1, "only the lookup of `dir` itself asked HEAD");
    assert_eq!(store.calls("list"), lists, "lookups after a listing cost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_one_round_trip_and_a_miss_is_remembered() {
    let store = Arc::new(MemoryS3::new(["a.txt".to_string(), "d/x".to_string()]));
    let fs = mount(store.clone());
    assert!(!fs.lookup(ROOT_INO, b"a.txt").await.unwrap().is_dir);
    assert_eq!((store.calls("head"), store.calls("list")), (1, 1));
    assert_eq!(store.most_in_flight.load(Ordering::SeqCst), 2, "HEAD and LIST went out together");
    assert!(fs.lookup(ROOT_INO, b"d").await.unwrap().is_dir);
    assert_eq!(fs.lookup(ROOT_INO, b"missing").await.unwrap_err(), FsError::NotFound);
    let calls = store.calls("head") + store.calls("list");
    assert_eq!(fs.lookup(ROOT_INO, b"missing").await.unwrap_err(), FsError::NotFound);
    assert_eq!(store.calls("head") + store.calls("list"), calls, "the miss was cached");
    let long = vec![b'n'; 256];
    assert_eq!(fs.lookup(ROOT_INO, &long).await.unwrap_err(), FsError::NameTooLong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_objects_list_completely_one_page_at_a_time() {
    let store = Arc::new(MemoryS3::new((0..100_000).map(|n| format!("big/{n:06}"))));
    let fs = mount(store.clone());
    let dir = fs.lookup(ROOT_INO, b"big").await.unwrap();
    let before = store.calls("list");
    let (names, largest) = read_dir(&fs, dir.ino).await;
    assert_eq!(names.len(), 100_002);
    assert_eq!(names[2], "000000");
    assert_eq!(names[100_001], "099999");
    assert_eq!(store.calls("list") - before, 100);
    assert!(largest <= 1002, "at most one page is held, got {largest}");
}
