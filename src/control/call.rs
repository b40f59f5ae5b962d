//! Sending a raw request: sign it with SigV4 for its region, with the mount's credentials, send
//! it to the mount's endpoint (or the region's AWS endpoint), and turn the answer into the
//! bytes the control file returns. Failures of bucketfs itself (a bad request, no answer, a
//! body over the limit) come back as responses too, marked `x-bucketfs-error: true`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::request::{RawRequest, EXPECTED_FORM};
use crate::s3::ObjectStore;

/// Response bodies larger than this are not returned; ask for a part with a Range header.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// What a raw call needs from the mount: credentials, where S3 is, and bucket regions.
pub struct RawApi {
    credentials: SharedCredentialsProvider,
    endpoint: Option<String>,
    default_region: String,
    store: Arc<dyn ObjectStore>,
    http: Client<Https, Full<bytes::Bytes>>,
}

/// A finished call: the bytes a reader gets, and whether S3 accepted it (2xx).
pub struct CallResult {
    pub response: Vec<u8>,
    pub succeeded: bool,
}

impl RawApi {
    pub fn new(
        credentials: SharedCredentialsProvider,
        endpoint: Option<String>,
        default_region: String,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(https);
        Ok(RawApi { credentials, endpoint, default_region, store, http })
    }

    /// Signs and sends `request`; every outcome is a response.
    pub async fn call(&self, request: &RawRequest) -> CallResult {
        match tokio::time::timeout(CALL_TIMEOUT, self.send(request)).await {
            Ok(Ok(result)) => result,
            Ok(Err(cause)) => bucketfs_error(502, "Bad Gateway", &cause),
            Err(_) => bucketfs_error(504, "Gateway Timeout", "S3 did not answer within 60 seconds"),
        }
    }

    async fn region_for(&self, request: &RawRequest) -> String {
        if let Some(region) = &request.region {
            return region.clone();
        }
        match request.bucket() {
            Some(bucket) => self.store.bucket_region(bucket).await.unwrap_or_else(|_| self.default_region.clone()),
            None => self.default_region.clone(),
        }
    }

    async fn send(&self, request: &RawRequest) -> Result<CallResult, String> {
        let region = self.region_for(request).await;
        let base = match &self.endpoint {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let uri = format!("{base}{}", request.target);
        let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URL {uri}: {e}"))?;
        let host = match (parsed.host(), parsed.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => return Err(format!("no host in {uri}")),
        };
        let mut builder = http::Request::builder().method(request.method.as_str()).uri(parsed).header("host", host);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut http_request = builder
            .body(Full::new(bytes::Bytes::from(request.body.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        self.sign(&mut http_request, &request.body, &region).await?;
        let response = self.http.request(http_request).await.map_err(|e| format!("no answer from {base}: {e}"))?;
        let (head, body) = response.into_parts();
        if let Some(length) = head.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
            if length > MAX_RESPONSE_BYTES {
                return Ok(too_large(length));
            }
        }
        let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Ok(too_large(0)),
            Err(e) => return Err(format!("the answer was cut short: {e}")),
        };
        let mut out = format!("HTTP/1.1 {} {}\r\n", head.status.as_u16(), head.status.canonical_reason().unwrap_or(""));
        for (name, value) in &head.headers {
            out += &format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes()));
        }
        out += "\r\n";
        let mut response = out.into_bytes();
        response.extend_from_slice(&body);
        Ok(CallResult { response, succeeded: head.status.is_success() })
    }

    async fn sign(
        &self,
        request: &mut http::Request<Full<bytes::Bytes>>,
        body: &[u8],
        region: &str,
    ) -> Result<(), String> {
        let credentials =
            self.credentials.provide_credentials().await.map_err(|e| format!("no credentials to sign with: {e}"))?;
        let identity: Identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("cannot sign: {e}"))?
            .into();
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("cannot sign this request: {e}"))?;
        let (instructions, _signature) = sign(signable, &params).map_err(|e| format!("cannot sign: {e}"))?.into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

fn too_large(length: usize) -> CallResult {
    let size = if length > 0 { format!("{length} bytes") } else { "the body".to_string() };
    let cause = format!(
        "the response body ({size}) is larger than the control file's limit of {} MiB: ask for a part with a Range header",
        MAX_RESPONSE_BYTES / (1024 * 1024)
    );
    bucketfs_error(502, "Bad Gateway", &cause)
}

/// A response made by bucketfs itself rather than by S3.
pub fn bucketfs_error(status: u16, reason: &str, cause: &str) -> CallResult {
    let body = format!("{cause}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nx-bucketfs-error: true\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    CallResult { response: response.into_bytes(), succeeded: false }
}

/// The 400 answer to a request that could not be parsed, saying what is wrong.
pub fn bad_request(problem: &str) -> CallResult {
    bucketfs_error(400, "Bad Request", &format!("{problem}\n\n{EXPECTED_FORM}"))
}
