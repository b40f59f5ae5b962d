/*!
The control file `MOUNTPOINT/.s3api`: any S3 call, written as an HTTP request, signed with the
mount's credentials and answered in the same file. One file per command in the mini-redis
manner: `request.rs` parses, `call.rs` signs, sends and formats the answer, and this file owns
the sessions.

Each open handle is a session. What it writes is the request; the first read after writing
sends it, and reads then return the response from that read's offset on, so one descriptor
opened read-write works whatever its position (`exec 3<>`, Python `r+b`). A handle that wrote
and closed without reading sends the request at close, and its response is kept as the
caller's last one: a handle that only reads gets that, so `printf ... > .s3api; cat .s3api`
works too. Writing again after a response starts a new request. Sessions are private to their
handle, so concurrent users never see each other's answers.

The file is reachable by name at the mount's root and never listed. It is 0600 and belongs to
the mounting user; no one else may open it, since it acts with the mount's credentials.
*/

mod call;
mod request;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

pub use call::{RawApi, MAX_RESPONSE_BYTES};
pub use request::{parse, RawRequest, MAX_REQUEST_BYTES};

use crate::cli::ApiArgs;
use crate::error::{FsError, FsResult};
use crate::inode::InodeTable;
use crate::s3::{SdkStore, SdkStoreOptions};

pub const CONTROL_NAME: &str = ".s3api";
/// An inode number the table never hands out.
pub const CONTROL_INO: u64 = 1 << 62;

pub struct ControlFile {
    api: RawApi,
    owner: u32,
    /// Each user's last response, for handles that only read.
    last_response: Mutex<HashMap<u32, Arc<Vec<u8>>>>,
}

pub struct Session {
    uid: u32,
    /// What was written since the last response, by file offset: the kernel may deliver the
    /// pieces of one large write out of order.
    written: BTreeMap<u64, Vec<u8>>,
    response: Option<Arc<Vec<u8>>>,
    /// The file offset at which the response starts: that of the first read after writing
    /// (which may come after a close of a duplicate descriptor sent the request), else 0.
    response_base: Option<u64>,
    /// The response has been read: the next write starts a new request. Until then, a write
    /// continues the request, since the response came from the close of a copy of the
    /// descriptor (a forked child exiting, or closing it at exec) while the writer went on.
    response_read: bool,
}

impl ControlFile {
    pub fn new(api: RawApi, owner: u32) -> Self {
        ControlFile { api, owner, last_response: Mutex::new(HashMap::new()) }
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    pub fn open(&self, uid: u32) -> FsResult<Session> {
        if uid != self.owner {
            tracing::warn!(uid, "refused the control file to a user other than the mount's owner");
            return Err(FsError::AccessDenied);
        }
        Ok(Session { uid, written: BTreeMap::new(), response: None, response_base: None, response_read: false })
    }

    pub fn write(&self, session: &mut Session, offset: u64, data: &[u8]) -> FsResult<u32> {
        if session.response.is_some() {
            if session.response_read {
                session.written.clear();
            }
            session.response = None;
            session.response_base = None;
            session.response_read = false;
        }
        let start = session.written.keys().next().map_or(offset, |first| offset.min(*first));
        let end = session.written.iter().next_back().map_or(0, |(at, piece)| at + piece.len() as u64);
        let end = end.max(offset + data.len() as u64);
        if end - start > MAX_REQUEST_BYTES as u64 {
            return Err(FsError::TooLarge);
        }
        session.written.insert(offset, data.to_vec());
        Ok(data.len() as u32)
    }

    pub async fn read(&self, session: &mut Session, offset: u64, size: u32, inodes: &InodeTable) -> Vec<u8> {
        if session.response.is_none() {
            session.response = Some(if session.written.is_empty() {
                lock(&self.last_response).get(&session.uid).cloned().unwrap_or_default()
            } else {
                self.send(session, inodes).await
            });
        }
        session.response_read = true;
        let base = *session.response_base.get_or_insert(if session.written.is_empty() { 0 } else { offset });
        let response = session.response.as_deref().map_or(&[][..], Vec::as_slice);
        let start = (offset.saturating_sub(base) as usize).min(response.len());
        let end = start.saturating_add(size as usize).min(response.len());
        response[start..end].to_vec()
    }

    /// At close: a request written and never read is sent now, for a later reader.
    pub async fn flush(&self, session: &mut Session, inodes: &InodeTable) {
        if session.response.is_none() && !session.written.is_empty() {
            session.response = Some(self.send(session, inodes).await);
        }
    }

    async fn send(&self, session: &Session, inodes: &InodeTable) -> Arc<Vec<u8>> {
        let written: Vec<u8> = session.written.values().flatten().copied().collect();
        let result = match parse(&written) {
            Ok(request) => {
                let result = self.api.call(&request).await;
                tracing::info!(method = %request.method, target = %request.target, ok = result.succeeded, "control file call");
                if result.succeeded && !matches!(request.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
                    if let Some(bucket) = request.bucket() {
                        inodes.invalidate_bucket(bucket);
                    }
                }
                result
            }
            Err(problem) => call::bad_request(&problem),
        };
        let response = Arc::new(result.response);
        lock(&self.last_response).insert(session.uid, response.clone());
        response
    }
}

/// `bucketfs api`: the control file's call without a mount; prints the response.
pub fn run_api_command(args: ApiArgs) -> ExitCode {
    let body = match read_body(args.data.as_deref()) {
        Ok(body) => body,
        Err(message) => {
            eprintln!("bucketfs: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut written = format!("{} {}\n", args.method, args.path);
    for header in &args.headers {
        written += &format!("{header}\n");
    }
    if let Some(region) = &args.region {
        written += &format!("{}: {region}\n", request::REGION_HEADER);
    }
    written += "\n";
    let mut written = written.into_bytes();
    written.extend_from_slice(&body);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bucketfs: cannot start the I/O runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let options = SdkStoreOptions {
            endpoint_url: args.endpoint_url.clone(),
            region: None,
            profile: args.profile.clone(),
            force_path_style: true,
            request_timeout: None,
        };
        let store = Arc::new(SdkStore::new(&options).await);
        let credentials = store.credentials_provider().ok_or("no AWS credentials provider is configured")?;
        let api =
            RawApi::new(credentials, args.endpoint_url.clone(), store.default_region().to_string(), store.clone())?;
        Ok::<_, String>(match parse(&written) {
            Ok(request) => api.call(&request).await,
            Err(problem) => call::bad_request(&problem),
        })
    });
    match result {
        Ok(result) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&result.response).and_then(|_| stdout.flush());
            if result.succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("bucketfs: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read_body(data: Option<&str>) -> Result<Vec<u8>, String> {
    match data {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(body)
        }
        Some(path) => {
            let path = path.strip_prefix('@').ok_or("write --data @FILE, or --data - for standard input")?;
            std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
