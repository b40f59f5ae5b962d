/*!
The inode table: the one owner of the mapping between inode numbers and what they stand for
(the account root, a bucket, a prefix, an object), and of the attributes cached for each.

Numbers are handed out once per (parent, name, kind) and never reused while the mount lives, so
`ls -i`, `find` and `tar` see stable numbers even after the kernel forgets an inode. A name that
turns from a file into a directory (or back) gets a new number, because the kernel must never
see one inode change its type. The cost is one entry per name ever seen, about 200 bytes.

Attributes carry a freshness deadline (`--metadata-ttl`); a stale entry is still a valid mapping,
only its attributes need asking again. Failed lookups are remembered for the same TTL, and so is
the first listing page that a directory's lookup fetched, until the readdir that usually follows
takes it. A page asked for before this mount's latest change to any name is never used: it could
miss a file just uploaded or name keys a rename has moved.

Locking: one std `Mutex`, held only for map updates, never across an await.
*/

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use crate::s3::ListPage;

pub const ROOT_INO: u64 = 1;

/// The most "not found" answers kept; the least recently used go first.
const NEGATIVE_CACHE_LIMIT: NonZeroUsize = NonZeroUsize::new(100_000).expect("non-zero");

/// The most first pages kept for readdirs yet to come, at up to 1,000 entries each; a path walk
/// that never lists what it passes through pushes the oldest out.
const KEPT_PAGES_LIMIT: NonZeroUsize = NonZeroUsize::new(32).expect("non-zero");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The root of an `s3://` mount: its children are buckets.
    Account,
    Directory,
    File,
}

/// Where a node lives in S3. For a directory `key` is its prefix, ending in `/` unless it is a
/// bucket's top (empty); for a file it is the object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub kind: Kind,
    pub location: Location,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    pub fresh_until: Instant,
    /// When this mount last changed the file (created, wrote, uploaded, renamed it), or when
    /// the S3 answer it was made from was asked for: answers asked for earlier are stale.
    pub changed_at: Instant,
    /// Written locally and not yet uploaded: the staged size and time are the truth.
    pub staged: bool,
    /// Set by chmod, chown and utimens; kept while the mount lives.
    pub overrides: Overrides,
}

/// Attributes a user set that S3 does not keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub mode: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Until the file is written again.
    pub mtime: Option<SystemTime>,
}

impl Node {
    pub fn is_fresh(&self) -> bool {
        self.staged || Instant::now() < self.fresh_until
    }

    pub fn is_dir(&self) -> bool {
        self.kind != Kind::File
    }
}

/// What a listing, HEAD or ListBuckets said about one child.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub kind: Kind,
    pub location: Location,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
}

struct Tables {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, String), u64>,
    negative: LruCache<(u64, String), Instant>,
    /// Directories listed in full, or made by this mount: while such a listing is fresh every
    /// child is in the table, and a name missing from it needs no S3 call.
    complete: HashMap<u64, FullListing>,
    /// A directory's first listing page as its lookup fetched it, with when it was asked for.
    first_pages: LruCache<u64, (ListPage, Instant)>,
    /// When this mount last created, uploaded, deleted or renamed anything.
    names_changed_at: Instant,
    next_ino: u64,
}

struct FullListing {
    at: Instant,
    /// It took one ListObjectsV2 page, so listing it again costs one request.
    one_page: bool,
}

/// How long after a full listing a lookup of an unknown name lists the directory again rather
/// than asking for that one name, in TTLs: long enough to carry a burst of creates from one
/// listing to the next, short enough that a lone lookup later pays for one name only.
const RELIST_WINDOW_TTLS: u32 = 10;

pub struct InodeTable {
    tables: Mutex<Tables>,
    ttl: Duration,
}

