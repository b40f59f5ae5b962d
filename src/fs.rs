/*!
The filesystem: every operation the kernel can ask for, as an async method over inode numbers
and plain values. It knows nothing of fuser; `fuse.rs` calls it and replies. Changes to the
namespace (unlink, mkdir, rmdir, rename) live in `change.rs`.

State lives in four owners: the inode table (names, numbers, cached attributes), the staging
area (files being written), the open directory streams and the open file handles, each map
keyed by the handle number given to the kernel. The kind of a file handle is chosen at open:
a read handle of ranged GETs, or a handle on the inode's staging file when the inode is being
written (readers of such a file see what was written). Locks are std mutexes held for map
access only; a handle's own async mutex is what a slow S3 call waits behind, so one slow read
or upload never blocks another file.
*/

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::OwnedMutexGuard;

use crate::control::{ControlFile, Session, CONTROL_INO, CONTROL_NAME};
use crate::dir::{DirEntry, DirStream, HiddenKeys};
use crate::error::{FsError, FsResult};
use crate::inode::{ChildInfo, InodeTable, Kind, Location, Node, Overrides, ROOT_INO};
use crate::names::{check_name, could_be_bucket};
use crate::read::{ReadAheadBudget, ReadHandle};
use crate::s3::{ListPage, ListRequest, ObjectStore, S3Error, UploadHeaders};
use crate::write::{SharedStaged, Staged, StagingArea};

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
    pub read_only: bool,
    pub headers: UploadHeaders,
    /// Bytes all read-ahead together may hold.
    pub read_ahead_bytes: u64,
    /// Files are read and written without the kernel's page cache.
    pub direct_io: bool,
}

/// What `setattr` asks to change.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

/// An open file: read through ranged GETs, or through the inode's staging file.
#[derive(Clone)]
enum Handle {
    Read(Arc<ReadHandle>),
    Staged { ino: u64, staged: SharedStaged, writable: bool },
    Control(Arc<tokio::sync::Mutex<Session>>),
}

