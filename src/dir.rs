/*!
Directory listings for `readdir`: ListBuckets at the account root, ListObjectsV2 with delimiter
`/` below, one page at a time.

A [`DirStream`] belongs to one open directory handle. It holds the entries of the current page
that the kernel has not taken yet, and the request for the next page, never the whole listing, so
a directory of any size lists in bounded memory. The next page is asked for as soon as a page
arrives, so S3 works on it while the kernel takes the entries of this one. Each entry carries a cookie (its
position, counting `.` and `..`) that the kernel hands back as the offset of its next call; an
offset behind what was already given away (rewinddir, seekdir) restarts the listing. A first
page that the directory's lookup fetched (within the TTL) stands in for asking for it again.

The directory wins over an object of the same name. S3 sorts `x` before `x/`, possibly pages
apart, so a file entry is held back until the listing has moved past `x/`; if `x/` turns up,
the file is dropped. Keys that cannot be paths are skipped and logged once per key.
*/

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::error::{FsError, FsResult};
use crate::inode::{ChildInfo, InodeTable, Kind, Location, Node};
use crate::names::child_name;
use crate::s3::{ListPage, ListRequest, ObjectStore, S3Error, S3Result};

/// More than one kernel readdir call can take: the rest waits for the next call.
const MAX_ENTRIES_PER_CALL: usize = 256;

/// One entry handed to the kernel.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The offset the kernel passes back to continue after this entry.
    pub cookie: u64,
    pub name: String,
    pub node: Node,
}

/// What listings report once per mount: keys hidden because they cannot be paths, and a
/// root whose buckets may not be listed.
#[derive(Default)]
pub struct HiddenKeys(Mutex<HashSet<String>>);

impl HiddenKeys {
    fn first_time(&self, what: String) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(what)
    }

    fn note(&self, bucket: &str, key: &str) {
        if self.first_time(format!("{bucket}/{key}")) {
            tracing::warn!(bucket, key = ?key, "hiding a key that cannot be a path");
        }
    }

    fn note_buckets_denied(&self, cause: &str) {
        if self.first_time(String::new()) {
            tracing::warn!(%cause, "these credentials may not list buckets: the root looks empty, but buckets open by name");
        }
    }
}

enum Progress {
    /// The page after this continuation token (the first page without one) is to be asked for:
    /// at the start, and again after a page failed, so that a later readdir tries it again.
    Ask(Option<String>),
    /// The page after `continuation`, asked for at `asked_at`, is on its way.
    Fetching {
        page: tokio::task::JoinHandle<S3Result<ListPage>>,
        asked_at: Instant,
        continuation: Option<String>,
    },
    Done,
}

/// Where a stream's entries come from.
struct Source {
    location: Location,
    /// True at the account root, where the entries are buckets.
    buckets: bool,
}

pub struct DirStream {
    dir: Node,
    source: Source,
    progress: Progress,
    /// Entries produced but not yet accepted by the kernel, in cookie order.
    ready: VecDeque<DirEntry>,
    /// Files held back until the listing passes `name/`: (key, name, info).
    held_files: VecDeque<(String, String, ChildInfo)>,
    next_cookie: u64,
    /// The highest cookie dropped from `ready`; an offset below it needs a restart.
    dropped_upto: u64,
    dir_mtime: SystemTime,
    /// When the current pass over the listing began.
    started: Instant,
    /// The current pass has needed only its first page so far.
    one_page: bool,
    /// A name never listed here (the control file's, at the root).
    hidden_name: Option<&'static str>,
    /// The first page, already fetched, with when it was asked for.
    first_page: Option<(ListPage, Instant)>,
}

impl DirStream {
    pub fn new(dir: Node, dir_mtime: SystemTime, hidden_name: Option<&'static str>) -> Self {
        let source = Source { location: dir.location.clone(), buckets: dir.kind == Kind::Account };
        let mut stream = DirStream {
            dir,
            source,
            progress: Progress::Ask(None),
            ready: VecDeque::new(),
            held_files: VecDeque::new(),
            next_cookie: 1,
            dropped_upto: 0,
            dir_mtime,
            started: Instant::now(),
            one_page: true,
            hidden_name,
            first_page: None,
        };
        stream.restart();
        stream
    }

