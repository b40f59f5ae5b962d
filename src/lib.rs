/*!
bucketfs mounts Amazon S3, or any S3-compatible store, as an ordinary directory.

# Layout

- `cli`: command-line arguments and their conversion into configuration.
- `mount`: the `mount` command: checks, daemon start-up and readiness, unmounting;
  `fusermount` mounts for normal users through fusermount3.
- `s3`: the [`s3::ObjectStore`] trait, the only way the filesystem reaches S3, and its AWS
  SDK implementation.
- `fs`: the filesystem as async operations on inode numbers, returning plain values;
  `change` adds the namespace changes (rm, mkdir, rmdir, mv).
- `fuse`: `fuser::Filesystem` over `fs`; replies at once to what the inode table knows, spawns
  every other call onto tokio, and replies once.
- `inode`: the inode table: numbers, names, locations in S3, cached attributes.
- `dir`: directory listings, one page at a time.
- `read`: read handles: ranged GETs pinned to one ETag, sequential read-ahead.
- `write`: staging files: what is being written, and when it goes up.
- `upload`: a staged file to S3: PutObject, parallel multipart, or parts sent while appending.
- `names`: which keys can be paths; name checks.
- `error`: the filesystem error type and its one mapping to errno.
- `control`: the `.s3api` control file and `bucketfs api`: raw S3 calls, parsed, signed, sent.
- `local_s3`: a local S3 server (s3s-fs) for the demo and the tests.

A kernel request flows `fuse` → `fs`/`change` → (`inode`, `dir`, `read`, `write`) → `s3`, and
the answer back.
*/

pub mod change;
pub mod cli;
pub mod control;
pub mod dir;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod fusermount;
pub mod inode;
pub mod local_s3;
pub mod logging;
pub mod mount;
pub mod names;
pub mod read;
pub mod s3;
pub mod upload;
pub mod write;
