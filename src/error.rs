//! The filesystem's error type and its one mapping to errno. Every errno bucketfs returns is
//! decided in [`FsError::errno`], nowhere else.

use crate::names::NameProblem;
use crate::s3::S3Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    NameTooLong,
    /// The mount, or for now every mount, refuses changes.
    ReadOnly,
    NotADirectory,
    IsADirectory,
    /// The object changed under an open file.
    Stale,
    AccessDenied,
    /// The kernel named an inode or handle this mount does not know.
    BadHandle,
    /// An operation bucketfs does not offer (extended attributes).
    Unsupported,
    /// A device control request (ioctl): no file here takes one, so none is a terminal.
    NoSuchControl,
    /// Something S3 cannot hold here: links, special files, changes at the account root.
    NotPermitted,
    NotEmpty,
    Exists,
    InvalidArgument,
    /// The staging disk is full.
    NoSpace,
    /// A control-file request over its size limit.
    TooLarge,
    /// S3 failed or could not be reached; the text is logged, the caller sees EIO.
    Io(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::Stale => libc::ESTALE,
            FsError::AccessDenied => libc::EACCES,
            FsError::BadHandle => libc::EBADF,
            FsError::Unsupported => libc::ENOSYS,
            FsError::NoSuchControl => libc::ENOTTY,
            FsError::NotPermitted => libc::EPERM,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooLarge => libc::EFBIG,
            FsError::Io(_) => libc::EIO,
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsError::Io(cause) => write!(f, "I/O error: {cause}"),
            other => write!(f, "{}", std::io::Error::from_raw_os_error(other.errno())),
        }
    }
}

impl FsError {
    /// A local (staging) I/O error: a full disk is ENOSPC, anything else EIO.
    pub fn from_io(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            _ => FsError::Io(format!("staging: {err}")),
        }
    }
}

impl From<S3Error> for FsError {
    fn from(err: S3Error) -> Self {
        match err {
            S3Error::NotFound | S3Error::NoSuchBucket => FsError::NotFound,
            S3Error::AccessDenied(_) => FsError::AccessDenied,
            S3Error::PreconditionFailed => FsError::Stale,
            S3Error::AlreadyExists => FsError::Exists,
            S3Error::NotEmpty => FsError::NotEmpty,
            S3Error::InvalidName => FsError::InvalidArgument,
            other => FsError::Io(other.to_string()),
        }
    }
}

impl From<NameProblem> for FsError {
    fn from(problem: NameProblem) -> Self {
        match problem {
            NameProblem::TooLong => FsError::NameTooLong,
            NameProblem::Unusable => FsError::NotFound,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_map_to_errno() {
        assert_eq!(FsError::from(S3Error::NotFound).errno(), libc::ENOENT);
        assert_eq!(FsError::from(S3Error::PreconditionFailed).errno(), libc::ESTALE);
        assert_eq!(FsError::from(S3Error::AccessDenied("x".into())).errno(), libc::EACCES);
        assert_eq!(FsError::from(S3Error::Unreachable("refused".into())).errno(), libc::EIO);
        assert_eq!(FsError::from(NameProblem::TooLong).errno(), libc::ENAMETOOLONG);
        assert_eq!(FsError::from_io(std::io::Error::from_raw_os_error(libc::ENOSPC)).errno(), libc::ENOSPC);
        assert_eq!(FsError::from_io(std::io::Error::other("x")).errno(), libc::EIO);
    }
}
