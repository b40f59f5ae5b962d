/*!
The filesystem: every operation the kernel can ask for, as an async method over inode numbers
and plain values. It knows nothing of fuser; `fuse.rs` calls it and replies.

State lives in three owners: the inode table (names, numbers, cached attributes), the open
directory streams and the open read handles, each map keyed by the handle number given to the
kernel. Locks are std mutexes held for map access only; a handle's own async mutex is what a
slow S3 call waits behind, so one slow read never blocks another file.
*/

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::dir::{DirEntry, DirStream, HiddenKeys};
use crate::error::{FsError, FsResult};
use crate::inode::{ChildInfo, InodeTable, Kind, Location, Node, ROOT_INO};
use crate::names::{check_name, could_be_bucket};
use crate::read::ReadHandle;
use crate::s3::{ListRequest, ObjectStore, S3Error};

/// What the mount shows at its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRoot {
    /// `s3://`: one directory per bucket.
    Account,
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX/`: `prefix` is empty or ends in `/`.
    Bucket { bucket: String, prefix: String },
}

/// How files look to users, from the command line.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub root: MountRoot,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: Duration,
}

/// The attributes of one inode, ready for the kernel.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    inodes: InodeTable,
    config: FsConfig,
    /// Directories have no time in S3; they show the time of mounting.
    mounted_at: SystemTime,
    hidden: HiddenKeys,
    next_handle: AtomicU64,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    files: Mutex<HashMap<u64, Arc<ReadHandle>>>,
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, config: FsConfig) -> Self {
        let mounted_at = SystemTime::now();
        let (kind, location) = match &config.root {
            MountRoot::Account => (Kind::Account, Location { bucket: String::new(), key: String::new() }),
            MountRoot::Bucket { bucket, prefix } => {
                (Kind::Directory, Location { bucket: bucket.clone(), key: prefix.clone() })
            }
        };
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            kind,
            location,
            size: 0,
            mtime: mounted_at,
            etag: None,
            fresh_until: std::time::Instant::now(),
            staged: false,
            overrides: Default::default(),
        };
        Fs {
            store,
            inodes: InodeTable::new(root, config.metadata_ttl),
            config,
            mounted_at,
            hidden: HiddenKeys::default(),
            next_handle: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.inodes.ttl()
    }

    pub fn attr(&self, node: &Node) -> Attr {
        Attr {
            ino: node.ino,
            is_dir: node.is_dir(),
            size: node.size,
            mtime: node.mtime,
            perm: if node.is_dir() { self.config.dir_mode } else { self.config.file_mode },
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn dir_node(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.is_dir() {
            Ok(node)
        } else {
            Err(FsError::NotADirectory)
        }
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let name = check_name(name)?;
        let parent = self.dir_node(parent)?;
        if let Some(child) = self.inodes.child(parent.ino, name).filter(Node::is_fresh) {
            return Ok(self.attr(&child));
        }
        if self.inodes.is_known_missing(parent.ino, name) {
            return Err(FsError::NotFound);
        }
        let found = match parent.kind {
            Kind::Account => self.find_bucket(name).await,
            _ => self.find_in_prefix(&parent.location, name).await,
        };
        match found {
            Ok(info) => Ok(self.attr(&self.inodes.upsert(parent.ino, name, info))),
            Err(FsError::NotFound) => {
                self.inodes.remember_missing(parent.ino, name);
                Err(FsError::NotFound)
            }
            Err(other) => Err(other),
        }
    }

    async fn find_bucket(&self, name: &str) -> FsResult<ChildInfo> {
        if !could_be_bucket(name) {
            return Err(FsError::NotFound);
        }
        self.store.head_bucket(name).await.map_err(|e| self.logged(e, name, ""))?;
        Ok(self.directory(Location { bucket: name.to_string(), key: String::new() }))
    }

    /// One round trip: HEAD of the key and a one-entry listing of `key/`, issued together,
    /// because a directory wins over an object of the same name.
    async fn find_in_prefix(&self, parent: &Location, name: &str) -> FsResult<ChildInfo> {
        let bucket = parent.bucket.as_str();
        let key = format!("{}{name}", parent.key);
        let dir_prefix = format!("{key}/");
        let listing =
            ListRequest { bucket, prefix: &dir_prefix, delimiter: Some("/"), continuation: None, max_keys: Some(1) };
        let (head, list) = tokio::join!(self.store.head_object(bucket, &key), self.store.list_objects(listing));
        let list = list.map_err(|e| self.logged(e, bucket, &dir_prefix))?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            return Ok(self.directory(Location { bucket: bucket.to_string(), key: dir_prefix }));
        }
        let object = head.map_err(|e| self.logged(e, bucket, &key))?;
        Ok(ChildInfo {
            kind: Kind::File,
            location: Location { bucket: bucket.to_string(), key },
            size: object.size,
            mtime: object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
            etag: object.etag,
        })
    }

    fn directory(&self, location: Location) -> ChildInfo {
        ChildInfo { kind: Kind::Directory, location, size: 0, mtime: self.mounted_at, etag: None }
    }

    /// Logs S3 failures that users will see as EIO or EACCES; a plain "not found" is not news.
    fn logged(&self, err: S3Error, bucket: &str, key: &str) -> FsError {
        if !matches!(err, S3Error::NotFound | S3Error::NoSuchBucket) {
            tracing::warn!(bucket, key, error = %err, "S3 call failed");
        }
        FsError::from(err)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        if node.kind == Kind::File && !node.is_fresh() {
            return Ok(self.attr(&self.refresh_file(&node).await?));
        }
        Ok(self.attr(&node))
    }

    async fn refresh_file(&self, node: &Node) -> FsResult<Node> {
        let Location { bucket, key } = &node.location;
        let object = self.store.head_object(bucket, key).await.map_err(|e| self.logged(e, bucket, key))?;
        let mtime = object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
        self.inodes.refresh_file(node.ino, object.size, mtime, object.etag);
        self.node(node.ino)
    }

    /// Opens a file for reading. Close-to-open: a node older than the TTL is asked again, so a
    /// new version written elsewhere is read whole from its first byte.
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(FsError::IsADirectory);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        let node = if node.is_fresh() { node } else { self.refresh_file(&node).await? };
        let Location { bucket, key } = node.location;
        let handle = Arc::new(ReadHandle::new(bucket, key, node.size, node.etag));
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, handle);
        Ok(fh)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = lock(&self.files).get(&fh).cloned().ok_or(FsError::BadHandle)?;
        handle.read(self.store.as_ref(), offset, size).await
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.dir_node(ino)?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let stream = DirStream::new(node, self.mounted_at);
        lock(&self.dirs).insert(fh, Arc::new(tokio::sync::Mutex::new(stream)));
        Ok(fh)
    }

    /// The entries after `offset`; the caller hands the kernel as many as fit, and the kernel's
    /// next offset says where to go on. Empty at the end.
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let stream = lock(&self.dirs).get(&fh).cloned().ok_or(FsError::BadHandle)?;
        let mut stream = stream.lock().await;
        stream.entries_after(offset, self.store.as_ref(), &self.inodes, &self.hidden).await
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// Every change to the namespace or to file contents, until writing arrives.
    pub fn refuse_change(&self) -> FsError {
        FsError::ReadOnly
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
