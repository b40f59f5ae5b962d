//! Headers an upload carries: the Content-Type inferred from the key's extension, and the
//! defaults given with `--header 'Name: value'` at mount time, checked once there.

use std::collections::BTreeMap;

/// What every PutObject and CreateMultipartUpload of a mount sends besides the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadHeaders {
    /// Used when the extension says nothing; else `application/octet-stream`.
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub storage_class: Option<String>,
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub acl: Option<String>,
    /// `x-amz-meta-NAME` headers, by NAME.
    pub metadata: BTreeMap<String, String>,
}

const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];
const ENCRYPTIONS: &[&str] = &["AES256", "aws:kms", "aws:kms:dsse"];
const ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

impl UploadHeaders {
    /// Parses `--header` values; the error names the header and what is accepted.
    pub fn parse(lines: &[String]) -> Result<Self, String> {
        let mut headers = UploadHeaders::default();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .map(|(n, v)| (n.trim(), v.trim()))
                .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("bad --header '{line}': write it as 'Name: value'"))?;
            if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(format!("bad --header '{line}': the value must be printable ASCII"));
            }
            let lower = name.to_ascii_lowercase();
            let value = value.to_string();
            let slot = match lower.as_str() {
                "content-type" => &mut headers.content_type,
                "cache-control" => &mut headers.cache_control,
                "content-encoding" => &mut headers.content_encoding,
                "content-disposition" => &mut headers.content_disposition,
                "content-language" => &mut headers.content_language,
                "x-amz-storage-class" => {
                    check_one_of(name, &value, STORAGE_CLASSES)?;
                    &mut headers.storage_class
                }
                "x-amz-server-side-encryption" => {
                    check_one_of(name, &value, ENCRYPTIONS)?;
                    &mut headers.server_side_encryption
                }
                "x-amz-server-side-encryption-aws-kms-key-id" => &mut headers.sse_kms_key_id,
                "x-amz-acl" => {
                    check_one_of(name, &value, ACLS)?;
                    &mut headers.acl
                }
                meta if meta.starts_with("x-amz-meta-") && meta.len() > "x-amz-meta-".len() => {
                    headers.metadata.insert(meta["x-amz-meta-".len()..].to_string(), value);
                    continue;
                }
                _ => {
                    return Err(format!(
                        "unsupported --header '{name}': use Content-Type, Cache-Control, Content-Encoding, \
                         Content-Disposition, Content-Language, x-amz-storage-class, x-amz-server-side-encryption, \
                         x-amz-server-side-encryption-aws-kms-key-id, x-amz-acl or x-amz-meta-*"
                    ))
                }
            };
            *slot = Some(value);
        }
        Ok(headers)
    }

    /// The Content-Type for `key`: from its extension, else the mount's default.
    pub fn content_type_for(&self, key: &str) -> String {
        let name = key.rsplit('/').next().unwrap_or(key);
        mime_guess::from_path(name)
            .first_raw()
            .map(str::to_string)
            .or_else(|| self.content_type.clone())
            .unwrap_or_else(|| "application/octet-stream".to_string())
    }
}

fn check_one_of(name: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("bad --header '{name}: {value}': expected one of {}", allowed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_parsed_and_checked() {
        let lines = [
            "Cache-Control: max-age=60".to_string(),
            "x-amz-storage-class: STANDARD_IA".into(),
            "X-Amz-Meta-Owner:  team-a ".into(),
            "x-amz-server-side-encryption: AES256".into(),
        ];
        let headers = UploadHeaders::parse(&lines).unwrap();
        assert_eq!(headers.cache_control.as_deref(), Some("max-age=60"));
        assert_eq!(headers.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(headers.metadata.get("owner").map(String::as_str), Some("team-a"));
        assert!(UploadHeaders::parse(&["no colon".into()]).unwrap_err().contains("'Name: value'"));
        assert!(UploadHeaders::parse(&["x-amz-storage-class: FAST".into()]).unwrap_err().contains("STANDARD"));
        assert!(UploadHeaders::parse(&["Authorization: x".into()]).unwrap_err().contains("unsupported"));
        assert!(UploadHeaders::parse(&["Cache-Control: caf\u{e9}".into()]).is_err());
    }

    #[test]
    fn content_type_follows_the_extension() {
        let headers = UploadHeaders::default();
        assert_eq!(headers.content_type_for("a/b/page.html"), "text/html");
        assert_eq!(headers.content_type_for("photo.JPG"), "image/jpeg");
        assert_eq!(headers.content_type_for("noext"), "application/octet-stream");
        let custom = UploadHeaders { content_type: Some("text/plain".into()), ..Default::default() };
        assert_eq!(custom.content_type_for("README"), "text/plain");
        assert_eq!(custom.content_type_for("x.json"), "application/json");
    }
}
