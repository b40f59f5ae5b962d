//! `fuser::Filesystem` for [`Fs`]: each callback decides nothing itself, runs one async method
//! of `Fs`, and replies exactly once with its result. The FUSE threads never wait on S3: a
//! call that has to wait continues in a tokio task. Lookups and attributes that the inode table
//! answers alone, and reads whose bytes read-ahead has already brought, are replied to on the
//! FUSE thread, and opening, writing and closing run there until they first wait. A call that
//! panics drops its reply, and fuser answers a dropped reply with EIO, so a bug fails one call
//! instead of hanging the mount. After a read, [`PageForgetter`] passes on to the kernel what
//! `Fs` says its page cache may forget.

use std::ffi::OsStr;
use std::future::Future;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::fs::{Attr, Fs, SetAttr};

/// The largest read the kernel may send, and so the smallest read-ahead window worth having.
const MAX_READAHEAD: u32 = 1024 * 1024;

/// How many data buffers wait for reuse: enough for the reads and writes the kernel has in flight.
const KEPT_BUFFERS: usize = 16;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    runtime: Handle,
    buffers: Arc<Buffers>,
    forget: Arc<PageForgetter>,
}

/// Tells the kernel to forget pages of its cache that `Fs` says no reader needs (see
/// `read.rs`), from a thread of its own: the kernel may wait there for a page that a read in
/// flight holds locked, which a FUSE thread must never do. It works once the session has given
/// it a [`fuser::Notifier`]; before that, and when the kernel refuses, pages just stay cached.
#[derive(Default)]
pub struct PageForgetter {
    sender: OnceLock<mpsc::Sender<(u64, Range<u64>)>>,
}

impl PageForgetter {
    pub fn start(&self, notifier: fuser::Notifier) {
        let (sender, pages) = mpsc::channel::<(u64, Range<u64>)>();
        let started = std::thread::Builder::new().name("bucketfs-forget".into()).spawn(move || {
            for (ino, range) in pages {
                let len = (range.end - range.start) as i64;
                if let Err(e) = notifier.inval_inode(INodeNo(ino), range.start as i64, len) {
                    tracing::debug!(ino, ?range, error = %e, "the kernel kept the pages");
                }
            }
        });
        match started {
            Ok(_) => drop(self.sender.set(sender)),
            Err(e) => tracing::warn!(error = %e, "pages read stay in the kernel's cache until the file is closed"),
        }
    }

    fn forget_behind(&self, fs: &Fs, ino: u64, fh: u64) {
        if let (Some(sender), Some(range)) = (self.sender.get(), fs.behind_reader(fh)) {
            let _ = sender.send((ino, range));
        }
    }
}

/// The buffers that carry a write's data off the FUSE thread, and a read's pieces to the kernel
/// in one slice, reused: a fresh 1 MiB buffer per call is mapped, faulted in and zeroed by the
/// kernel every time, which took a tenth of the daemon's CPU in a sequential write. At most
/// [`KEPT_BUFFERS`] of up to 1 MiB (the largest read or write the kernel sends) wait here.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn holding<T: AsRef<[u8]>>(&self, pieces: &[T]) -> Vec<u8> {
        let mut buffer = crate::fs::lock(&self.0).pop().unwrap_or_default();
        buffer.clear();
        buffer.reserve(pieces.iter().map(|piece| piece.as_ref().len()).sum());
        for piece in pieces {
            buffer.extend_from_slice(piece.as_ref());
        }
        buffer
    }

    /// Replies with `pieces` in one slice, joined into a buffer when there are several.
    fn reply(&self, pieces: &[Bytes], reply: ReplyData) {
        match pieces {
            [] => reply.data(&[]),
            [piece] => reply.data(piece),
            pieces => {
                let joined = self.holding(pieces);
                reply.data(&joined);
                self.give_back(joined);
            }
        }
    }

    fn give_back(&self, buffer: Vec<u8>) {
        let mut kept = crate::fs::lock(&self.0);
        if kept.len() < KEPT_BUFFERS {
            kept.push(buffer);
        }
    }
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, runtime: Handle) -> Self {
        FuseAdapter { fs, runtime, buffers: Arc::default(), forget: Arc::default() }
    }

    /// What the session's notifier must be handed to once the session exists.
    pub fn page_forgetter(&self) -> Arc<PageForgetter> {
        self.forget.clone()
    }

    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fs = self.fs.clone();
        self.runtime.spawn(async move { work(fs).await });
    }

    /// Runs `work` on this FUSE thread until it first has to wait, and only then hands it to a
    /// task. Opening, creating, writing, closing and fsyncing a file, and setting its
    /// attributes, mostly need nothing but the inode table and the local staging file, and the
    /// hop to a task costs more than that work: waking a worker thread on a small VM took about
    /// a tenth of each small file's time. What their first poll may still do here: build and
    /// sign a small request (a larger body is hashed in a task, see `Fs::flush`), and write to
    /// the staging file, which the kernel may hold up under dirty-page pressure. Reads, lookups
    /// and listings keep [`Self::spawn`]: a read that needs a GET would start it here and hop
    /// anyway, which measured slower, and they must not queue behind such work on the two FUSE
    /// threads.
    fn start_here<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let _runtime = self.runtime.enter();
        let mut task = Box::pin(work(self.fs.clone()));
        let mut nobody_to_wake = Context::from_waker(Waker::noop());
        // A panic fails this one call, as it would in a task: the reply inside `task` is dropped,
        // and fuser answers a dropped reply with EIO. What the call had half changed stays half
        // changed, as after a task's panic; every std mutex here shrugs off poisoning.
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(&mut nobody_to_wake))) {
            Ok(Poll::Ready(())) => {}
            // The first poll left the no-op waker wherever the task waits; the runtime polls it
            // again at once, and a future must then use the waker of its latest poll.
            Ok(Poll::Pending) => drop(self.runtime.spawn(task)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("no message");
                tracing::error!(panic = message, "a file system call panicked; it fails with EIO");
            }
        }
    }
}