    /// Starts from `first_page` rather than asking S3 for it.
    pub fn with_first_page(mut self, first_page: Option<(ListPage, Instant)>) -> Self {
        if let Some((_, asked_at)) = &first_page {
            self.started = *asked_at;
        }
        self.first_page = first_page;
        self
    }

    fn restart(&mut self) {
        self.started = Instant::now();
        self.one_page = true;
        self.stop_fetching();
        self.progress = Progress::Ask(None);
        self.ready.clear();
        self.held_files.clear();
        self.next_cookie = 1;
        self.dropped_upto = 0;
        let mut dot = self.dir.clone();
        self.push(".", dot.clone());
        dot.ino = self.dir.parent;
        self.push("..", dot);
    }

    fn push(&mut self, name: &str, node: Node) {
        self.ready.push_back(DirEntry { cookie: self.next_cookie, name: name.to_string(), node });
        self.next_cookie += 1;
    }

    fn stop_fetching(&mut self) {
        if let Progress::Fetching { page, .. } = &self.progress {
            page.abort();
        }
    }

    /// Asks for the page after `continuation` (the first page without one).
    fn ask_for_page(&mut self, store: &Arc<dyn ObjectStore>, continuation: Option<String>) -> Progress {
        if let Some((page, asked_at)) = self.first_page.take().filter(|_| continuation.is_none()) {
            // As a fetch already done, so that the page takes the path of one from S3.
            return Progress::Fetching { page: tokio::spawn(std::future::ready(Ok(page))), asked_at, continuation };
        }
        let store = store.clone();
        let Location { bucket, key: prefix } = self.source.location.clone();
        let asked_at = Instant::now();
        let token = continuation.clone();
        let page = tokio::spawn(async move {
            let request =
                ListRequest { bucket: &bucket, prefix: &prefix, delimiter: Some("/"), continuation, max_keys: None };
            store.list_objects(request).await
        });
        Progress::Fetching { page, asked_at, continuation: token }
    }

    /// The entries after `offset`, fetching pages until there is at least one or the listing
    /// ends. An empty result means the end of the directory.
    pub async fn entries_after(
        &mut self,
        offset: u64,
        store: &Arc<dyn ObjectStore>,
        inodes: &InodeTable,
        hidden: &HiddenKeys,
    ) -> FsResult<Vec<DirEntry>> {
        if offset < self.dropped_upto || (offset == 0 && self.next_cookie > 3) {
            self.restart();
        }
        loop {
            while self.ready.front().is_some_and(|e| e.cookie <= offset) {
                self.dropped_upto = self.ready.pop_front().map_or(0, |e| e.cookie);
            }
            if !self.ready.is_empty() || matches!(self.progress, Progress::Done) {
                return Ok(self.ready.iter().take(MAX_ENTRIES_PER_CALL).cloned().collect());
            }
            self.fetch_page(store, inodes, hidden).await?;
        }
    }

