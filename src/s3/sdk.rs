//! [`ObjectStore`] over the AWS SDK for Rust: client construction from the standard credential
//! chain, addressing style, timeouts, and the one place SDK errors become [`S3Error`].

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::imds::region::ImdsRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::{RetryConfig, RetryPartition, TokenBucket};
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, ObjectCannedAcl,
    ServerSideEncryption, StorageClass,
};

use super::body::{gathered, held_body, staged_body, upload_bodies, BodyBuffers, GET_BODIES};
use super::region::{region_from_error, RegionalClients};
use super::{
    Body, BucketInfo, FileRange, ListPage, ListRequest, ObjectInfo, ObjectStore, Part, PartBody, RangeData, S3Error,
    S3Result, UploadHeaders,
};

/// Where and how to reach S3. Credentials are not here on purpose: they come only from the
/// AWS chain (environment, profiles, web identity, container and instance metadata).
#[derive(Debug, Clone, Default)]
pub struct SdkStoreOptions {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub force_path_style: bool,
    /// Bound on one call, retries included, so that a silent server gives an error, not a hang.
    /// Transfers (uploads, GET bodies) get longer, in proportion to their size.
    pub request_timeout: Option<Duration>,
}

/// The region used when neither `--region` nor the AWS configuration names one.
const FALLBACK_REGION: &str = "us-east-1";

/// Attempts per call. When a fifth of requests fail (throttling, 500s), ten attempts all fail
/// about once in ten million calls; the request timeout bounds the time they may take.
const MAX_ATTEMPTS: u32 = 10;

/// The first wait before a retry (randomised below it, doubling each time): short, because a
/// person is often waiting on the call, yet growing fast enough to ease off a throttling server.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// The longest wait between attempts, so that retries fit inside the request timeout.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Time a transfer is allowed on top of the request timeout: its bytes at this rate.
const SLOWEST_TRANSFER_BYTES_PER_SEC: u64 = 1024 * 1024;

/// Without `--request-timeout`: the bound on one call, retries included.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

pub struct SdkStore {
    regions: RegionalClients,
    sdk_config: aws_config::SdkConfig,
    request_timeout: Duration,
    /// Upload bodies read into memory, from the process-wide pool that streaming writers'
    /// parts are held in too, and GET bodies gathered (see `body.rs`).
    bodies: Arc<BodyBuffers>,
    gets: Arc<BodyBuffers>,
}

