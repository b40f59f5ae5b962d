/*!
Changes to the namespace: `rm`, `mkdir`, `rmdir` and `mv`, as S3 calls.

S3 has no directories and no rename. `mkdir` writes a zero-byte `name/` marker so that an empty
directory persists; `rmdir` refuses a directory with anything below it and deletes the marker.
`mv` of a file is a server-side copy then a delete of the source (UploadPartCopy above 5 GiB);
`mv` of a directory copies every key below it, markers included, [`COPIES_IN_FLIGHT`] at a
time, then deletes the sources, so that a failure part-way leaves every object in at least one
place. Files still staged are uploaded first so nothing local is left behind by a move.
*/

use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, Fs};
use crate::inode::{ChildInfo, Kind, Location, Node, Overrides};
use crate::names::{check_name, check_new_bucket_name};
use crate::s3::{ListRequest, ObjectStore, S3Error, S3Result};
use crate::upload::part_size;

/// CopyObject's limit; larger objects are copied part by part.
pub const SINGLE_COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
const COPIES_IN_FLIGHT: usize = 8;

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

impl Fs {
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = check_name(name)?;
        if self.is_control(parent, name) {
            return Err(FsError::NotPermitted);
        }
        let parent = self.writable_dir(parent)?;
        let child = self.child_node(&parent, name).await?;
        if child.is_dir() {
            return Err(FsError::IsADirectory);
        }
        if let Some(staged) = self.staging.get(child.ino) {
            let mut guard = staged.lock().await;
            guard.discard().await;
            self.staging.release_if_clean(child.ino, &mut guard);
        }
        let Location { bucket, key } = &child.location;
        self.store.delete_object(bucket, key).await.map_err(|e| self.logged(e, bucket, key))?;
        self.inodes.remove_child(parent.ino, name);
        Ok(())
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        let name = check_name(name)?;
        if self.is_control(parent, name) {
            return Err(FsError::Exists);
        }
        if self.is_account_root(parent) {
            return self.create_bucket(parent, name).await;
        }
        let parent = self.writable_dir(parent)?;
        if self.child_node(&parent, name).await.is_ok() {
            return Err(FsError::Exists);
        }
        let location =
            Location { bucket: parent.location.bucket.clone(), key: format!("{}{name}/", parent.location.key) };
        let Location { bucket, key } = &location;
        self.store
            .put_object(bucket, key, None, &self.config.headers)
            .await
            .map_err(|e| self.logged(e, bucket, key))?;
        let node = self.made_directory(parent.ino, name, location);
        let overrides = Overrides { mode: Some((mode & 0o7777) as u16), ..Default::default() };
        let node = self.inodes.set_overrides(node.ino, overrides).unwrap_or(node);
        Ok(self.attr(&node))
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = check_name(name)?;
        if self.is_control(parent, name) {
            return Err(FsError::NotPermitted);
        }
        if self.is_account_root(parent) {
            return self.delete_bucket(parent, name).await;
        }
        let parent = self.writable_dir(parent)?;
        let child = self.child_node(&parent, name).await?;
        if !child.is_dir() {
            return Err(FsError::NotADirectory);
        }
        let Location { bucket, key: prefix } = &child.location;
        if !self.is_empty_dir(bucket, prefix).await? {
            return Err(FsError::NotEmpty);
        }
        self.store.delete_object(bucket, prefix).await.map_err(|e| self.logged(e, bucket, prefix))?;
        self.inodes.remove_child(parent.ino, name);
        Ok(())
    }

    fn is_account_root(&self, ino: u64) -> bool {
        self.node(ino).is_ok_and(|node| node.kind == Kind::Account)
    }

    /// `mkdir` at the root of an `s3://` mount: CreateBucket, after checking the name.
    async fn create_bucket(&self, root: u64, name: &str) -> FsResult<Attr> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        if let Err(rule) = check_new_bucket_name(name) {
            tracing::warn!(bucket = name, "not creating the bucket: {rule}");
            return Err(FsError::InvalidArgument);
        }
        self.store.create_bucket(name).await.map_err(|e| self.logged(e, name, ""))?;
        let location = Location { bucket: name.to_string(), key: String::new() };
        Ok(self.attr(&self.made_directory(root, name, location)))
    }

    /// Records a directory (or bucket) this mount just made: empty, so names missing from it
    /// need no S3 call.
    fn made_directory(&self, parent: u64, name: &str, location: Location) -> Node {
        let info =
            ChildInfo { kind: Kind::Directory, location, size: 0, mtime: std::time::SystemTime::now(), etag: None };
        let node = self.inodes.upsert(parent, name, info);
        self.inodes.made_empty(node.ino);
        node
    }

    /// `rmdir` at the root: DeleteBucket, only when the bucket holds no object and no
    /// unfinished upload, whatever the server would allow.
    async fn delete_bucket(&self, root: u64, name: &str) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let root_node = self.node(root)?;
        self.child_node(&root_node, name).await?;
        let listing = ListRequest { bucket: name, prefix: "", delimiter: None, continuation: None, max_keys: Some(1) };
        let page = self.store.list_objects(listing).await.map_err(|e| self.logged(e, name, ""))?;
        if page.names_anything() || !self.staging.under(name, "").await.is_empty() {
            return Err(FsError::NotEmpty);
        }
        match self.store.has_multipart_uploads(name).await {
            Ok(false) | Err(S3Error::NotImplemented) => {}
            Ok(true) => return Err(FsError::NotEmpty),
            Err(e) => return Err(self.logged(e, name, "")),
        }
        self.store.delete_bucket(name).await.map_err(|e| self.logged(e, name, ""))?;
        self.inodes.remove_child(root, name);
        Ok(())
    }

    /// True when nothing but the directory's own marker lies below `prefix`, in S3 or staged.
    async fn is_empty_dir(&self, bucket: &str, prefix: &str) -> FsResult<bool> {
        let request = ListRequest { bucket, prefix, delimiter: None, continuation: None, max_keys: Some(2) };
        let page = self.store.list_objects(request).await.map_err(|e| self.logged(e, bucket, prefix))?;
        let in_s3 = page.objects.iter().any(|o| o.key != prefix) || !page.prefixes.is_empty();
        Ok(!in_s3 && self.staging.under(bucket, prefix).await.is_empty())
    }

    pub async fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> FsResult<()> {
        let (name, new_name) = (check_name(name)?, check_name(new_name)?);
        if self.is_control(parent, name) || self.is_control(new_parent, new_name) {
            return Err(FsError::NotPermitted);
        }
        let parent = self.writable_dir(parent)?;
        let new_parent = self.writable_dir(new_parent)?;
        if flags & RENAME_EXCHANGE != 0 {
            return Err(FsError::InvalidArgument);
        }
        let source = self.child_node(&parent, name).await?;
        let target = match self.child_node(&new_parent, new_name).await {
            Ok(node) => Some(node),
            Err(FsError::NotFound) => None,
            Err(other) => return Err(other),
        };
        if flags & RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(FsError::Exists);
        }
        if target.as_ref().is_some_and(|t| t.ino == source.ino) {
            return Ok(());
        }
        let bucket = new_parent.location.bucket.clone();
        let destination = if source.is_dir() {
            match &target {
                Some(t) if !t.is_dir() => return Err(FsError::NotADirectory),
                Some(t) if !self.is_empty_dir(&t.location.bucket, &t.location.key).await? => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
            let destination = Location { bucket, key: format!("{}{new_name}/", new_parent.location.key) };
            self.move_directory(&source.location, &destination).await?;
            destination
        } else {
            if target.as_ref().is_some_and(Node::is_dir) {
                return Err(FsError::IsADirectory);
            }
            let destination = Location { bucket, key: format!("{}{new_name}", new_parent.location.key) };
            self.move_file(&source, &destination).await?;
            destination
        };
        self.inodes.rename((parent.ino, name), (new_parent.ino, new_name), destination);
        Ok(())
    }

    async fn move_file(&self, source: &Node, destination: &Location) -> FsResult<()> {
        let size = match self.staging.get(source.ino) {
            Some(staged) => {
                self.flush_staged(source.ino, &staged).await?;
                let mut guard = staged.lock().await;
                guard.rename(&destination.bucket, &destination.key);
                guard.size
            }
            None => source.size,
        };
        let from = &source.location;
        copy_object(
            &self.store,
            (&from.bucket, &from.key),
            (&destination.bucket, &destination.key),
            size,
            SINGLE_COPY_LIMIT,
        )
        .await
        .map_err(|e| self.logged(e, &from.bucket, &from.key))?;
        self.store.delete_object(&from.bucket, &from.key).await.map_err(|e| self.logged(e, &from.bucket, &from.key))
    }

    async fn move_directory(&self, from: &Location, to: &Location) -> FsResult<()> {
        for (ino, staged) in self.staging.under(&from.bucket, &from.key).await {
            self.flush_staged(ino, &staged).await?;
            let mut guard = staged.lock().await;
            let key = format!("{}{}", to.key, &guard.key[from.key.len()..]);
            guard.rename(&to.bucket, &key);
        }
        let objects = self.all_keys(&from.bucket, &from.key).await?;
        let mut copies = tokio::task::JoinSet::new();
        for (key, size) in &objects {
            let (store, source_bucket, source_key) = (self.store.clone(), from.bucket.clone(), key.clone());
            let target = (to.bucket.clone(), format!("{}{}", to.key, &key[from.key.len()..]));
            let size = *size;
            copies.spawn(async move {
                copy_object(&store, (&source_bucket, &source_key), (&target.0, &target.1), size, SINGLE_COPY_LIMIT)
                    .await
            });
            if copies.len() >= COPIES_IN_FLIGHT {
                self.joined(copies.join_next().await, &from.bucket)?;
            }
        }
        while let Some(done) = copies.join_next().await {
            self.joined(Some(done), &from.bucket)?;
        }
        let mut deletes = tokio::task::JoinSet::new();
        for (key, _) in objects {
            let (store, bucket) = (self.store.clone(), from.bucket.clone());
            deletes.spawn(async move { store.delete_object(&bucket, &key).await });
            if deletes.len() >= COPIES_IN_FLIGHT {
                self.joined(deletes.join_next().await, &from.bucket)?;
            }
        }
        while let Some(done) = deletes.join_next().await {
            self.joined(Some(done), &from.bucket)?;
        }
        Ok(())
    }

    fn joined(&self, done: Option<Result<S3Result<()>, tokio::task::JoinError>>, bucket: &str) -> FsResult<()> {
        match done {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(self.logged(e, bucket, "")),
            Some(Err(e)) => Err(FsError::Io(format!("a copy stopped: {e}"))),
        }
    }

    /// Every key below `prefix` with its size, all pages.
    async fn all_keys(&self, bucket: &str, prefix: &str) -> FsResult<Vec<(String, u64)>> {
        let mut keys = Vec::new();
        let mut continuation = None;
        loop {
            let request = ListRequest { bucket, prefix, delimiter: None, continuation, max_keys: None };
            let page = self.store.list_objects(request).await.map_err(|e| self.logged(e, bucket, prefix))?;
            keys.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            continuation = page.next_token;
            if continuation.is_none() {
                return Ok(keys);
            }
        }
    }
}