    async fn fetch_page(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        inodes: &InodeTable,
        hidden: &HiddenKeys,
    ) -> FsResult<()> {
        if self.source.buckets {
            let asked_at = Instant::now();
            let buckets = match store.list_buckets().await {
                Err(S3Error::AccessDenied(cause)) => {
                    hidden.note_buckets_denied(&cause);
                    Vec::new()
                }
                other => other?,
            };
            for bucket in buckets {
                let info = ChildInfo {
                    kind: Kind::Directory,
                    location: Location { bucket: bucket.name.clone(), key: String::new() },
                    size: 0,
                    mtime: bucket.created.unwrap_or(self.dir_mtime),
                    etag: None,
                };
                if let Some(node) = inodes.learn(self.dir.ino, &bucket.name, info, asked_at) {
                    self.push(&bucket.name, node);
                }
            }
            self.progress = Progress::Done;
            return Ok(());
        }
        let progress = match std::mem::replace(&mut self.progress, Progress::Done) {
            Progress::Ask(continuation) => self.ask_for_page(store, continuation),
            other => other,
        };
        let Progress::Fetching { page, asked_at, continuation } = progress else { return Ok(()) };
        let answer = page.await.map_err(|e| S3Error::Other(format!("a listing stopped: {e}")));
        let page = match answer.and_then(|page| page) {
            Ok(page) => page,
            Err(e) => {
                self.progress = Progress::Ask(continuation);
                return Err(FsError::from(e));
            }
        };
        if let Some(token) = &page.next_token {
            self.one_page = false;
            self.progress = self.ask_for_page(store, Some(token.clone()));
        }
        if page.names_anything() {
            inodes.dir_seen_listed(self.dir.ino, asked_at);
        }
        let Location { bucket, key: prefix } = self.source.location.clone();
        let mut items: Vec<(String, Option<ChildInfo>)> = page.prefixes.into_iter().map(|p| (p, None)).collect();
        for object in page.objects {
            let info = ChildInfo {
                kind: Kind::File,
                location: Location { bucket: bucket.clone(), key: object.key.clone() },
                size: object.size,
                mtime: object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                etag: object.etag,
            };
            items.push((object.key, Some(info)));
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, file) in items {
            self.release_held(Some(&key), inodes, asked_at);
            if file.is_some() && key == prefix {
                continue; // this directory's own marker
            }
            let Some(name) = child_name(&prefix, &key).map(str::to_string) else {
                hidden.note(&bucket, &key);
                continue;
            };
            if self.hidden_name == Some(name.as_str()) {
                continue;
            }
            match file {
                Some(info) => self.held_files.push_back((key, name, info)),
                None => {
                    self.held_files.retain(|(held, _, _)| key.strip_suffix('/') != Some(held.as_str()));
                    let info = ChildInfo {
                        kind: Kind::Directory,
                        location: Location { bucket: bucket.clone(), key: key.clone() },
                        size: 0,
                        mtime: self.dir_mtime,
                        etag: None,
                    };
                    if let Some(node) = inodes.learn(self.dir.ino, &name, info, asked_at) {
                        self.push(&name, node);
                    }
                }
            }
        }
        if page.next_token.is_none() {
            self.release_held(None, inodes, asked_at);
            inodes.listed_in_full(self.dir.ino, self.started, self.one_page);
        }
        Ok(())
    }