impl SdkStore {
    pub async fn new(options: &SdkStoreOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        loader = loader.region(region_chain(options));
        let request_timeout = options.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        loader = loader.timeout_config(timeouts(request_timeout)).retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF)
                .with_max_backoff(MAX_BACKOFF),
        );
        let sdk_config = loader.load().await;
        // A mount serves one user whose every call matters: the SDK's shared retry quota, which
        // stops retrying once many calls have failed, would turn a throttled minute into lost
        // writes. Attempts stay bounded by MAX_ATTEMPTS and the request timeout instead.
        let partition = RetryPartition::custom("bucketfs").token_bucket(TokenBucket::unlimited()).build();
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config).retry_partition(partition);
        if let Some(url) = &options.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let path_style =
            options.force_path_style || options.endpoint_url.as_deref().is_some_and(|url| !is_aws_endpoint(url));
        builder = builder.force_path_style(path_style);
        let region = sdk_config.region().map_or(FALLBACK_REGION.to_string(), |r| r.to_string());
        SdkStore {
            regions: RegionalClients::new(builder, region),
            sdk_config,
            request_timeout,
            bodies: upload_bodies(),
            gets: BodyBuffers::new(GET_BODIES),
        }
    }

    /// Timeouts for a call that sends `len` bytes: the request timeout plus the bytes' time at
    /// the slowest rate a working link is expected to manage.
    fn upload_timeouts(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let allowed = self.request_timeout + transfer_time(len);
        aws_sdk_s3::config::Builder::default().timeout_config(timeouts(allowed))
    }

    /// The client signing for `bucket`'s region, finding that region on first use.
    async fn client(&self, bucket: &str) -> S3Result<Client> {
        let region = match self.regions.known_region(bucket) {
            Some(region) => region,
            None => self.discover_region(bucket).await?,
        };
        Ok(self.regions.client_for_region(&region))
    }

    async fn discover_region(&self, bucket: &str) -> S3Result<String> {
        let default = self.regions.default_client();
        let said = match default.head_bucket().bucket(bucket).send().await {
            Ok(out) => out.bucket_region().map(str::to_string),
            Err(err) => match region_from_error(&err) {
                Some(region) => Some(region),
                None => match classify(err) {
                    S3Error::NotFound | S3Error::NoSuchBucket => return Err(S3Error::NoSuchBucket),
                    S3Error::Unreachable(cause) => return Err(S3Error::Unreachable(cause)),
                    _ => None,
                },
            },
        };
        let region = match said {
            Some(region) => region,
            None => match default.get_bucket_location().bucket(bucket).send().await {
                Ok(out) => match out.location_constraint().map(|c| c.as_str()) {
                    Some("EU") => "eu-west-1".to_string(),
                    Some(region) => region.to_string(),
                    None => String::new(),
                },
                Err(err) => region_from_error(&err).unwrap_or_else(|| {
                    tracing::debug!(bucket, error = %classify(err), "no region from GetBucketLocation; using the mount's");
                    String::new()
                }),
            },
        };
        self.regions.remember(bucket, &region);
        let region = self.regions.known_region(bucket).unwrap_or_default();
        tracing::debug!(bucket, %region, "bucket region");
        Ok(region)
    }

    pub fn credentials_provider(&self) -> Option<aws_credential_types::provider::SharedCredentialsProvider> {
        self.sdk_config.credentials_provider()
    }

    pub fn default_region(&self) -> &str {
        self.regions.default_region()
    }

    /// Resolves credentials once, so that a mount without any fails before mounting.
    pub async fn check_credentials(&self) -> Result<(), String> {
        use aws_sdk_s3::config::ProvideCredentials;
        let provider = self
            .sdk_config
            .credentials_provider()
            .ok_or_else(|| "no AWS credentials provider is configured".to_string())?;
        provider.provide_credentials().await.map(|_| ()).map_err(|e| innermost_cause(&e))
    }
}

/// A silent server costs at most `limit` per call, retries included; one attempt may use half,
/// so that a connection that hangs is given up while there is time to try another.
fn timeouts(limit: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(limit.min(Duration::from_secs(3)))
        .read_timeout(limit / 2)
        .operation_attempt_timeout(limit / 2)
        .operation_timeout(limit)
        .build()
}

/// How long `len` bytes may take at the slowest rate a working link is expected to manage.
fn transfer_time(len: u64) -> Duration {
    Duration::from_secs(len / SLOWEST_TRANSFER_BYTES_PER_SEC)
}

/// `--region`, then AWS_REGION and the profile; instance metadata only for AWS itself, since a
/// mount of a local or third-party endpoint must not wait on (or send to) a metadata service.
fn region_chain(options: &SdkStoreOptions) -> RegionProviderChain {
    let chain = RegionProviderChain::first_try(options.region.clone().map(Region::new))
        .or_else(EnvironmentVariableRegionProvider::new());
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &options.profile {
        profile = profile.profile_name(name);
    }
    let chain = chain.or_else(profile.build());
    match &options.endpoint_url {
        Some(_) => chain.or_else(Region::new(FALLBACK_REGION)),
        None => chain.or_else(ImdsRegionProvider::builder().build()).or_else(Region::new(FALLBACK_REGION)),
    }
}

