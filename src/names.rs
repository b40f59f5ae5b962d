//! Which S3 keys can be paths, and how names map to keys. Pure functions, unit-tested here.
//!
//! A key is shown only if every component between its slashes is a usable file name: not empty,
//! not `.` or `..`, no NUL byte, at most 255 bytes. Other keys stay in S3, hidden from the mount.

/// The longest name Linux accepts for one path component.
pub const NAME_MAX: usize = 255;

/// Why a name given by the kernel cannot name an S3 object or prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    TooLong,
    /// Empty, `.`, `..`, a slash or a NUL: no key can have it as a component.
    Unusable,
}

/// Checks one path component as the kernel hands it over.
pub fn check_name(name: &[u8]) -> Result<&str, NameProblem> {
    if name.len() > NAME_MAX {
        return Err(NameProblem::TooLong);
    }
    let name = std::str::from_utf8(name).map_err(|_| NameProblem::Unusable)?;
    if is_usable_component(name) {
        Ok(name)
    } else {
        Err(NameProblem::Unusable)
    }
}

fn is_usable_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.len() <= NAME_MAX && !name.contains(['/', '\0'])
}

/// The name a listing entry has inside the directory whose prefix is `dir_prefix`, if it can be
/// shown. `entry` is a key (a file) or a CommonPrefix ending in `/` (a directory).
pub fn child_name<'a>(dir_prefix: &str, entry: &'a str) -> Option<&'a str> {
    let rest = entry.strip_prefix(dir_prefix)?;
    let name = rest.strip_suffix('/').unwrap_or(rest);
    is_usable_component(name).then_some(name)
}

/// True when every component of `key` below `base` can be a path component. A trailing `/` is
/// allowed: it marks a directory.
pub fn key_is_path(base: &str, key: &str) -> bool {
    let Some(rest) = key.strip_prefix(base) else { return false };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !rest.is_empty() && rest.split('/').all(is_usable_component)
}

/// A name that could be a bucket: what HeadBucket is worth sending for. Legacy buckets may hold
/// capitals and underscores, so this is looser than the rules for creating one.
pub fn could_be_bucket(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Checks a name for a new bucket against the S3 naming rules, so that nothing is sent for a
/// name S3 would refuse. The error says which rule the name breaks.
pub fn check_new_bucket_name(name: &str) -> Result<(), &'static str> {
    const RESERVED_PREFIXES: &[&str] = &["xn--", "sthree-", "amzn-s3-demo-"];
    const RESERVED_SUFFIXES: &[&str] = &["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
    if !(3..=63).contains(&name.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return Err("a bucket name holds only lowercase letters, digits, dots and hyphens");
    }
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge(name.as_bytes()[0]) || !edge(name.as_bytes()[name.len() - 1]) {
        return Err("a bucket name starts and ends with a letter or a digit");
    }
    if name.contains("..") {
        return Err("a bucket name has no two adjacent dots");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("a bucket name is not an IP address");
    }
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) || RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err("that prefix or suffix is reserved by S3");
    }
    Ok(())
}

/// Normalises a mount prefix: no leading slash, and a trailing one unless empty.
pub fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.ends_with('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_checked() {
        assert_eq!(check_name(b"photo.jpg"), Ok("photo.jpg"));
        assert_eq!(check_name("día 1 ✓".as_bytes()), Ok("día 1 ✓"));
        assert_eq!(check_name(&[b'a'; 255]).map(str::len), Ok(255));
        assert_eq!(check_name(&[b'a'; 256]), Err(NameProblem::TooLong));
        assert_eq!(check_name(b""), Err(NameProblem::Unusable));
        assert_eq!(check_name(b".."), Err(NameProblem::Unusable));
        assert_eq!(check_name(b"a\0b"), Err(NameProblem::Unusable));
        assert_eq!(check_name(&[0xff, 0xfe]), Err(NameProblem::Unusable));
    }

    #[test]
    fn listing_entries_become_names() {
        assert_eq!(child_name("photos/", "photos/2019/"), Some("2019"));
        assert_eq!(child_name("photos/", "photos/a.jpg"), Some("a.jpg"));
        assert_eq!(child_name("", "top.txt"), Some("top.txt"));
        assert_eq!(child_name("photos/", "photos//"), None);
        assert_eq!(child_name("photos/", "photos/./"), None);
        assert_eq!(child_name("photos/", "photos/../"), None);
        assert_eq!(child_name("photos/", "photos/"), None);
        assert_eq!(child_name("photos/", "other/x"), None);
        let long = format!("d/{}", "x".repeat(256));
        assert_eq!(child_name("d/", &long), None);
    }

    #[test]
    fn keys_that_cannot_be_paths_are_rejected() {
        assert!(key_is_path("", "a/b/c.txt"));
        assert!(key_is_path("", "a/b/"));
        assert!(key_is_path("pre/", "pre/x"));
        assert!(!key_is_path("", "a//b"));
        assert!(!key_is_path("", "/a"));
        assert!(!key_is_path("", "a/./b"));
        assert!(!key_is_path("", "a/../b"));
        assert!(!key_is_path("", "a\0b"));
        assert!(!key_is_path("pre/", "pre/"));
        assert!(!key_is_path("pre/", "other/x"));
    }

    #[test]
    fn bucket_candidates() {
        assert!(could_be_bucket("my-bucket.logs"));
        assert!(could_be_bucket("Legacy_Bucket"));
        assert!(!could_be_bucket("ab"));
        assert!(!could_be_bucket("has space"));
    }

    #[test]
    fn new_bucket_names_follow_the_s3_rules() {
        for good in ["abc", "my-bucket.logs", "a1b2", &"a".repeat(63), "192.168.5.com"] {
            assert_eq!(check_new_bucket_name(good), Ok(()), "{good}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "under_score",
            "-start",
            "end-",
            ".dot",
            "two..dots",
            "192.168.5.4",
            "xn--bucket",
            "sthree-bucket",
            "amzn-s3-demo-bucket",
            "bucket-s3alias",
            "bucket--ol-s3",
            "bucket.mrap",
            "bucket--x-s3",
            "bucket--table-s3",
        ] {
            assert!(check_new_bucket_name(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("photos"), "photos/");
        assert_eq!(normalise_prefix("/photos/2019/"), "photos/2019/");
    }
}