/// Copies one object server-side: CopyObject up to `single_limit`, else a multipart upload of
/// UploadPartCopy parts, aborted if any part fails.
pub async fn copy_object(
    store: &Arc<dyn ObjectStore>,
    source: (&str, &str),
    target: (&str, &str),
    size: u64,
    single_limit: u64,
) -> S3Result<()> {
    if size <= single_limit {
        return store.copy_object(source, target.0, target.1).await;
    }
    let upload_id = store.create_multipart(target.0, target.1, &Default::default()).await?;
    let part_len = part_size(size).min(single_limit);
    let mut parts = Vec::new();
    let mut offset = 0;
    while offset < size {
        let end = (offset + part_len).min(size);
        let number = parts.len() as i32 + 1;
        match store.upload_part_copy(target.0, target.1, &upload_id, number, source, offset..end).await {
            Ok(part) => parts.push(part),
            Err(e) => {
                let _ = store.abort_multipart(target.0, target.1, &upload_id).await;
                return Err(e);
            }
        }
        offset = end;
    }
    if let Err(e) = store.complete_multipart(target.0, target.1, &upload_id, parts).await {
        let _ = store.abort_multipart(target.0, target.1, &upload_id).await;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::MemoryStore;

    #[tokio::test]
    async fn large_copies_go_part_by_part() {
        let memory = Arc::new(MemoryStore::new(&["a", "b"]));
        let data: Vec<u8> = (0..20 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
        memory.insert("a", "big", data.clone());
        let store: Arc<dyn ObjectStore> = memory.clone();
        copy_object(&store, ("a", "big"), ("b", "copy"), data.len() as u64, 8 * 1024 * 1024).await.unwrap();
        assert_eq!(memory.object("b", "copy").unwrap(), data);
        assert_eq!(memory.calls("upload_part_copy"), 3);
        assert_eq!(memory.calls("copy_object"), 0);
        assert_eq!(memory.open_uploads(), 0);
        copy_object(&store, ("a", "big"), ("b", "small"), data.len() as u64, u64::MAX).await.unwrap();
        assert_eq!(memory.calls("copy_object"), 1);
    }
}