/// Applies a mount's upload headers to PutObject and CreateMultipartUpload builders alike.
macro_rules! with_headers {
    ($builder:expr, $headers:expr, $key:expr) => {{
        let h: &UploadHeaders = $headers;
        $builder
            .content_type(h.content_type_for($key))
            .set_cache_control(h.cache_control.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_language(h.content_language.clone())
            .set_storage_class(h.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(h.server_side_encryption.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id(h.sse_kms_key_id.clone())
            .set_acl(h.acl.as_deref().map(ObjectCannedAcl::from))
            .set_metadata((!h.metadata.is_empty()).then(|| h.metadata.clone().into_iter().collect()))
    }};
}

fn is_aws_endpoint(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

fn classify<E>(err: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            S3Error::Unreachable(format!("{err}: {}", innermost_cause(&err)))
        }
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or("");
            match (status, code) {
                (_, "NoSuchBucket") => S3Error::NoSuchBucket,
                (_, "BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => S3Error::AlreadyExists,
                (_, "BucketNotEmpty") => S3Error::NotEmpty,
                (_, "InvalidBucketName") => S3Error::InvalidName,
                (501, _) | (_, "NotImplemented") => S3Error::NotImplemented,
                (301, _)
                | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
                    S3Error::WrongRegion(region_from_error(&err).unwrap_or_else(|| describe(status, ctx.err())))
                }
                (404, _) | (_, "NoSuchKey") => S3Error::NotFound,
                (403, _) => S3Error::AccessDenied(describe(status, ctx.err())),
                (412, _) => S3Error::PreconditionFailed,
                (416, _) => S3Error::InvalidRange,
                _ => S3Error::Other(describe(status, ctx.err())),
            }
        }
        _ => S3Error::Other(DisplayErrorContext(&err).to_string()),
    }
}

/// The last error in a chain: the one that says what actually happened ("Connection refused").
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn describe(status: u16, err: &impl ProvideErrorMetadata) -> String {
    format!("HTTP {status} {}: {}", err.code().unwrap_or("(no code)"), err.message().unwrap_or("(no message)"))
}

fn time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn size(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// `bytes START-END/TOTAL` → the number of bytes the body must hold.
fn content_range_len(header: &str) -> Option<u64> {
    let spec = header.strip_prefix("bytes ")?.split('/').next()?;
    let (start, end) = spec.split_once('-')?;
    Some(end.parse::<u64>().ok()? - start.parse::<u64>().ok()? + 1)
}

/// How many times a GET is sent when its body breaks off: the SDK retries a call whose answer
/// never came, but not a body cut short after the headers arrived.
const BODY_ATTEMPTS: u32 = 3;

enum GetFailure {
    /// The call failed; the SDK has retried it already.
    Call(S3Error),
    /// The answer came but its body broke off or came short.
    Body(String),
}

impl SdkStore {
    async fn get_range_once(
        &self,
        bucket: &str,
        key: &str,
        range: &Range<u64>,
        if_match: Option<&str>,
    ) -> Result<RangeData, GetFailure> {
        let out = self
            .client(bucket)
            .await
            .map_err(GetFailure::Call)?
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| GetFailure::Call(classify(e)))?;
        let expected = out.content_range().and_then(content_range_len).or(out.content_length().map(|n| n as u64));
        let etag = out.e_tag().map(str::to_string);
        let allowed = self.request_timeout + transfer_time(range.end - range.start);
        let body = tokio::time::timeout(allowed, gathered(out.body, expected, &self.gets)).await;
        let data = match body {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => return Err(GetFailure::Body(format!("reading the body of {key}: {}", innermost_cause(&e)))),
            Err(_) => return Err(GetFailure::Body(format!("the body of {key} did not arrive in time"))),
        };
        match expected {
            Some(expected) if data.len() != expected => {
                Err(GetFailure::Body(format!("body of {key} cut short: {} of {expected} bytes", data.len())))
            }
            _ => Ok(RangeData { data, etag }),
        }
    }
}

#[async_trait]
impl ObjectStore for SdkStore {
    async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>> {
        let mut buckets = Vec::new();
        let mut token = None;
        loop {
            let request = self.regions.default_client().list_buckets().set_continuation_token(token);
            let out = request.send().await.map_err(classify)?;
            buckets.extend(
                out.buckets()
                    .iter()
                    .filter_map(|b| Some(BucketInfo { name: b.name()?.to_string(), created: time(b.creation_date()) })),
            );
            token = out.continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(buckets);
            }
        }
    }

    async fn head_bucket(&self, bucket: &str) -> S3Result<()> {
        match self.client(bucket).await?.head_bucket().bucket(bucket).send().await.map_err(classify) {
            Err(S3Error::NotFound) => Err(S3Error::NoSuchBucket),
            other => other.map(|_| ()),
        }
    }

    async fn list_objects(&self, request: ListRequest<'_>) -> S3Result<ListPage> {
        let out = self
            .client(request.bucket)
            .await?
            .list_objects_v2()
            .bucket(request.bucket)
            .prefix(request.prefix)
            .set_delimiter(request.delimiter.map(str::to_string))
            .set_continuation_token(request.continuation)
            .set_max_keys(request.max_keys)
            .send()
            .await
            .map_err(classify)?;
        let truncated = out.is_truncated().unwrap_or(false);
        Ok(ListPage {
            prefixes: out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_string)).collect(),
            objects: out
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(ObjectInfo {
                        key: o.key()?.to_string(),
                        size: size(o.size()),
                        last_modified: time(o.last_modified()),
                        etag: o.e_tag().map(str::to_string),
                    })
                })
                .collect(),
            next_token: out.next_continuation_token().filter(|_| truncated).map(str::to_string),
        })
    }

    async fn head_object(&self, bucket: &str, key: &str) -> S3Result<ObjectInfo> {
        let out = self.client(bucket).await?.head_object().bucket(bucket).key(key).send().await.map_err(classify)?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: size(out.content_length()),
            last_modified: time(out.last_modified()),
            etag: out.e_tag().map(str::to_string),
        })
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> S3Result<RangeData> {
        if range.is_empty() {
            return Ok(RangeData { data: Body::default(), etag: if_match.map(str::to_string) });
        }
        let mut attempt = 1;
        loop {
            match self.get_range_once(bucket, key, &range, if_match).await {
                Err(GetFailure::Body(cause)) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(bucket, key, attempt, %cause, "GET body failed; asking again");
                    attempt += 1;
                }
                Err(GetFailure::Body(cause)) => return Err(S3Error::Unreachable(cause)),
                Err(GetFailure::Call(err)) => return Err(err),
                Ok(data) => return Ok(data),
            }
        }
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Option<FileRange>,
        headers: &UploadHeaders,
    ) -> S3Result<Option<String>> {
        let (len, body, crc32) = match body {
            Some(range) => {
                let (body, crc32) = staged_body(&range, &self.bodies).await?;
                (range.len, body, Some(crc32))
            }
            None => (0, ByteStream::from_static(b""), None),
        };
        let request = self
            .client(bucket)
            .await?
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_length(len as i64)
            .set_checksum_crc32(crc32);
        let request = with_headers!(request, headers, key).body(body);
        let out = request
            .customize()
            .config_override(self.upload_timeouts(len))
            .disable_payload_signing()
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn create_multipart(&self, bucket: &str, key: &str, headers: &UploadHeaders) -> S3Result<String> {
        let request = self.client(bucket).await?.create_multipart_upload().bucket(bucket).key(key);
        let out = with_headers!(request, headers, key).send().await.map_err(classify)?;
        out.upload_id().map(str::to_string).ok_or_else(|| S3Error::Other("CreateMultipartUpload gave no id".into()))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PartBody,
    ) -> S3Result<Part> {
        let len = body.size();
        let (body_stream, crc32) = match &body {
            PartBody::Staged(range) => staged_body(range, &self.bodies).await?,
            PartBody::Held(bytes) => held_body(bytes),
        };
        let out = self
            .client(bucket)
            .await?
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .checksum_crc32(crc32)
            .body(body_stream)
            .customize()
            .config_override(self.upload_timeouts(len))
            .disable_payload_signing()
            .send()
            .await
            .map_err(classify)?;
        let etag = out.e_tag().ok_or_else(|| S3Error::Other(format!("part {number} of {key} has no ETag")))?;
        Ok(Part { number, etag: etag.to_string() })
    }

    async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        source: (&str, &str),
        range: Range<u64>,
    ) -> S3Result<Part> {
        let out = self
            .client(bucket)
            .await?
            .upload_part_copy()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(source.0, source.1))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(classify)?;
        let etag = out.copy_part_result().and_then(|r| r.e_tag());
        let etag = etag.ok_or_else(|| S3Error::Other(format!("copied part {number} of {key} has no ETag")))?;
        Ok(Part { number, etag: etag.to_string() })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> S3Result<Option<String>> {
        let parts =
            parts.into_iter().map(|p| CompletedPart::builder().part_number(p.number).e_tag(p.etag).build()).collect();
        let out = self
            .client(bucket)
            .await?
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<()> {
        let request = self.client(bucket).await?.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id);
        request.send().await.map(drop).map_err(classify)
    }

    async fn copy_object(&self, source: (&str, &str), bucket: &str, key: &str) -> S3Result<()> {
        let client = self.client(bucket).await?;
        let request = client.copy_object().copy_source(copy_source(source.0, source.1)).bucket(bucket).key(key);
        request.send().await.map(drop).map_err(classify)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> S3Result<()> {
        self.client(bucket).await?.delete_object().bucket(bucket).key(key).send().await.map(drop).map_err(classify)
    }

    async fn bucket_region(&self, bucket: &str) -> S3Result<String> {
        match self.regions.known_region(bucket) {
            Some(region) => Ok(region),
            None => self.discover_region(bucket).await,
        }
    }

    async fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        let region = self.regions.default_region().to_string();
        let mut request = self.regions.default_client().create_bucket().bucket(bucket);
        if region != "us-east-1" {
            let constraint = BucketLocationConstraint::from(region.as_str());
            let configuration = CreateBucketConfiguration::builder().location_constraint(constraint).build();
            request = request.create_bucket_configuration(configuration);
        }
        request.send().await.map_err(classify)?;
        self.regions.remember(bucket, &region);
        Ok(())
    }

    async fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        self.client(bucket).await?.delete_bucket().bucket(bucket).send().await.map_err(classify)?;
        self.regions.forget(bucket);
        Ok(())
    }

    async fn has_multipart_uploads(&self, bucket: &str) -> S3Result<bool> {
        let client = self.client(bucket).await?;
        let out = client.list_multipart_uploads().bucket(bucket).max_uploads(1).send().await.map_err(classify)?;
        Ok(!out.uploads().is_empty())
    }
}

/// The `x-amz-copy-source` value: bucket and key, percent-encoded except for `/`.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut encoded = format!("{bucket}/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_endpoints_are_recognised() {
        assert!(is_aws_endpoint("https://s3.eu-west-1.amazonaws.com"));
        assert!(is_aws_endpoint("https://s3.cn-north-1.amazonaws.com.cn/"));
        assert!(!is_aws_endpoint("http://127.0.0.1:9000"));
        assert!(!is_aws_endpoint("https://minio.example.com"));
    }

    #[test]
    fn copy_sources_are_encoded() {
        assert_eq!(copy_source("b", "a/b c+d.txt"), "b/a/b%20c%2Bd.txt");
        assert_eq!(copy_source("b", "día"), "b/d%C3%ADa");
    }

    #[test]
    fn content_range_gives_body_length() {
        assert_eq!(content_range_len("bytes 0-99/1000"), Some(100));
        assert_eq!(content_range_len("bytes 5-5/6"), Some(1));
        assert_eq!(content_range_len("garbage"), None);
    }
}