    /// Emits held files whose `key/` sorts before `position` (all of them at the end of the
    /// listing): no directory can shadow them any more.
    fn release_held(&mut self, position: Option<&str>, inodes: &InodeTable, asked_at: Instant) {
        while let Some((key, _, _)) = self.held_files.front() {
            if position.is_some_and(|position| format!("{key}/").as_str() >= position) {
                break;
            }
            let (_, name, info) = self.held_files.pop_front().expect("front exists");
            if let Some(node) = inodes.learn(self.dir.ino, &name, info, asked_at) {
                self.push(&name, node);
            }
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        self.stop_fetching();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::inode::ROOT_INO;
    use crate::s3::MemoryStore;

    fn dir_node() -> Node {
        Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            kind: Kind::Directory,
            location: Location { bucket: "b".into(), key: "d/".into() },
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
            fresh_until: Instant::now(),
            changed_at: Instant::now(),
            staged: false,
            overrides: Default::default(),
        }
    }

    fn store(page_size: usize, keys: &[&str]) -> Arc<dyn ObjectStore> {
        let store = MemoryStore::new(&["b"]).with_page_size(page_size);
        for key in keys {
            store.insert("b", key, "x");
        }
        Arc::new(store)
    }

    async fn list_all(store: &Arc<dyn ObjectStore>, batch: usize) -> Vec<(String, bool)> {
        let inodes = InodeTable::new(dir_node(), Duration::from_secs(60));
        let mut stream = DirStream::new(dir_node(), SystemTime::UNIX_EPOCH, None);
        let hidden = HiddenKeys::default();
        let mut offset = 0;
        let mut seen = Vec::new();
        loop {
            let entries = stream.entries_after(offset, store, &inodes, &hidden).await.unwrap();
            if entries.is_empty() {
                seen.sort();
                return seen;
            }
            // Like the kernel, take only part of what is offered and continue from there.
            for entry in entries.into_iter().take(batch) {
                offset = entry.cookie;
                seen.push((entry.name, entry.node.is_dir()));
            }
        }
    }

    #[tokio::test]
    async fn the_directory_wins_wherever_the_pages_break() {
        let keys = ["d/", "d//hidden", "d/a", "d/x", "d/x-1", "d/x.txt", "d/x/in", "d/y"];
        let mut expected: Vec<(String, bool)> =
            [(".", true), ("..", true), ("a", false), ("x", true), ("x-1", false), ("x.txt", false), ("y", false)]
                .iter()
                .map(|(n, d)| (n.to_string(), *d))
                .collect();
        expected.sort();
        for page_size in 1..=5 {
            for batch in [1, 2, 100] {
                let listed = list_all(&store(page_size, &keys), batch).await;
                assert_eq!(listed, expected, "page size {page_size}, batch {batch}");
            }
        }
    }

    #[tokio::test]
    async fn an_offset_behind_what_was_given_restarts_the_listing() {
        let store = store(2, &["d/a", "d/b", "d/c"]);
        let inodes = InodeTable::new(dir_node(), Duration::from_secs(60));
        let hidden = HiddenKeys::default();
        let mut stream = DirStream::new(dir_node(), SystemTime::UNIX_EPOCH, None);
        let names = |entries: &[DirEntry]| entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        let dots = stream.entries_after(0, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(names(&dots), [".", ".."]);
        // `b` waits for the next page, which could hold `b/`.
        let first = stream.entries_after(2, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(names(&first), ["a"]);
        let rest = stream.entries_after(first[0].cookie, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(names(&rest), ["b", "c"]);
        assert!(stream.entries_after(rest[1].cookie, &store, &inodes, &hidden).await.unwrap().is_empty());
        let again = stream.entries_after(0, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(names(&again), [".", ".."]);
        let again = stream.entries_after(2, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(names(&again), ["a"]);
        assert_eq!(first[0].node.ino, again[0].node.ino, "numbers stay the same across listings");
    }

    #[tokio::test]
    async fn a_failed_page_is_asked_for_again_not_taken_as_the_end() {
        use crate::s3::{Fault, FaultyStore};
        let memory = store(2, &["d/a", "d/b", "d/c", "d/e", "d/f"]);
        let faulty = Arc::new(FaultyStore::new(memory));
        let store: Arc<dyn ObjectStore> = faulty.clone();
        let inodes = InodeTable::new(dir_node(), Duration::from_secs(60));
        let hidden = HiddenKeys::default();
        let mut stream = DirStream::new(dir_node(), SystemTime::UNIX_EPOCH, None);
        let first = stream.entries_after(0, &store, &inodes, &hidden).await.unwrap();
        assert_eq!(first.len(), 2, "the dots");
        let page = stream.entries_after(2, &store, &inodes, &hidden).await.unwrap();
        faulty.inject("list_objects", Fault::Fail(S3Error::Unreachable("reset".into())), 2);
        let mut offset = page.last().unwrap().cookie;
        let mut names: Vec<String> = page.into_iter().map(|e| e.name).collect();
        let mut failures = 0;
        loop {
            match stream.entries_after(offset, &store, &inodes, &hidden).await {
                Err(_) => failures += 1,
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => {
                    offset = entries.last().unwrap().cookie;
                    names.extend(entries.into_iter().map(|e| e.name));
                }
            }
        }
        assert!(failures >= 1, "a page failed");
        assert_eq!(names, ["a", "b", "c", "e", "f"]);
    }
}
