//! The filesystem logic without a kernel, over an in-memory S3 that counts its calls: what a
//! listing, a lookup and a huge directory cost in requests.

use std::sync::Arc;
use std::time::Duration;

use bucketfs::error::FsError;
use bucketfs::fs::{Attr, Fs, FsConfig, MountRoot};
use bucketfs::inode::ROOT_INO;
use bucketfs::s3::{Fault, FaultyStore, MemoryStore, ObjectStore, S3Error};
use bucketfs::write::StagingArea;

fn memory<I: IntoIterator<Item = String>>(keys: I) -> Arc<MemoryStore> {
    let store = MemoryStore::new(&["bucket"]).with_latency(Duration::from_millis(20));
    for key in keys {
        store.insert("bucket", &key, key.clone());
    }
    Arc::new(store)
}

fn mount(store: Arc<dyn ObjectStore>) -> Fs {
    mount_root(store, MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() })
}

fn mount_root(store: Arc<dyn ObjectStore>, root: MountRoot) -> Fs {
    mount_with_ttl(store, root, Duration::from_secs(60))
}

fn mount_with_ttl(store: Arc<dyn ObjectStore>, root: MountRoot, metadata_ttl: Duration) -> Fs {
    let staging = StagingArea::create(&std::env::temp_dir().join("bucketfs-fs-logic")).unwrap();
    let config = FsConfig {
        root,
        uid: 1000,
        gid: 1000,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl,
        read_only: false,
        headers: Default::default(),
        read_ahead_bytes: 64 * 1024 * 1024,
        direct_io: false,
    };
    Fs::new(store, config, staging)
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
    let store = memory((0..50).map(|n| format!("dir/file-{n:02}")));
    let fs = mount(store.clone());
    let dir = fs.lookup(ROOT_INO, b"dir").await.unwrap();
    let (names, _) = read_dir(&fs, dir.ino).await;
    assert_eq!(names.len(), 52);
    let lists = store.calls("list_objects");
    for n in 0..50 {
        let attr = fs.lookup(dir.ino, format!("file-{n:02}").as_bytes()).await.unwrap();
        assert_eq!(attr.size, 11);
        fs.getattr(attr.ino).await.unwrap();
    }
    assert_eq!(store.calls("head_object"), 1, "only the lookup of `dir` itself asked HEAD");
    assert_eq!(store.calls("list_objects"), lists, "lookups after a listing cost nothing");
}

/// The FUSE adapter replies on its own thread with what the table alone can say; anything that
/// needs S3 must be left to the async path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_answers_what_it_knows_and_leaves_the_rest_to_s3() {
    let store = memory((0..5).map(|n| format!("dir/file-{n}")));
    let root = MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() };
    let fs = mount_with_ttl(store.clone(), root, Duration::from_millis(300));
    assert!(fs.lookup_in_table(ROOT_INO, b"dir").is_none(), "never seen: only S3 knows");
    let dir = fs.lookup(ROOT_INO, b"dir").await.unwrap();
    read_dir(&fs, dir.ino).await;
    let calls = store.calls("head_object") + store.calls("list_objects");

    let file = fs.lookup_in_table(dir.ino, b"file-1").expect("listed").unwrap();
    assert_eq!((file.size, file.is_dir), (10, false));
    assert!(matches!(fs.lookup_in_table(dir.ino, b"file-9"), Some(Err(FsError::NotFound))), "not in a full listing");
    assert!(matches!(fs.lookup_in_table(dir.ino, &[b'n'; 256]), Some(Err(FsError::NameTooLong))));
    assert!(matches!(fs.lookup_in_table(file.ino, b"x"), Some(Err(FsError::NotADirectory))));
    assert!(fs.getattr_in_table(dir.ino).expect("a directory").unwrap().is_dir);
    assert_eq!(fs.getattr_in_table(file.ino).expect("fresh").unwrap().size, 10);
    assert_eq!(store.calls("head_object") + store.calls("list_objects"), calls, "no S3 call");

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(fs.getattr_in_table(file.ino).is_none(), "a file past its TTL is asked of S3");
    assert!(fs.lookup_in_table(dir.ino, b"file-1").is_none(), "so is a name past its TTL");
    assert!(fs.getattr_in_table(dir.ino).is_some(), "a directory's attributes never need S3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_one_round_trip_and_a_miss_is_remembered() {
    let store = memory(["a.txt".to_string(), "d/x".to_string()]);
    let fs = mount(store.clone());
    assert!(!fs.lookup(ROOT_INO, b"a.txt").await.unwrap().is_dir);
    assert_eq!((store.calls("head_object"), store.calls("list_objects")), (1, 1));
    assert_eq!(store.most_in_flight(), 2, "HEAD and LIST went out together");
    assert!(fs.lookup(ROOT_INO, b"d").await.unwrap().is_dir);
    assert_eq!(fs.lookup(ROOT_INO, b"missing").await.unwrap_err(), FsError::NotFound);
    let calls = store.calls("head_object") + store.calls("list_objects");
    assert_eq!(fs.lookup(ROOT_INO, b"missing").await.unwrap_err(), FsError::NotFound);
    assert_eq!(store.calls("head_object") + store.calls("list_objects"), calls, "the miss was cached");
    let long = vec![b'n'; 256];
    assert_eq!(fs.lookup(ROOT_INO, &long).await.unwrap_err(), FsError::NameTooLong);
}

