//! `bucketfs-local-s3`: the local S3 server the demo runs against, optionally filled with
//! sample data. Keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Logs go to stderr;
//! `RUST_LOG=bucketfs=debug` shows every request with its status and time.

use std::io::Write;
use std::path::PathBuf;

use aws_sdk_s3::primitives::ByteStream;
use clap::Parser;

use bucketfs::local_s3::{bind, client, sample_bytes, serve, LocalS3Config, ServerFaults};

#[derive(Parser)]
#[command(about = "A local S3 server (s3s-fs) for trying bucketfs out")]
struct Args {
    /// Directory holding the buckets (one subdirectory each).
    #[arg(long)]
    root: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value = "0")]
    port: u16,
    /// Fill the buckets `demo` and `archive` with sample data first.
    #[arg(long)]
    seed_demo: bool,
    /// Answer about one request in N with 503 SlowDown or 500 InternalError, to watch a mount
    /// retry through them.
    #[arg(long, value_name = "N")]
    fail_one_in: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let access_key = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| "set AWS_ACCESS_KEY_ID")?;
    let secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| "set AWS_SECRET_ACCESS_KEY")?;
    let (listener, addr) = bind(args.port).await?;
    let endpoint = format!("http://{addr}");
    let config = LocalS3Config {
        root: args.root,
        access_key: access_key.clone(),
        secret_key: secret_key.clone(),
        deny_uploads_named: None,
        faults: args.fail_one_in.map(ServerFaults::one_in),
    };
    let server = tokio::spawn(serve(listener, config));
    if args.seed_demo {
        seed_demo(&client(&endpoint, &access_key, &secret_key)).await?;
    }
    println!("endpoint {endpoint}");
    std::io::stdout().flush()?;
    server.await??;
    Ok(())
}

async fn seed_demo(s3: &aws_sdk_s3::Client) -> Result<(), Box<dyn std::error::Error>> {
    for bucket in ["demo", "archive"] {
        s3.create_bucket().bucket(bucket).send().await?;
    }
    let mut objects: Vec<(String, Vec<u8>)> = vec![
        ("README.txt".into(), b"Welcome to the bucketfs demo. Every file here is an S3 object.\n".to_vec()),
        ("docs/reports/2024-q1.csv".into(), b"month,sales\njan,10\nfeb,12\nmar,15\n".to_vec()),
        ("docs/reports/2024-q2.csv".into(), b"month,sales\napr,11\nmay,19\njun,21\n".to_vec()),
        ("big/dataset.bin".into(), sample_bytes(120 * 1024 * 1024, 7)),
    ];
    for year in [2019, 2020] {
        for n in 1..=5 {
            objects.push((format!("photos/{year}/IMG_{n:04}.jpg"), sample_bytes(256 * 1024, year * 10 + n)));
        }
    }
    for n in 0..3000 {
        objects.push((format!("logs/app-{n:04}.log"), format!("log line {n}\n").into_bytes()));
    }
    let mut uploads = tokio::task::JoinSet::new();
    for (key, body) in objects {
        let s3 = s3.clone();
        uploads.spawn(async move { s3.put_object().bucket("demo").key(key).body(ByteStream::from(body)).send().await });
        while uploads.len() >= 16 {
            uploads.join_next().await.expect("a task is running")??;
        }
    }
    while let Some(done) = uploads.join_next().await {
        done??;
    }
    s3.put_object()
        .bucket("archive")
        .key("2018/old-notes.txt")
        .body(ByteStream::from_static(b"kept for later\n"))
        .send()
        .await?;
    Ok(())
}