/// An opened file: its handle, and whether the kernel must bypass its page cache for it.
pub struct Opened {
    pub fh: u64,
    pub direct_io: bool,
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
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) inodes: InodeTable,
    pub(crate) config: FsConfig,
    pub(crate) staging: StagingArea,
    /// One lock per inode, held while its staging file is looked up or created (which may
    /// fetch the object), so that two opens of one inode share one staging file while opens of
    /// other inodes go on.
    staging_opens: InodeLocks,
    /// One lock per directory being listed again for a lookup, so a burst of lookups lists once.
    listing_again: InodeLocks,
    /// Directories have no time in S3; they show the time of mounting.
    mounted_at: SystemTime,
    hidden: HiddenKeys,
    read_ahead: ReadAheadBudget,
    next_handle: AtomicU64,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    files: Mutex<HashMap<u64, Handle>>,
    control: Option<ControlFile>,
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, config: FsConfig, staging: StagingArea) -> Self {
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
            fresh_until: Instant::now(),
            changed_at: Instant::now(),
            staged: false,
            overrides: Default::default(),
        };
        let read_ahead = ReadAheadBudget::new(config.read_ahead_bytes);
        Fs {
            store,
            inodes: InodeTable::new(root, config.metadata_ttl),
            config,
            staging,
            staging_opens: InodeLocks::default(),
            listing_again: InodeLocks::default(),
            mounted_at,
            hidden: HiddenKeys::default(),
            read_ahead,
            next_handle: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            control: None,
        }
    }

    /// Adds the `.s3api` control file at the root.
    pub fn with_control(mut self, control: ControlFile) -> Self {
        self.control = Some(control);
        self
    }

    fn control_attr(&self, control: &ControlFile) -> Attr {
        Attr {
            ino: CONTROL_INO,
            is_dir: false,
            size: 0,
            mtime: self.mounted_at,
            perm: 0o600,
            uid: control.owner(),
            gid: self.config.gid,
        }
    }

    /// True for the control file's name at the root, which no change may touch.
    pub(crate) fn is_control(&self, parent: u64, name: &str) -> bool {
        parent == ROOT_INO && name == CONTROL_NAME && self.control.is_some()
    }

    pub fn ttl(&self) -> Duration {
        self.inodes.ttl()
    }

    /// Whether files are opened without the kernel's page cache.
    pub fn direct_io(&self) -> bool {
        self.config.direct_io
    }

    pub fn read_ahead(&self) -> &ReadAheadBudget {
        &self.read_ahead
    }

    pub fn attr(&self, node: &Node) -> Attr {
        Attr {
            ino: node.ino,
            is_dir: node.is_dir(),
            size: node.size,
            mtime: node.overrides.mtime.unwrap_or(node.mtime),
            perm: node.overrides.mode.unwrap_or(if node.is_dir() {
                self.config.dir_mode
            } else {
                self.config.file_mode
            }),
            uid: node.overrides.uid.unwrap_or(self.config.uid),
            gid: node.overrides.gid.unwrap_or(self.config.gid),
        }
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    pub(crate) fn dir_node(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.is_dir() {
            Ok(node)
        } else {
            Err(FsError::NotADirectory)
        }
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if let Some(answer) = self.lookup_in_table(parent, name) {
            return answer;
        }
        let parent = self.dir_node(parent)?;
        Ok(self.attr(&self.child_node(&parent, check_name(name)?).await?))
    }

    /// The answer to a lookup when the table alone gives it, without a call to S3: the FUSE
    /// adapter replies with it on the spot, sparing the hop to the I/O runtime that a path
    /// walk would otherwise pay on every component.
    pub fn lookup_in_table(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        let name = match check_name(name) {
            Ok(name) => name,
            Err(e) => return Some(Err(e.into())),
        };
        if let Some(control) = self.control.as_ref().filter(|_| self.is_control(parent, name)) {
            return Some(Ok(self.control_attr(control)));
        }
        let parent = match self.dir_node(parent) {
            Ok(parent) => parent,
            Err(e) => return Some(Err(e)),
        };
        let answer = self.answer_from_table(&parent, name, self.inodes.child(parent.ino, name))?;
        Some(answer.map(|node| self.attr(&node)))
    }

    /// The node of `parent/name`, from the table while fresh, else asked of S3.
    pub(crate) async fn child_node(&self, parent: &Node, name: &str) -> FsResult<Node> {
        let known = self.inodes.child(parent.ino, name);
        let never_seen = known.is_none();
        if let Some(answer) = self.answer_from_table(parent, name, known) {
            return answer;
        }
        if parent.kind != Kind::Account && never_seen && self.inodes.worth_listing_again(parent.ino) {
            self.list_again(parent).await?;
            if let Some(answer) = self.answer_from_table(parent, name, self.inodes.child(parent.ino, name)) {
                return answer;
            }
        }
        let asked_at = Instant::now();
        let found = match parent.kind {
            Kind::Account => self.find_bucket(name).await.map(|info| (info, None)),
            _ => self.find_in_prefix(&parent.location, name).await,
        };
        if let Some(moved) = self.inodes.get(parent.ino).filter(|now| now.location != parent.location) {
            // The parent was renamed through this mount while S3 was asked: the answer is about
            // the old keys, so the name is asked for again under the new ones.
            return Box::pin(self.child_node(&moved, name)).await;
        }
        match found {
            Ok((info, first_page)) => {
                let node = self.inodes.learn(parent.ino, name, info, asked_at).ok_or(FsError::NotFound)?;
                if let Some(page) = first_page.filter(|_| node.is_dir()) {
                    self.adopt_lookup_page(&node, page, asked_at).await;
                }
                Ok(node)
            }
            Err(FsError::NotFound) => {
                self.inodes.remember_missing(parent.ino, name);
                Err(FsError::NotFound)
            }
            Err(other) => Err(other),
        }
    }

    /// What the table says of `parent/name`, given its entry `known`: a fresh node, or "not
    /// found" when the name is remembered missing or a full listing of `parent` within the TTL
    /// did not show it; `None` when only S3 can say.
    fn answer_from_table(&self, parent: &Node, name: &str, known: Option<Node>) -> Option<FsResult<Node>> {
        if let Some(child) = known.filter(Node::is_fresh) {
            return Some(Ok(child));
        }
        if self.inodes.is_known_missing(parent.ino, name) {
            return Some(Err(FsError::NotFound));
        }
        if parent.kind != Kind::Account && self.inodes.is_listed_in_full(parent.ino) {
            self.inodes.remember_missing(parent.ino, name);
            return Some(Err(FsError::NotFound));
        }
        None
    }

    /// Lists `dir` in full, unless another lookup has just done so: in a directory being filled
    /// (an untar, `cp -r`) one listing answers every new name for a TTL, where asking for each
    /// name would cost a round trip per file.
    async fn list_again(&self, dir: &Node) -> FsResult<()> {
        let _turn = self.listing_again.lock(dir.ino).await;
        if self.inodes.is_listed_in_full(dir.ino) {
            return Ok(());
        }
        self.learn_listing(dir, self.inodes.take_first_page(dir.ino)).await
    }

    /// Takes in the first page a lookup of `dir` fetched: kept for the readdir that usually
    /// follows, and when it is the whole directory, learnt now too, so that the lookups of a path
    /// walk through small directories need no S3 call of their own. A page that a change made
    /// through this mount overtook is dropped.
    async fn adopt_lookup_page(&self, dir: &Node, page: ListPage, asked_at: Instant) {
        let whole = page.next_token.is_none().then(|| page.clone());
        if !self.inodes.keep_first_page(dir.ino, page, asked_at) {
            return;
        }
        if let Some(page) = whole {
            if let Err(e) = self.learn_listing(dir, Some((page, asked_at))).await {
                tracing::debug!(prefix = %dir.location.key, error = ?e, "could not learn a directory from its lookup");
            }
        }
    }

    /// Lists `dir` to the end into the table, starting from `first_page` when there is one.
    async fn learn_listing(&self, dir: &Node, first_page: Option<(ListPage, Instant)>) -> FsResult<()> {
        let started = Instant::now();
        let mut stream =
            DirStream::new(dir.clone(), self.mounted_at, self.hidden_name(dir.ino)).with_first_page(first_page);
        let mut offset = 0;
        while let Some(last) = stream.entries_after(offset, &self.store, &self.inodes, &self.hidden).await?.last() {
            offset = last.cookie;
        }
        tracing::debug!(bucket = %dir.location.bucket, prefix = %dir.location.key, entries = offset.saturating_sub(2), took = ?started.elapsed(), "listed for lookups");
        Ok(())
    }

    async fn find_bucket(&self, name: &str) -> FsResult<ChildInfo> {
        if !could_be_bucket(name) {
            return Err(FsError::NotFound);
        }
        self.store.head_bucket(name).await.map_err(|e| self.logged(e, name, ""))?;
        Ok(self.directory(Location { bucket: name.to_string(), key: String::new() }))
    }

    /// One round trip: HEAD of the key and a listing of `key/`, issued together, because a
    /// directory wins over an object of the same name. The listing asks for the page a readdir
    /// would ask for first, and a directory comes back with it (see [`Self::adopt_lookup_page`]).
    async fn find_in_prefix(&self, parent: &Location, name: &str) -> FsResult<(ChildInfo, Option<ListPage>)> {
        let bucket = parent.bucket.as_str();
        let key = format!("{}{name}", parent.key);
        let dir_prefix = format!("{key}/");
        let listing =
            ListRequest { bucket, prefix: &dir_prefix, delimiter: Some("/"), continuation: None, max_keys: None };
        let head = self.store.head_object(bucket, &key);
        let list = self.store.list_objects(listing);
        tokio::pin!(head, list);
        // The HEAD goes on while the listing is awaited, but a directory is known as soon as
        // the listing shows it, without waiting on the HEAD.
        let mut head_answer = None;
        let page = loop {
            tokio::select! {
                page = &mut list => break page,
                answer = &mut head, if head_answer.is_none() => head_answer = Some(answer),
            }
        };
        let page = page.map_err(|e| self.logged(e, bucket, &dir_prefix))?;
        if page.names_anything() {
            return Ok((self.directory(Location { bucket: bucket.to_string(), key: dir_prefix.clone() }), Some(page)));
        }
        let object = match head_answer {
            Some(answer) => answer,
            None => head.await,
        };
        let object = object.map_err(|e| self.logged(e, bucket, &key))?;
        let file = ChildInfo {
            kind: Kind::File,
            location: Location { bucket: bucket.to_string(), key: key.clone() },
            size: object.size,
            mtime: object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
            etag: object.etag,
        };
        Ok((file, None))
    }

    fn directory(&self, location: Location) -> ChildInfo {
        ChildInfo { kind: Kind::Directory, location, size: 0, mtime: self.mounted_at, etag: None }
    }

    /// Logs S3 failures that users will see as EIO or EACCES; a plain "not found" is not news.
    pub(crate) fn logged(&self, err: S3Error, bucket: &str, key: &str) -> FsError {
        if !matches!(err, S3Error::NotFound | S3Error::NoSuchBucket | S3Error::AlreadyExists | S3Error::NotEmpty) {
            tracing::warn!(bucket, key, error = %err, "S3 call failed");
        }
        FsError::from(err)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(answer) = self.getattr_in_table(ino) {
            return answer;
        }
        Ok(self.attr(&self.refresh_file(&self.node(ino)?).await?))
    }

    /// The attributes of `ino` when the table alone gives them (any directory, a fresh file),
    /// for the FUSE adapter to reply with on the spot, as [`Fs::lookup_in_table`] does.
    pub fn getattr_in_table(&self, ino: u64) -> Option<FsResult<Attr>> {
        if let Some(control) = self.control.as_ref().filter(|_| ino == CONTROL_INO) {
            return Some(Ok(self.control_attr(control)));
        }
        match self.node(ino) {
            Ok(node) if node.kind == Kind::File && !node.is_fresh() => None,
            known => Some(known.map(|node| self.attr(&node))),
        }
    }

    async fn refresh_file(&self, node: &Node) -> FsResult<Node> {
        let Location { bucket, key } = &node.location;
        let asked_at = Instant::now();
        let object = self.store.head_object(bucket, key).await.map_err(|e| self.logged(e, bucket, key))?;
        let mtime = object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
        self.inodes.refresh_file(node.ino, object.size, mtime, object.etag, asked_at);
        self.node(node.ino)
    }

    /// Opens a file. Close-to-open: a node older than the TTL is asked again, so a new
    /// version written elsewhere is read whole from its first byte. Opening for writing stages
    /// the inode (fetching its contents unless truncated); an inode already staged is shared.
    pub async fn open(&self, ino: u64, flags: i32, uid: u32) -> FsResult<Opened> {
        if let Some(control) = self.control.as_ref().filter(|_| ino == CONTROL_INO) {
            let session = Arc::new(tokio::sync::Mutex::new(control.open(uid)?));
            return Ok(Opened { fh: self.add_handle(Handle::Control(session)), direct_io: true });
        }
        let fh = self.open_file(ino, flags).await?;
        Ok(Opened { fh, direct_io: self.direct_io() })
    }

    async fn open_file(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(FsError::IsADirectory);
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        if (writable || truncate) && self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let opening = self.staging_opens.lock(ino).await;
        let (staged, mut guard) = match self.lock_staged(ino).await {
            Some(found) => found,
            None if !(writable || truncate) => {
                drop(opening);
                let node = if node.is_fresh() { node } else { self.refresh_file(&node).await? };
                let Location { bucket, key } = node.location;
                let handle = Arc::new(ReadHandle::new(bucket, key, node.size, node.etag, self.read_ahead.clone()));
                return Ok(self.add_handle(Handle::Read(handle)));
            }
            None if truncate => locked(self.staging.stage_empty(ino, &node.location.bucket, &node.location.key)?).await,
            None => {
                let node = if node.is_fresh() { node } else { self.refresh_file(&node).await? };
                let Location { bucket, key } = &node.location;
                let store = self.store.as_ref();
                locked(self.staging.stage_existing(ino, store, bucket, key, node.size, node.etag.clone()).await?).await
            }
        };
        drop(opening);
        if truncate {
            guard.truncate(0)?;
            self.inodes.set_staged(ino, 0);
        }
        guard.handles += 1;
        drop(guard);
        Ok(self.add_handle(Handle::Staged { ino, staged, writable }))
    }

    /// Creates and opens a new, empty file; it reaches S3 when closed.
    pub async fn create(&self, parent: u64, name: &[u8], mode: u32) -> FsResult<(Attr, u64)> {
        let name = check_name(name)?;
        if self.is_control(parent, name) {
            return Err(FsError::NotPermitted);
        }
        let parent = self.writable_dir(parent)?;
        let location =
            Location { bucket: parent.location.bucket.clone(), key: format!("{}{name}", parent.location.key) };
        let info = ChildInfo { kind: Kind::File, location, size: 0, mtime: SystemTime::now(), etag: None };
        let node = self.inodes.upsert(parent.ino, name, info);
        let opening = self.staging_opens.lock(node.ino).await;
        let (staged, mut guard) = match self.lock_staged(node.ino).await {
            Some(found) => found,
            None => locked(self.staging.stage_empty(node.ino, &node.location.bucket, &node.location.key)?).await,
        };
        drop(opening);
        guard.truncate(0)?;
        guard.discarded = false;
        guard.handles += 1;
        drop(guard);
        self.inodes.set_staged(node.ino, 0);
        let overrides = Overrides { mode: Some((mode & 0o7777) as u16), ..Default::default() };
        let node = self.inodes.set_overrides(node.ino, overrides).ok_or(FsError::NotFound)?;
        let fh = self.add_handle(Handle::Staged { ino: node.ino, staged, writable: true });
        Ok((self.attr(&node), fh))
    }

    /// The staging file of `ino`, locked, if it has one. One released between the lookup and
    /// the lock is gone, so the lookup is made again.
    async fn lock_staged(&self, ino: u64) -> Option<(SharedStaged, OwnedMutexGuard<Staged>)> {
        loop {
            let (staged, guard) = locked(self.staging.get(ino)?).await;
            if !guard.released {
                return Some((staged, guard));
            }
        }
    }

    /// A directory that may be changed: inside a bucket, on a writable mount.
    pub(crate) fn writable_dir(&self, ino: u64) -> FsResult<Node> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let node = self.dir_node(ino)?;
        if node.kind == Kind::Account {
            return Err(FsError::NotPermitted);
        }
        Ok(node)
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, handle);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.files).get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// A read of an S3 object answered at once, if its bytes have already arrived: see
    /// [`ReadHandle::read_arrived`](crate::read::ReadHandle::read_arrived). Needs a tokio
    /// runtime's context, as it may start read-ahead.
    pub fn read_arrived(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<bytes::Bytes>> {
        match self.handle(fh).ok()? {
            Handle::Read(handle) => handle.read_arrived(&self.store, offset, size),
            _ => None,
        }
    }

    /// What the kernel may forget of a file read through handle `fh`: the pages a sequential
    /// reader has left behind (see `read.rs`). Nothing past the page cache (`--direct-io`).
    pub fn behind_reader(&self, fh: u64) -> Option<std::ops::Range<u64>> {
        match self.handle(fh).ok()? {
            Handle::Read(handle) if !self.config.direct_io => handle.behind_reader(),
            _ => None,
        }
    }

    /// The bytes at `offset`, in pieces that the caller hands the kernel in order.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<bytes::Bytes>> {
        match self.handle(fh)? {
            Handle::Read(handle) => handle.read(&self.store, offset, size).await,
            Handle::Staged { staged, .. } => Ok(vec![staged.lock().await.read(offset, size)?.into()]),
            Handle::Control(session) => {
                let control = self.control.as_ref().ok_or(FsError::BadHandle)?;
                Ok(vec![control.read(&mut *session.lock().await, offset, size, &self.inodes).await.into()])
            }
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, staged) = match self.handle(fh)? {
            Handle::Staged { ino, staged, writable: true } => (ino, staged),
            Handle::Control(session) => {
                let control = self.control.as_ref().ok_or(FsError::BadHandle)?;
                return control.write(&mut *session.lock().await, offset, data);
            }
            _ => return Err(FsError::BadHandle),
        };
        let mut staged = staged.lock().await;
        staged.write(offset, data)?;
        self.inodes.set_staged(ino, staged.size);
        staged.send_appended(&self.store, &self.config.headers).await;
        Ok(data.len() as u32)
    }

    /// `close` and `fsync`: uploads what the handle's inode has staged, if anything changed.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        match self.handle(fh)? {
            Handle::Read(_) => Ok(()),
            Handle::Staged { ino, staged, .. } => self.flush_staged(ino, &staged).await,
            Handle::Control(session) => {
                leave_the_fuse_thread().await;
                if let Some(control) = &self.control {
                    control.flush(&mut *session.lock().await, &self.inodes).await;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn flush_staged(&self, ino: u64, staged: &SharedStaged) -> FsResult<()> {
        let mut staged = staged.lock().await;
        if staged.dirty && staged.size > HASHED_IN_PLACE {
            leave_the_fuse_thread().await;
        }
        if staged.write_failed {
            return Err(FsError::NoSpace);
        }
        match staged.upload_if_dirty(&self.store, &self.config.headers).await {
            Ok(Some(etag)) => {
                self.inodes.uploaded(ino, staged.size, etag);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(S3Error::AccessDenied(_)) => Err(FsError::AccessDenied),
            Err(other) => Err(FsError::Io(other.to_string())),
        }
    }

    pub async fn release(&self, fh: u64) {
        let Some(handle) = lock(&self.files).remove(&fh) else { return };
        if let Handle::Staged { ino, staged, .. } = handle {
            let mut guard = staged.lock().await;
            guard.handles = guard.handles.saturating_sub(1);
            self.staging.release_if_clean(ino, &mut guard);
        }
    }

    /// chmod, chown, utimens and truncate. Modes, owners and times are kept while the mount
    /// lives; a truncate without an open handle uploads at once, since no close will follow.
    pub async fn setattr(&self, ino: u64, change: SetAttr) -> FsResult<Attr> {
        if let Some(control) = self.control.as_ref().filter(|_| ino == CONTROL_INO) {
            return Ok(self.control_attr(control));
        }
        let node = self.node(ino)?;
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        if let Some(size) = change.size {
            if node.is_dir() {
                return Err(FsError::IsADirectory);
            }
            self.truncate(&node, size).await?;
        }
        let overrides = Overrides {
            mode: change.mode.map(|m| (m & 0o7777) as u16),
            uid: change.uid,
            gid: change.gid,
            mtime: change.mtime,
        };
        let node = self.inodes.set_overrides(ino, overrides).ok_or(FsError::NotFound)?;
        Ok(self.attr(&node))
    }

    async fn truncate(&self, node: &Node, size: u64) -> FsResult<()> {
        let opening = self.staging_opens.lock(node.ino).await;
        if let Some((_, mut guard)) = self.lock_staged(node.ino).await {
            drop(opening);
            guard.truncate(size)?;
            self.inodes.set_staged(node.ino, size);
            return Ok(());
        }
        let node = if node.is_fresh() { node.clone() } else { self.refresh_file(node).await? };
        let Location { bucket, key } = &node.location;
        let staged = if size == 0 {
            self.staging.stage_empty(node.ino, bucket, key)?
        } else {
            self.staging
                .stage_existing(node.ino, self.store.as_ref(), bucket, key, node.size, node.etag.clone())
                .await?
        };
        drop(opening);
        staged.lock().await.truncate(size)?;
        self.inodes.set_staged(node.ino, size);
        self.flush_staged(node.ino, &staged).await?;
        self.staging.release_if_clean(node.ino, &mut *staged.lock().await);
        Ok(())
    }

    /// Uploads everything still staged and dirty; at unmount, before the process exits.
    pub async fn finish_pending(&self) -> usize {
        let mut failed = 0;
        for (ino, staged) in self.staging.all() {
            if self.flush_staged(ino, &staged).await.is_err() {
                failed += 1;
            } else {
                // The mount has ended, so no handle is open, even one whose RELEASE the kernel
                // dropped with the connection when the unmount came right after the close.
                let mut guard = staged.lock().await;
                guard.handles = 0;
                self.staging.release_if_clean(ino, &mut guard);
            }
        }
        if failed == 0 {
            self.staging.remove_if_empty();
        } else {
            tracing::error!(failed, dir = %self.staging.dir().display(), "uploads still pending: the data stays staged");
        }
        failed
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.dir_node(ino)?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let stream = DirStream::new(node, self.mounted_at, self.hidden_name(ino))
            .with_first_page(self.inodes.take_first_page(ino));
        lock(&self.dirs).insert(fh, Arc::new(tokio::sync::Mutex::new(stream)));
        Ok(fh)
    }

    /// The name a listing of `dir` leaves out: the control file's, at the root.
    fn hidden_name(&self, dir: u64) -> Option<&'static str> {
        self.control.as_ref().filter(|_| dir == ROOT_INO).map(|_| CONTROL_NAME)
    }

    /// The entries after `offset`; the caller hands the kernel as many as fit, and the kernel's
    /// next offset says where to go on. Empty at the end.
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let stream = lock(&self.dirs).get(&fh).cloned().ok_or(FsError::BadHandle)?;
        let mut stream = stream.lock().await;
        stream.entries_after(offset, &self.store, &self.inodes, &self.hidden).await
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }
}

/// One async lock per inode, made on first use and dropped once no one holds or awaits it.
#[derive(Default)]
struct InodeLocks(Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>);

impl InodeLocks {
    async fn lock(&self, ino: u64) -> OwnedMutexGuard<()> {
        let gate = {
            let mut locks = lock(&self.0);
            locks.retain(|_, gate| Arc::strong_count(gate) > 1);
            locks.entry(ino).or_default().clone()
        };
        gate.lock_owned().await
    }
}

/// A staging file with its lock held, both owned so that they can be returned together.
async fn locked(staged: SharedStaged) -> (SharedStaged, OwnedMutexGuard<Staged>) {
    let guard = staged.clone().lock_owned().await;
    (staged, guard)
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The largest upload whose body is read, hashed and signed wherever its close runs: on a FUSE
/// thread, for a small file, which spares it the hop to a task.
const HASHED_IN_PLACE: u64 = 64 * 1024;

/// Continues in a task when called on a FUSE thread (see `FuseAdapter::start_here`), before work
/// long enough to hold up the calls queued behind it there: hashing a large body, or a control
/// file's call. In a task it only lets others run first.
async fn leave_the_fuse_thread() {
    tokio::task::yield_now().await;
}
