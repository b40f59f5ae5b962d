//! A real S3-protocol server on the local machine, for the demo and the tests: s3s-fs, which
//! stores each bucket as a directory and each object as a file under `root`, behind SigV4
//! authentication with one key pair. See the README for where it differs from AWS S3.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

struct DenyUploadsNamed(String);

impl DenyUploadsNamed {
    fn check(&self, key: &str) -> s3s::S3Result<()> {
        if key.rsplit('/').next().is_some_and(|name| name.starts_with(&self.0)) {
            Err(s3s::s3_error!(AccessDenied, "uploads of this name are denied"))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for DenyUploadsNamed {
    async fn put_object(&self, req: &mut s3s::S3Request<s3s::dto::PutObjectInput>) -> s3s::S3Result<()> {
        self.check(&req.input.key)
    }

    async fn create_multipart_upload(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CreateMultipartUploadInput>,
    ) -> s3s::S3Result<()> {
        self.check(&req.input.key)
    }

    async fn copy_object(&self, req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>) -> s3s::S3Result<()> {
        self.check(&req.input.key)
    }
}

/// Serves S3 on `listener` until the task is dropped or the runtime ends.
pub async fn serve(listener: TcpListener, config: LocalS3Config) -> std::io::Result<()> {
    std::fs::create_dir_all(&config.root)?;
    let fs = s3s_fs::FileSystem::new(&config.root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(config.access_key, config.secret_key));
    if let Some(prefix) = config.deny_uploads_named {
        builder.set_access(DenyUploadsNamed(prefix));
    }
    let service = builder.build();
    let connections = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("local S3 server: accept failed: {e}");
                continue;
            }
        };
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
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
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
