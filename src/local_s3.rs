//! A real S3-protocol server on the local machine, for the demo and the tests: s3s-fs, which
//! stores each bucket as a directory and each object as a file under `root`, behind SigV4
//! authentication with one key pair. See the README for where it differs from AWS S3.
//! [`ServerFaults`] makes it answer a share of requests with the errors S3 gives under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub struct LocalS3Config {
    pub root: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    /// Uploads of keys whose last component starts with this are denied (403 AccessDenied),
    /// to show how a mount reports a refused upload.
    pub deny_uploads_named: Option<String>,
    /// Requests answered with an error instead of being served.
    pub faults: Option<Arc<ServerFaults>>,
}

/// Fails about one request in `one_in`, chosen by a fixed pseudo-random sequence, alternately
/// with 503 SlowDown and 500 InternalError: the two answers S3 asks clients to retry.
#[derive(Debug)]
pub struct ServerFaults {
    one_in: u64,
    requests: AtomicU64,
    failed: AtomicU64,
}

impl ServerFaults {
    pub fn one_in(one_in: u64) -> Arc<Self> {
        Arc::new(ServerFaults { one_in: one_in.max(1), requests: AtomicU64::new(0), failed: AtomicU64::new(0) })
    }

    /// Requests failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Requests seen so far, failed or served.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn next_fault(&self) -> Option<http::Response<s3s::Body>> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if !mix(n).is_multiple_of(self.one_in) {
            return None;
        }
        let failed = self.failed.fetch_add(1, Ordering::Relaxed);
        let (status, code) = if failed.is_multiple_of(2) { (503, "SlowDown") } else { (500, "InternalError") };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>injected by the local server</Message></Error>"
        );
        let response = http::Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(s3s::Body::from(body))
            .expect("a fixed response is valid");
        Some(response)
    }
}

/// A bijective scramble of the request number, so that failures do not fall into a rhythm.
fn mix(mut n: u64) -> u64 {
    n = (n ^ (n >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    n = (n ^ (n >> 27)).wrapping_mul(0x94d049bb133111eb);
    n ^ (n >> 31)
}

/// The S3 service, with faults answered before it sees the request.
#[derive(Clone)]
struct FaultyService {
    inner: s3s::service::S3Service,
    faults: Option<Arc<ServerFaults>>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for FaultyService {
    type Response = http::Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(response) = self.faults.as_ref().and_then(|faults| faults.next_fault()) {
            return Box::pin(std::future::ready(Ok(response)));
        }
        let (method, target) = (request.method().clone(), request.uri().clone());
        let started = std::time::Instant::now();
        let answer = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = answer.await;
            if let Ok(response) = &response {
                tracing::debug!(%method, %target, status = response.status().as_u16(), took = ?started.elapsed(), "request");
            }
            response
        })
    }
}

/// Checks made before s3s-fs sees a request: uploads refused by name, and a key whose path on
/// disk is a directory. s3s-fs keeps `a/b` as the file `b` in the directory `a`, and leaves `a`
/// behind when `a/b` is deleted, so a HEAD or GET of `a` finds a directory and answers 500.
/// S3 has no object there and answers 404, which is what a mount's lookup must see.
struct LocalAccess {
    root: PathBuf,
    deny_uploads_named: Option<String>,
}

impl LocalAccess {
    fn check_upload(&self, key: &str) -> s3s::S3Result<()> {
        let name = key.rsplit('/').next().unwrap_or(key);
        if self.deny_uploads_named.as_ref().is_some_and(|prefix| name.starts_with(prefix.as_str())) {
            Err(s3s::s3_error!(AccessDenied, "uploads of this name are denied"))
        } else {
            Ok(())
        }
    }

    fn check_object(&self, bucket: &str, key: &str) -> s3s::S3Result<()> {
        if self.root.join(bucket).join(key.trim_matches('/')).is_dir() {
            Err(s3s::s3_error!(NoSuchKey))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for LocalAccess {
    async fn put_object(&self, req: &mut s3s::S3Request<s3s::dto::PutObjectInput>) -> s3s::S3Result<()> {
        self.check_upload(&req.input.key)
    }

    async fn create_multipart_upload(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CreateMultipartUploadInput>,
    ) -> s3s::S3Result<()> {
        self.check_upload(&req.input.key)
    }

    async fn copy_object(&self, req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>) -> s3s::S3Result<()> {
        self.check_upload(&req.input.key)
    }

    async fn head_object(&self, req: &mut s3s::S3Request<s3s::dto::HeadObjectInput>) -> s3s::S3Result<()> {
        self.check_object(&req.input.bucket, &req.input.key)
    }

    async fn get_object(&self, req: &mut s3s::S3Request<s3s::dto::GetObjectInput>) -> s3s::S3Result<()> {
        self.check_object(&req.input.bucket, &req.input.key)
    }
}

/// Serves S3 on `listener` until the task is dropped or the runtime ends.
pub async fn serve(listener: TcpListener, config: LocalS3Config) -> std::io::Result<()> {
    std::fs::create_dir_all(&config.root)?;
    let fs = s3s_fs::FileSystem::new(&config.root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(config.access_key, config.secret_key));
    builder.set_access(LocalAccess { root: config.root.clone(), deny_uploads_named: config.deny_uploads_named });
    let service = FaultyService { inner: builder.build(), faults: config.faults };
    let connections = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("local S3 server: accept failed: {e}");
                continue;
            }
        };
        // Without it a small body written after its headers waits for the client's delayed ACK
        // (about 40 ms per small GET), which AWS S3 does not make anyone wait.
        let _ = socket.set_nodelay(true);
        let connection = connections.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Binds 127.0.0.1:`port` (0 for any free port) and returns the listener with its address.
pub async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// An SDK client for a local server: static keys, path-style, no AWS configuration read, so
/// that neither the environment nor `~/.aws` can change what the demo and the tests do.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::retry::RetryConfig;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, ResponseChecksumValidation};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        // s3s-fs stores an object and its checksum in two steps; the tests compare contents
        // themselves, so a checksum caught between the steps must not fail the raw GET.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(10))
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "local"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Deterministic bytes that do not compress, for sample data and tests that compare contents.
pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
