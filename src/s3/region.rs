/*!
Buckets live in regions, and every request must be signed for its bucket's region. This module
finds each bucket's region once and keeps one SDK client per region, so that one `s3://` mount
reaches every bucket of an account wherever it lives.

A bucket's region comes, in order, from: ListBuckets (which names each bucket's region), or
HeadBucket sent with the mount's region, whose answer carries `x-amz-bucket-region` whether it
is 200, a 301 redirect or a 400 AuthorizationHeaderMalformed; failing that, the `<Region>` of
an error body, then GetBucketLocation. Servers that say nothing (many S3-compatible ones) get
the mount's region.
*/

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::Client;

/// One client per region, and the region of every bucket met so far.
pub struct RegionalClients {
    base: aws_sdk_s3::config::Builder,
    default_region: String,
    default: Client,
    clients: Mutex<HashMap<String, Client>>,
    buckets: Mutex<HashMap<String, String>>,
}

impl RegionalClients {
    pub fn new(base: aws_sdk_s3::config::Builder, default_region: String) -> Self {
        let default = Client::from_conf(base.clone().region(Region::new(default_region.clone())).build());
        RegionalClients {
            base,
            default_region,
            default,
            clients: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The client of the mount's own region: for ListBuckets and CreateBucket.
    pub fn default_client(&self) -> &Client {
        &self.default
    }

    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    pub fn known_region(&self, bucket: &str) -> Option<String> {
        lock(&self.buckets).get(bucket).cloned()
    }

    pub fn remember(&self, bucket: &str, region: &str) {
        let region = if region.is_empty() { self.default_region.as_str() } else { region };
        lock(&self.buckets).insert(bucket.to_string(), region.to_string());
    }

    pub fn forget(&self, bucket: &str) {
        lock(&self.buckets).remove(bucket);
    }

    /// The client for `region`, made on first use.
    pub fn client_for_region(&self, region: &str) -> Client {
        if region == self.default_region {
            return self.default.clone();
        }
        lock(&self.clients)
            .entry(region.to_string())
            .or_insert_with(|| Client::from_conf(self.base.clone().region(Region::new(region.to_string())).build()))
            .clone()
    }
}

/// The region a failed call says the bucket is in: the `x-amz-bucket-region` header, else the
/// `<Region>` element of the error body (AuthorizationHeaderMalformed names the expected one).
pub fn region_from_error<E>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    let raw = err.raw_response()?;
    if let Some(region) = raw.headers().get("x-amz-bucket-region") {
        return Some(region.to_string());
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    region_in_xml(body)
}

fn region_in_xml(body: &str) -> Option<String> {
    let start = body.find("<Region>")? + "<Region>".len();
    let end = start + body[start..].find("</Region>")?;
    Some(body[start..end].trim().to_string()).filter(|r| !r.is_empty())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_region_is_read_from_an_error_body() {
        let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; \
                    expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>";
        assert_eq!(region_in_xml(body).as_deref(), Some("eu-west-1"));
        assert_eq!(region_in_xml("<Error><Region></Region></Error>"), None);
        assert_eq!(region_in_xml("<Error/>"), None);
    }
}
