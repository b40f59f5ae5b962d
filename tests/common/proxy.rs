//! A TCP proxy on 127.0.0.1 between a mount and its S3 server, to fail the network below the
//! SDK: connections dropped as they open, held open without an answer, or cut off after some
//! bytes of the server's answer. Changing the mode closes the connections already open, so a
//! kept-alive connection cannot carry on past a fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close each connection as soon as it opens.
    Drop,
    /// Accept and never answer.
    Stall,
    /// Forward, but close each connection after this many bytes from the server.
    CutAfter(u64),
}

pub struct Proxy {
    pub endpoint: String,
    mode: watch::Sender<Mode>,
    connections: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free port and forwards to `upstream` (`http://127.0.0.1:PORT`).
    pub fn to(upstream: &str) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (mode, watching) = watch::channel(Mode::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(handle(client, upstream.clone(), watching.clone()));
            }
        });
        Proxy { endpoint, mode, connections, runtime: Some(runtime) }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(mut client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    let limit = match current {
        Mode::Drop => return,
        Mode::Stall => {
            let _ = mode.changed().await;
            return;
        }
        Mode::Pass => u64::MAX,
        Mode::CutAfter(bytes) => bytes,
    };
    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let answers = async {
        let mut sent = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        while sent < limit {
            let room = (limit - sent).min(buffer.len() as u64) as usize;
            match server_read.read(&mut buffer[..room]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                }
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
        _ = mode.changed() => {}
    }
}