/// A lookup of a directory asks for the page its readdir would ask for first, so `ls dir`
/// costs the listing alone, and a path walk through small directories asks S3 once per level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_lookup_fetches_the_first_page_its_readdir_and_walk_need() {
    let store = Arc::new(MemoryStore::new(&["bucket"]).with_page_size(10));
    for n in 0..25 {
        store.insert("bucket", &format!("paged/{n:02}"), "x");
    }
    for key in ["a/b/c/file.txt", "a/b/other", "a/note"] {
        store.insert("bucket", key, key);
    }
    let fs = mount(store.clone());

    let paged = fs.lookup(ROOT_INO, b"paged").await.unwrap();
    assert_eq!(store.calls("list_objects"), 1);
    let (names, _) = read_dir(&fs, paged.ino).await;
    assert_eq!(names.len(), 27);
    assert_eq!(store.calls("list_objects"), 3, "the readdir asked for the other two pages only");
    read_dir(&fs, paged.ino).await;
    assert_eq!(store.calls("list_objects"), 6, "the kept page serves one readdir; the next lists afresh");

    let before = store.calls("list_objects");
    let a = fs.lookup(ROOT_INO, b"a").await.unwrap();
    let b = fs.lookup(a.ino, b"b").await.unwrap();
    assert!(b.is_dir);
    assert_eq!(fs.lookup(a.ino, b"missing").await.unwrap_err(), FsError::NotFound);
    let c = fs.lookup(b.ino, b"c").await.unwrap();
    assert_eq!(fs.lookup(c.ino, b"file.txt").await.unwrap().size, 14);
    assert_eq!(store.calls("list_objects") - before, 2, "a and c listed; b and the rest were in their pages");
    assert!(store.calls("head_object") <= 3, "no HEAD but those of a and c (and of `paged`)");
}

/// `ls -l` walks `dir/name` for each entry while the listing goes on: a directory whose listing takes
/// longer than the TTL must not be looked up again for it, which would list its first page anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_whose_listing_outlasts_the_ttl_is_known_from_its_pages() {
    let store = Arc::new(MemoryStore::new(&["bucket"]).with_page_size(10).with_latency(Duration::from_millis(60)));
    for n in 0..60 {
        store.insert("bucket", &format!("big/{n:02}"), "x");
    }
    store.insert("bucket", "gone/x", "x");
    let root = MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() };
    let ttl = Duration::from_millis(200);
    let fs = mount_with_ttl(store.clone(), root, ttl);

    let big = fs.lookup(ROOT_INO, b"big").await.unwrap();
    let looked_up = std::time::Instant::now();
    let (names, _) = read_dir(&fs, big.ino).await;
    assert_eq!(names.len(), 62);
    assert!(looked_up.elapsed() > ttl, "the listing outlasts the TTL of the lookup");
    let calls = store.calls("head_object") + store.calls("list_objects");
    let again = fs.lookup_in_table(ROOT_INO, b"big").expect("known from its listing").unwrap();
    assert_eq!(again.ino, big.ino);
    assert!(fs.lookup_in_table(big.ino, b"07").is_some());
    assert_eq!(store.calls("head_object") + store.calls("list_objects"), calls, "no S3 call");

    let gone = fs.lookup(ROOT_INO, b"gone").await.unwrap();
    read_dir(&fs, gone.ino).await;
    store.delete_object("bucket", "gone/x").await.unwrap();
    tokio::time::sleep(ttl).await;
    read_dir(&fs, gone.ino).await;
    assert!(fs.lookup_in_table(ROOT_INO, b"gone").is_none(), "an empty listing shows no directory");
}