fn errno(err: &FsError) -> Errno {
    Errno::from_i32(err.errno())
}

fn open_flags(direct_io: bool) -> FopenFlags {
    if direct_io {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: if attr.is_dir { FileType::Directory } else { FileType::RegularFile },
        perm: attr.perm,
        nlink: if attr.is_dir { 2 } else { 1 },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Attributes come with the listing, so `ls -l` needs no lookup per entry. O_TRUNC comes
        // with the open: without it the kernel opens first and truncates after, and the open for
        // writing would fetch the whole old object only to throw it away.
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_ATOMIC_O_TRUNC,
        );
        // With --direct-io, files may still be mapped shared (the control file too, which is
        // always direct). Asked for on its own: fuser adds none of a set if the kernel lacks one,
        // and this one came in Linux 6.6.
        if self.fs.direct_io() {
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(answer) = self.fs.lookup_in_table(parent.0, name.as_encoded_bytes()) {
            return entry(answer, &self.fs.ttl(), reply);
        }
        let name = name.as_encoded_bytes().to_vec();
        self.spawn(move |fs| async move { entry(fs.lookup(parent.0, &name).await, &fs.ttl(), reply) });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(answer) = self.fs.getattr_in_table(ino.0) {
            return attr(answer, &self.fs.ttl(), reply);
        }
        self.spawn(move |fs| async move { attr(fs.getattr(ino.0).await, &fs.ttl(), reply) });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let uid = req.uid();
        self.start_here(move |fs| async move {
            match fs.open(ino.0, flags.0, uid).await {
                Ok(opened) => reply.opened(FileHandle(opened.fh), open_flags(opened.direct_io)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let answered = {
            // Within the runtime's context: a read answered here may start read-ahead.
            let _runtime = self.runtime.enter();
            self.fs.read_arrived(fh.0, offset, size)
        };
        if let Some(pieces) = answered {
            self.buffers.reply(&pieces, reply);
            return self.forget.forget_behind(&self.fs, ino.0, fh.0);
        }
        let (buffers, forget) = (self.buffers.clone(), self.forget.clone());
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(pieces) => {
                    buffers.reply(&pieces, reply);
                    forget.forget_behind(&fs, ino.0, fh.0);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.start_here(move |fs| async move { empty(fs.flush(fh.0).await, reply) });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing waits on this reply: close(2) has returned. Sent late, it can meet a connection
        // that an unmount right after the close has already ended, which fuser logs as an error.
        reply.ok();
        self.spawn(move |fs| async move { fs.release(fh.0).await });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(move |fs| async move {
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    for entry in entries {
                        let kind = if entry.node.is_dir() { FileType::Directory } else { FileType::RegularFile };
                        if reply.add(INodeNo(entry.node.ino), entry.cookie, kind, &entry.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.spawn(move |fs| async move {
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    let ttl = fs.ttl();
                    for entry in entries {
                        let attr = file_attr(&fs.attr(&entry.node));
                        if reply.add(INodeNo(entry.node.ino), entry.cookie, &entry.name, &ttl, &attr, Generation(0)) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity to report; a large free figure keeps `df` and `cp` content.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 32, 1 << 32, 4096, crate::names::NAME_MAX as u32, 4096);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(errno(&FsError::Unsupported));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(errno(&FsError::Unsupported));
    }

    /// Python's `open`, and others, ask every file they open whether it is a terminal. fuser's
    /// default answer logs a warning for each, three log lines for every file a script opens.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoSuchControl));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(time) => time,
            TimeOrNow::Now => SystemTime::now(),
        });
        let change = SetAttr { size, mode, uid, gid, mtime };
        self.start_here(move |fs| async move {
            match fs.setattr(ino.0, change).await {
                Ok(attr) => reply.attr(&fs.ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_encoded_bytes().to_vec();
        self.start_here(move |fs| async move {
            match fs.create(parent.0, &name, mode & !umask).await {
                Ok((attr, fh)) => {
                    let flags = open_flags(fs.direct_io());
                    reply.created(&fs.ttl(), &file_attr(&attr), Generation(0), FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = self.buffers.holding(&[data]);
        let buffers = self.buffers.clone();
        self.start_here(move |fs| async move {
            let written = fs.write(fh.0, offset, &data).await;
            buffers.give_back(data);
            match written {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.start_here(move |fs| async move { empty(fs.flush(fh.0).await, reply) });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = name.as_encoded_bytes().to_vec();
        self.spawn(move |fs| async move {
            match fs.mkdir(parent.0, &name, mode & !umask).await {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_encoded_bytes().to_vec();
        self.spawn(move |fs| async move { empty(fs.unlink(parent.0, &name).await, reply) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_encoded_bytes().to_vec();
        self.spawn(move |fs| async move { empty(fs.rmdir(parent.0, &name).await, reply) });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name.as_encoded_bytes().to_vec(), new_name.as_encoded_bytes().to_vec());
        self.spawn(move |fs| async move {
            empty(fs.rename(parent.0, &name, new_parent.0, &new_name, flags.bits()).await, reply)
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(errno(&FsError::NotPermitted));
    }
}

fn entry(result: Result<Attr, FsError>, ttl: &Duration, reply: ReplyEntry) {
    match result {
        Ok(attr) => reply.entry(ttl, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn attr(result: Result<Attr, FsError>, ttl: &Duration, reply: ReplyAttr) {
    match result {
        Ok(attr) => reply.attr(ttl, &file_attr(&attr)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(result: Result<(), FsError>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}