impl InodeTable {
    pub fn new(root: Node, ttl: Duration) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, Node { ino: ROOT_INO, parent: ROOT_INO, ..root });
        InodeTable {
            tables: Mutex::new(Tables {
                nodes,
                children: HashMap::new(),
                negative: LruCache::new(NEGATIVE_CACHE_LIMIT),
                complete: HashMap::new(),
                first_pages: LruCache::new(KEPT_PAGES_LIMIT),
                names_changed_at: Instant::now(),
                next_ino: ROOT_INO + 1,
            }),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.lock().nodes.get(&ino).cloned()
    }

    /// The child `name` of `parent` as last seen, fresh or not.
    pub fn child(&self, parent: u64, name: &str) -> Option<Node> {
        let tables = self.lock();
        let ino = tables.children.get(&(parent, name.to_string()))?;
        tables.nodes.get(ino).cloned()
    }

    /// True while a recent lookup of `name` found nothing.
    pub fn is_known_missing(&self, parent: u64, name: &str) -> bool {
        let mut tables = self.lock();
        tables.negative.get(&(parent, name.to_string())).is_some_and(|until| Instant::now() < *until)
    }

    pub fn remember_missing(&self, parent: u64, name: &str) {
        let until = Instant::now() + self.ttl;
        self.lock().negative.put((parent, name.to_string()), until);
    }

    /// Records what this mount itself just made at `parent/name` and returns the node, with a
    /// number that stays the same as long as the kind does.
    pub fn upsert(&self, parent: u64, name: &str, info: ChildInfo) -> Node {
        self.record(parent, name, info, None).expect("a change made here always applies")
    }

    /// Records what S3 said about `parent/name` in answer to a question asked at `asked_at`.
    /// An answer asked for before this mount's own latest change to the name is stale: its
    /// attributes are not taken, and a name deleted or renamed away since is not brought back
    /// (None), so a listing that crossed an upload or an `rm` cannot undo it.
    pub fn learn(&self, parent: u64, name: &str, info: ChildInfo, asked_at: Instant) -> Option<Node> {
        self.record(parent, name, info, Some(asked_at))
    }

    fn record(&self, parent: u64, name: &str, info: ChildInfo, asked_at: Option<Instant>) -> Option<Node> {
        let now = Instant::now();
        let fresh_until = now + self.ttl;
        let mut tables = self.lock();
        let key = (parent, name.to_string());
        if let Some(asked_at) = asked_at {
            let missing_since = tables.negative.peek(&key).and_then(|until| until.checked_sub(self.ttl));
            if missing_since.is_some_and(|since| since > asked_at) {
                return None;
            }
        }
        tables.negative.pop(&key);
        if asked_at.is_none() {
            tables.names_changed_at = now;
        }
        let existing = tables.children.get(&key).copied();
        if let Some(node) = existing.and_then(|ino| tables.nodes.get_mut(&ino)) {
            let stale = asked_at.is_some_and(|asked_at| asked_at < node.changed_at);
            if stale {
                return Some(node.clone());
            }
            if node.kind == info.kind {
                node.location = info.location;
                node.fresh_until = fresh_until;
                node.changed_at = asked_at.unwrap_or(now);
                if !node.staged {
                    // A listing without ETags must not erase one learnt from HEAD or GET for
                    // the same version of the object.
                    let same_version = node.size == info.size && node.mtime == info.mtime;
                    node.etag = info.etag.or_else(|| node.etag.take().filter(|_| same_version));
                    node.size = info.size;
                    node.mtime = info.mtime;
                }
                return Some(node.clone());
            }
        }
        let ino = tables.next_ino;
        tables.next_ino += 1;
        let node = Node {
            ino,
            parent,
            kind: info.kind,
            location: info.location,
            size: info.size,
            mtime: info.mtime,
            etag: info.etag,
            fresh_until,
            changed_at: asked_at.unwrap_or(now),
            staged: false,
            overrides: Overrides::default(),
        };
        tables.nodes.insert(ino, node.clone());
        tables.children.insert(key, ino);
        Some(node)
    }

    /// Stores attributes that a HEAD asked at `asked_at` gave for an existing file, unless
    /// this mount changed the file since.
    pub fn refresh_file(&self, ino: u64, size: u64, mtime: SystemTime, etag: Option<String>, asked_at: Instant) {
        let fresh_until = Instant::now() + self.ttl;
        let mut tables = self.lock();
        let node = tables.nodes.get_mut(&ino).filter(|node| !node.staged && node.changed_at <= asked_at);
        if let Some(node) = node {
            node.size = size;
            node.mtime = mtime;
            node.etag = etag;
            node.fresh_until = fresh_until;
        }
    }

    /// Marks a file as staged locally with this size, written now.
    pub fn set_staged(&self, ino: u64, size: u64) {
        if let Some(node) = self.lock().nodes.get_mut(&ino) {
            node.changed_at = Instant::now();
            node.staged = true;
            node.size = size;
            node.mtime = SystemTime::now();
            node.overrides.mtime = None;
        }
    }

    /// Records a finished upload: S3 now holds what was staged.
    pub fn uploaded(&self, ino: u64, size: u64, etag: Option<String>) {
        let fresh_until = Instant::now() + self.ttl;
        let mut tables = self.lock();
        tables.names_changed_at = Instant::now();
        if let Some(node) = tables.nodes.get_mut(&ino) {
            node.changed_at = Instant::now();
            node.staged = false;
            node.size = size;
            node.mtime = SystemTime::now();
            node.etag = etag;
            node.fresh_until = fresh_until;
        }
    }

    pub fn set_overrides(&self, ino: u64, overrides: Overrides) -> Option<Node> {
        let mut tables = self.lock();
        let node = tables.nodes.get_mut(&ino)?;
        node.overrides.mode = overrides.mode.or(node.overrides.mode);
        node.overrides.uid = overrides.uid.or(node.overrides.uid);
        node.overrides.gid = overrides.gid.or(node.overrides.gid);
        node.overrides.mtime = overrides.mtime.or(node.overrides.mtime);
        Some(node.clone())
    }

    /// Forgets that `parent/name` exists (it was deleted) and remembers it as missing.
    pub fn remove_child(&self, parent: u64, name: &str) {
        let until = Instant::now() + self.ttl;
        let mut tables = self.lock();
        tables.children.remove(&(parent, name.to_string()));
        tables.negative.put((parent, name.to_string()), until);
        tables.names_changed_at = Instant::now();
    }

    /// Moves the node at `from` to `to` with its number, as the kernel expects after a rename,
    /// and re-points every node below a moved directory at its new key.
    pub fn rename(&self, from: (u64, &str), to: (u64, &str), location: Location) {
        let until = Instant::now() + self.ttl;
        let mut tables = self.lock();
        tables.names_changed_at = Instant::now();
        let Some(ino) = tables.children.remove(&(from.0, from.1.to_string())) else { return };
        tables.negative.put((from.0, from.1.to_string()), until);
        tables.negative.pop(&(to.0, to.1.to_string()));
        if let Some(replaced) = tables.children.insert((to.0, to.1.to_string()), ino) {
            tables.nodes.remove(&replaced);
        }
        let now = Instant::now();
        let Some(node) = tables.nodes.get_mut(&ino) else { return };
        node.changed_at = now;
        // Just made by this mount at its new name, whatever a listing that crossed the rename says.
        node.fresh_until = until;
        let old = std::mem::replace(&mut node.location, location.clone());
        if node.kind == Kind::File {
            return;
        }
        for other in tables.nodes.values_mut() {
            if other.location.bucket == old.bucket && other.location.key.len() > old.key.len() {
                if let Some(rest) = other.location.key.strip_prefix(&old.key) {
                    other.changed_at = now;
                    other.location =
                        Location { bucket: location.bucket.clone(), key: format!("{}{rest}", location.key) };
                }
            }
        }
    }

    /// Records that a listing of `dir` begun at `since` has ended: every child it named stays
    /// fresh for a whole TTL from now, so that `ls -l` of a directory that took longer than the
    /// TTL to list is still answered from the table, and names it did not list are missing.
    pub fn listed_in_full(&self, dir: u64, since: Instant, one_page: bool) {
        let now = Instant::now();
        let until = now + self.ttl;
        let mut tables = self.lock();
        for node in tables.nodes.values_mut().filter(|n| n.parent == dir && n.fresh_until >= since + self.ttl) {
            node.fresh_until = until;
        }
        tables.complete.insert(dir, FullListing { at: now, one_page });
    }

    /// Records that a page of `dir`'s listing asked for at `asked_at` named something under it,
    /// which shows that `dir` exists as a lookup's listing would. Without it, `ls -l` of a
    /// directory that takes longer than the TTL to list would look the directory up again in
    /// its path walks, listing its first page anew while every walk waits.
    pub fn dir_seen_listed(&self, dir: u64, asked_at: Instant) {
        let until = Instant::now() + self.ttl;
        if let Some(node) = self.lock().nodes.get_mut(&dir).filter(|node| node.changed_at <= asked_at) {
            node.fresh_until = until;
        }
    }

    /// Records that `dir` was just made by this mount and so holds nothing else.
    pub fn made_empty(&self, dir: u64) {
        self.lock().complete.insert(dir, FullListing { at: Instant::now(), one_page: true });
    }

    pub fn is_listed_in_full(&self, dir: u64) -> bool {
        self.lock().complete.get(&dir).is_some_and(|listing| listing.at.elapsed() < self.ttl)
    }

    /// True when `dir` was listed in full a short while ago in one page: listing it again
    /// costs what asking for one name does, and answers every name for another TTL.
    pub fn worth_listing_again(&self, dir: u64) -> bool {
        let window = self.ttl * RELIST_WINDOW_TTLS;
        self.lock().complete.get(&dir).is_some_and(|listing| listing.one_page && listing.at.elapsed() < window)
    }

    /// Forgets what is cached about a bucket after a change made around the mount's back (the
    /// control file): its nodes must be asked again and no "not found" is trusted.
    pub fn invalidate_bucket(&self, bucket: &str) {
        let now = Instant::now();
        let mut tables = self.lock();
        for node in tables.nodes.values_mut().filter(|n| n.location.bucket == bucket && !n.staged) {
            node.fresh_until = now;
            // An answer already on its way predates the change and must not renew the node.
            node.changed_at = now;
        }
        tables.negative.clear();
        tables.complete.clear();
        tables.names_changed_at = now;
    }

    /// Keeps the first page of `dir`'s listing, asked for at `asked_at` by its lookup, for the
    /// readdir that usually follows: it then starts from the second page. False, and nothing
    /// kept, when this mount has changed a name since the page was asked for.
    pub fn keep_first_page(&self, dir: u64, page: ListPage, asked_at: Instant) -> bool {
        let mut tables = self.lock();
        let current = asked_at > tables.names_changed_at;
        if current {
            tables.first_pages.put(dir, (page, asked_at));
        }
        current
    }

    /// The kept first page of `dir`, taken once, while younger than the TTL and asked for after
    /// this mount's latest change to a name.
    pub fn take_first_page(&self, dir: u64) -> Option<(ListPage, Instant)> {
        let mut tables = self.lock();
        let changed_at = tables.names_changed_at;
        let (page, asked_at) = tables.first_pages.pop(&dir)?;
        (asked_at > changed_at && asked_at.elapsed() < self.ttl).then_some((page, asked_at))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every update is a
        // single insert or assignment), so a poisoned lock is still safe to use.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Node {
        Node {
            ino: 0,
            parent: 0,
            kind: Kind::Directory,
            location: Location { bucket: "b".into(), key: String::new() },
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
            fresh_until: Instant::now(),
            changed_at: Instant::now(),
            staged: false,
            overrides: Overrides::default(),
        }
    }

    fn file(key: &str, size: u64, etag: Option<&str>) -> ChildInfo {
        ChildInfo {
            kind: Kind::File,
            location: Location { bucket: "b".into(), key: key.into() },
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: etag.map(str::to_string),
        }
    }

    #[test]
    fn numbers_are_stable_and_change_with_kind() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        let a = table.upsert(ROOT_INO, "a", file("a", 1, None));
        let again = table.upsert(ROOT_INO, "a", file("a", 2, None));
        assert_eq!(a.ino, again.ino);
        assert_eq!(table.get(a.ino).unwrap().size, 2);
        let mut dir = file("a/", 0, None);
        dir.kind = Kind::Directory;
        let as_dir = table.upsert(ROOT_INO, "a", dir);
        assert_ne!(as_dir.ino, a.ino);
        assert_eq!(table.child(ROOT_INO, "a").unwrap().ino, as_dir.ino);
    }

    #[test]
    fn listing_without_etag_keeps_known_etag_of_same_version() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        table.upsert(ROOT_INO, "a", file("a", 5, Some("\"e1\"")));
        let same = table.upsert(ROOT_INO, "a", file("a", 5, None));
        assert_eq!(same.etag.as_deref(), Some("\"e1\""));
        let changed = table.upsert(ROOT_INO, "a", file("a", 6, None));
        assert_eq!(changed.etag, None);
    }

    #[test]
    fn rename_keeps_the_number_and_moves_what_is_below() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        let mut dir = file("d/", 0, None);
        dir.kind = Kind::Directory;
        let d = table.upsert(ROOT_INO, "d", dir);
        let inner = table.upsert(d.ino, "f", file("d/f", 1, None));
        let target = Location { bucket: "c".into(), key: "e/".into() };
        table.rename((ROOT_INO, "d"), (ROOT_INO, "e"), target.clone());
        assert!(table.child(ROOT_INO, "d").is_none());
        assert!(table.is_known_missing(ROOT_INO, "d"));
        assert_eq!(table.child(ROOT_INO, "e").unwrap().ino, d.ino);
        assert_eq!(table.get(d.ino).unwrap().location, target);
        assert_eq!(table.get(inner.ino).unwrap().location, Location { bucket: "c".into(), key: "e/f".into() });
    }

    #[test]
    fn a_full_listing_keeps_its_children_fresh_and_knows_what_is_missing() {
        let table = InodeTable::new(root(), Duration::from_millis(200));
        let since = Instant::now();
        let listed = table.upsert(ROOT_INO, "a", file("a", 1, None));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!table.is_listed_in_full(ROOT_INO));
        table.listed_in_full(ROOT_INO, since, true);
        std::thread::sleep(Duration::from_millis(100));
        assert!(table.get(listed.ino).unwrap().is_fresh(), "fresh for a TTL from the listing's end");
        assert!(table.is_listed_in_full(ROOT_INO));
        table.invalidate_bucket("b");
        assert!(!table.is_listed_in_full(ROOT_INO));
    }

    #[test]
    fn a_renamed_file_exists_at_its_new_name_after_a_listing_that_crossed_the_rename() {
        let table = InodeTable::new(root(), Duration::from_millis(100));
        let moved = table.upsert(ROOT_INO, "a", file("a", 1, None));
        std::thread::sleep(Duration::from_millis(150));
        let listing_began = Instant::now();
        table.rename((ROOT_INO, "a"), (ROOT_INO, "b"), Location { bucket: "b".into(), key: "b".into() });
        table.listed_in_full(ROOT_INO, listing_began, true);
        assert!(table.is_listed_in_full(ROOT_INO));
        let found = table.child(ROOT_INO, "b").expect("b is in the table");
        assert_eq!(found.ino, moved.ino);
        assert!(found.is_fresh(), "a complete listing must not take b for missing");
    }

    #[test]
    fn an_answer_asked_before_an_invalidation_does_not_renew_what_it_names() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        let mut dir = file("d/", 0, None);
        dir.kind = Kind::Directory;
        let d = table.upsert(ROOT_INO, "d", dir.clone());
        table.upsert(d.ino, "f", file("d/f", 1, None));
        let asked = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        table.invalidate_bucket("b");
        table.dir_seen_listed(d.ino, asked);
        assert!(!table.get(d.ino).unwrap().is_fresh(), "a page asked before it");
        assert!(!table.learn(d.ino, "f", file("d/f", 1, None), asked).unwrap().is_fresh(), "a listed file");
        table.dir_seen_listed(d.ino, Instant::now());
        assert!(table.get(d.ino).unwrap().is_fresh(), "a page asked after it");
        assert!(table.learn(ROOT_INO, "d", dir, Instant::now()).unwrap().is_fresh());
    }

    #[test]
    fn staged_sizes_survive_listings() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        let f = table.upsert(ROOT_INO, "f", file("f", 1, None));
        table.set_staged(f.ino, 100);
        assert_eq!(table.upsert(ROOT_INO, "f", file("f", 1, None)).size, 100);
        table.uploaded(f.ino, 100, Some("\"e\"".into()));
        assert_eq!(table.upsert(ROOT_INO, "f", file("f", 7, None)).size, 7);
    }

    #[test]
    fn answers_asked_before_a_local_change_do_not_undo_it() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        let asked = Instant::now();
        let f = table.upsert(ROOT_INO, "f", file("f", 1, Some("old")));
        table.uploaded(f.ino, 500, Some("new".into()));
        let seen = table.learn(ROOT_INO, "f", file("f", 1, Some("old")), asked).unwrap();
        assert_eq!((seen.size, seen.etag.as_deref()), (500, Some("new")), "a listing that crossed the upload");
        table.refresh_file(f.ino, 1, SystemTime::UNIX_EPOCH, Some("old".into()), asked);
        assert_eq!(table.get(f.ino).unwrap().size, 500, "a HEAD that crossed it");
        let later = Instant::now();
        let seen = table.learn(ROOT_INO, "f", file("f", 7, Some("other")), later).unwrap();
        assert_eq!(seen.size, 7, "an answer asked for after the change is taken");

        let asked = Instant::now();
        table.remove_child(ROOT_INO, "f");
        assert!(table.learn(ROOT_INO, "f", file("f", 7, None), asked).is_none(), "a deleted name stays deleted");
        assert!(table.is_known_missing(ROOT_INO, "f"));
        assert!(table.learn(ROOT_INO, "f", file("f", 8, None), Instant::now()).is_some(), "until S3 says otherwise");
    }

    #[test]
    fn negative_entries_expire_and_clear_on_upsert() {
        let table = InodeTable::new(root(), Duration::from_secs(60));
        table.remember_missing(ROOT_INO, "x");
        assert!(table.is_known_missing(ROOT_INO, "x"));
        table.upsert(ROOT_INO, "x", file("x", 1, None));
        assert!(!table.is_known_missing(ROOT_INO, "x"));
        let zero = InodeTable::new(root(), Duration::ZERO);
        zero.remember_missing(ROOT_INO, "y");
        assert!(!zero.is_known_missing(ROOT_INO, "y"));
    }
}