/// A page kept from a lookup must not hide what this mount changed in the directory since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_after_the_lookup_shows_in_the_next_listing() {
    let store = memory(["dir/old.txt".to_string(), "dir/gone.txt".to_string(), "other/x".to_string()]);
    let fs = mount(store.clone());
    let dir = fs.lookup(ROOT_INO, b"dir").await.unwrap();
    let (_, fh) = fs.create(dir.ino, b"new.txt", 0o644).await.unwrap();
    fs.write(fh, 0, b"fresh").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    fs.unlink(dir.ino, b"gone.txt").await.unwrap();
    let (names, _) = read_dir(&fs, dir.ino).await;
    assert_eq!(names, [".", "..", "new.txt", "old.txt"]);

    let moved = fs.lookup(ROOT_INO, b"other").await.unwrap();
    fs.rename(ROOT_INO, b"other", ROOT_INO, b"renamed", 0).await.unwrap();
    let (names, _) = read_dir(&fs, moved.ino).await;
    assert_eq!(names, [".", "..", "x"], "listed under its new name");
}

/// A page kept for a directory lists keys under its old name once a directory above it moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_parent_leaves_no_page_of_old_keys_below_it() {
    let store = Arc::new(MemoryStore::new(&["bucket"]).with_page_size(2));
    for key in ["outer/a", "outer/b", "outer/inner/x"] {
        store.insert("bucket", key, "x");
    }
    let fs = mount(store.clone());
    let outer = fs.lookup(ROOT_INO, b"outer").await.unwrap();
    let inner = fs.lookup(outer.ino, b"inner").await.unwrap();
    fs.rename(ROOT_INO, b"outer", ROOT_INO, b"moved", 0).await.unwrap();
    let (names, _) = read_dir(&fs, inner.ino).await;
    assert_eq!(names, [".", "..", "x"]);
}

/// A page asked for before an upload through this mount lacks the uploaded file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_asked_before_an_upload_is_not_listed_after_it() {
    let ttl = Duration::from_millis(300);
    let store = memory(["d/old".to_string()]);
    let fs = mount_with_ttl(store.clone(), MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() }, ttl);
    let d = fs.lookup(ROOT_INO, b"d").await.unwrap();
    let (_, fh) = fs.create(d.ino, b"new", 0o644).await.unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    tokio::time::sleep(ttl + ttl / 2).await;
    fs.lookup(ROOT_INO, b"d").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    let (names, _) = read_dir(&fs, d.ino).await;
    assert_eq!(names, [".", "..", "new", "old"]);
}

/// Looks up `b` in the directory `a` while this mount renames `a` to `z`: the lookup's listing
/// answers only after the rename.
async fn lookup_b_while_a_becomes_z(fs: &Arc<Fs>, faulty: &FaultyStore, a: u64) -> Attr {
    faulty.inject("list_objects", Fault::Late(Duration::from_millis(500)), 1);
    let walker = tokio::spawn({
        let fs = fs.clone();
        async move { fs.lookup(a, b"b").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"z", 0).await.unwrap();
    walker.await.unwrap().unwrap()
}

/// A lookup still waiting on S3 when this mount renames its parent must not keep, nor learn
/// from, a page of the old keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_overtaken_by_a_rename_keeps_nothing() {
    let ttl = Duration::from_millis(300);
    let memory = Arc::new(MemoryStore::new(&["bucket"]));
    memory.insert("bucket", "a/b/x", "x");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let root = MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() };
    let fs = Arc::new(mount_with_ttl(faulty.clone(), root, ttl));
    let a = fs.lookup(ROOT_INO, b"a").await.unwrap();
    fs.lookup(a.ino, b"b").await.unwrap();
    tokio::time::sleep(ttl + ttl / 2).await;
    let b = lookup_b_while_a_becomes_z(&fs, &faulty, a.ino).await;
    assert_eq!(fs.lookup(b.ino, b"x").await.unwrap().size, 1);
    let (names, _) = read_dir(&fs, b.ino).await;
    assert_eq!(names, [".", "..", "x"]);
}

/// A name first looked up while this mount renames its parent is found under the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_overtaken_by_a_rename_of_its_parent_asks_again() {
    let memory = Arc::new(MemoryStore::new(&["bucket"]).with_page_size(1));
    for key in ["a/0", "a/b/x"] {
        memory.insert("bucket", key, "x");
    }
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = Arc::new(mount(faulty.clone()));
    let a = fs.lookup(ROOT_INO, b"a").await.unwrap();
    let b = lookup_b_while_a_becomes_z(&fs, &faulty, a.ino).await;
    assert_eq!(fs.lookup(b.ino, b"x").await.unwrap().size, 1);
    let (names, _) = read_dir(&fs, b.ino).await;
    assert_eq!(names, [".", "..", "x"]);
}

/// A directory being filled (an untar, `cp -r`) sees a lookup of a new name per file: after the
/// TTL, one listing answers them all rather than a HEAD and a LIST each, while the directory
/// still lists in one page and was listed lately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_new_names_list_a_small_directory_again_once_per_ttl() {
    let ttl = Duration::from_millis(300);
    let store = Arc::new(MemoryStore::new(&["bucket"]).with_page_size(10));
    for n in 0..5 {
        store.insert("bucket", &format!("small/{n}"), "x");
        store.insert("bucket", &format!("paged/{n:02}"), "x");
        store.insert("bucket", &format!("paged/{:02}", n + 5), "x");
        store.insert("bucket", &format!("paged/{:02}", n + 10), "x");
    }
    let fs = mount_with_ttl(store.clone(), MountRoot::Bucket { bucket: "bucket".into(), prefix: String::new() }, ttl);
    let small = fs.lookup(ROOT_INO, b"small").await.unwrap();
    let paged = fs.lookup(ROOT_INO, b"paged").await.unwrap();
    read_dir(&fs, small.ino).await;
    read_dir(&fs, paged.ino).await;
    tokio::time::sleep(ttl + ttl / 2).await;
    let calls = |store: &MemoryStore| (store.calls("head_object"), store.calls("list_objects"));
    let before = calls(&store);
    let (a, b, c, d) = tokio::join!(
        fs.lookup(small.ino, b"new-a"),
        fs.lookup(small.ino, b"new-b"),
        fs.lookup(small.ino, b"new-c"),
        fs.lookup(small.ino, b"new-d"),
    );
    for result in [a, b, c, d] {
        assert_eq!(result.unwrap_err(), FsError::NotFound);
    }
    assert_eq!(fs.lookup(small.ino, b"new-e").await.unwrap_err(), FsError::NotFound);
    assert_eq!(calls(&store), (before.0, before.1 + 1), "five new names, one listing");

    store.insert("bucket", "small/from-elsewhere", "made by another client");
    tokio::time::sleep(ttl + ttl / 2).await;
    assert_eq!(fs.lookup(small.ino, b"from-elsewhere").await.unwrap().size, 22, "the new listing shows it");

    let before = calls(&store);
    assert_eq!(fs.lookup(paged.ino, b"new").await.unwrap_err(), FsError::NotFound);
    assert_eq!(calls(&store), (before.0 + 1, before.1 + 1), "two pages to list again: one name asked instead");

    tokio::time::sleep(ttl * 11).await;
    let before = calls(&store);
    assert_eq!(fs.lookup(small.ino, b"later").await.unwrap_err(), FsError::NotFound);
    assert_eq!(calls(&store), (before.0 + 1, before.1 + 1), "long after a listing: one name asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_objects_list_completely_one_page_at_a_time() {
    let store = memory((0..100_000).map(|n| format!("big/{n:06}")));
    let fs = mount(store.clone());
    let dir = fs.lookup(ROOT_INO, b"big").await.unwrap();
    let (names, largest) = read_dir(&fs, dir.ino).await;
    assert_eq!(names.len(), 100_002);
    assert_eq!(names[2], "000000");
    assert_eq!(names[100_001], "099999");
    assert_eq!(store.calls("list_objects"), 100, "the lookup's listing was the first of the 100 pages");
    assert!(largest <= 1002, "at most one page is held, got {largest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_multipart_upload_is_aborted_kept_and_retried() {
    let store = memory([]);
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let fs = mount(faulty.clone());
    let (file, fh) = fs.create(ROOT_INO, b"big.bin", 0o644).await.unwrap();
    let data: Vec<u8> = (0..40 * 1024 * 1024 + 3).map(|i| (i % 253) as u8).collect();
    // Written back to front, so that nothing goes up before close.
    for (n, chunk) in data.chunks(1024 * 1024).enumerate().rev() {
        fs.write(fh, (n * 1024 * 1024) as u64, chunk).await.unwrap();
    }
    assert_eq!(store.calls("upload_part"), 0);
    faulty.inject("upload_part", Fault::Fail(S3Error::Unreachable("connection reset".into())), 1);
    assert!(matches!(fs.flush(fh).await, Err(FsError::Io(_))));
    assert_eq!(store.object("bucket", "big.bin"), None, "nothing half-visible");
    assert_eq!(store.open_uploads(), 0, "the failed upload was aborted");
    assert_eq!(fs.getattr(file.ino).await.unwrap().size, data.len() as u64, "still staged");
    let parts_before = store.calls("upload_part");
    fs.flush(fh).await.unwrap();
    assert!(store.object("bucket", "big.bin").unwrap() == data);
    assert_eq!(store.calls("upload_part") - parts_before, 6, "five parts of 8 MiB and a tail");
    assert!(store.most_in_flight() >= 4, "parts go up in parallel");
    fs.release(fh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_upload_is_eacces_and_the_next_close_retries() {
    let store = memory([]);
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let fs = mount(faulty.clone());
    let (_, fh) = fs.create(ROOT_INO, b"note.txt", 0o644).await.unwrap();
    fs.write(fh, 0, b"keep me").await.unwrap();
    faulty.inject("put_object", Fault::Fail(S3Error::AccessDenied("policy".into())), 1);
    assert_eq!(fs.flush(fh).await, Err(FsError::AccessDenied));
    fs.release(fh).await;
    assert_eq!(store.object("bucket", "note.txt"), None);
    let attr = fs.lookup(ROOT_INO, b"note.txt").await.unwrap();
    let fh = fs.open(attr.ino, libc::O_RDONLY, 0).await.unwrap().fh;
    assert_eq!(fs.read(fh, 0, 100).await.unwrap().concat(), b"keep me");
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.object("bucket", "note.txt").unwrap(), b"keep me");
    assert_eq!(store.content_type("bucket", "note.txt").unwrap(), "text/plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appending_writer_uploads_parts_before_close() {
    let store = memory([]);
    let fs = mount(store.clone());
    let (_, fh) = fs.create(ROOT_INO, b"stream.bin", 0o644).await.unwrap();
    let data: Vec<u8> = (0..50 * 1024 * 1024 + 11).map(|i| (i % 249) as u8).collect();
    for (n, chunk) in data.chunks(128 * 1024).enumerate() {
        fs.write(fh, (n * 128 * 1024) as u64, chunk).await.unwrap();
    }
    // The parts were started during the writes; give the last of them a moment to be counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = store.calls("upload_part");
    assert!(early >= 5, "parts went up while writing: {early}");
    assert_eq!(store.object("bucket", "stream.bin"), None, "nothing visible before close");
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.object("bucket", "stream.bin").unwrap() == data);
    assert_eq!(store.calls("upload_part"), 7, "no part sent twice");
    assert_eq!(store.open_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_the_early_upload_sends_the_file_whole_at_close() {
    let store = memory([]);
    let fs = mount(store.clone());
    let (_, fh) = fs.create(ROOT_INO, b"edited.bin", 0o644).await.unwrap();
    let mut data: Vec<u8> = (0..30 * 1024 * 1024).map(|i| (i % 247) as u8).collect();
    for (n, chunk) in data.chunks(1024 * 1024).enumerate() {
        fs.write(fh, (n * 1024 * 1024) as u64, chunk).await.unwrap();
    }
    // Parts go up in tasks of their own, which a busy machine may not have run yet: the patch
    // below must come after the first part holding offset 10 has reached the store.
    let writes_done = tokio::time::Instant::now();
    while store.calls("upload_part") == 0 {
        assert!(writes_done.elapsed() < Duration::from_secs(10), "no part went up while writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fs.write(fh, 10, b"patched").await.unwrap();
    data[10..17].copy_from_slice(b"patched");
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.object("bucket", "edited.bin").unwrap() == data);
    assert_eq!(store.open_uploads(), 0, "the early upload was aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_may_not_list_buckets_still_opens_them_by_name() {
    let store = memory(["inside.txt".to_string()]);
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let fs = mount_root(faulty.clone(), MountRoot::Account);
    faulty.inject("list_buckets", Fault::Fail(S3Error::AccessDenied("no s3:ListAllMyBuckets".into())), 1);
    let (names, _) = read_dir(&fs, ROOT_INO).await;
    assert_eq!(names, [".", ".."]);
    let bucket = fs.lookup(ROOT_INO, b"bucket").await.unwrap();
    let (inside, _) = read_dir(&fs, bucket.ino).await;
    assert_eq!(inside, [".", "..", "inside.txt"]);
    assert_eq!(fs.mkdir(ROOT_INO, b"Bad_Name", 0o755).await.unwrap_err(), FsError::InvalidArgument);
    assert_eq!(store.calls("create_bucket"), 0, "an invalid name is never sent");
}
