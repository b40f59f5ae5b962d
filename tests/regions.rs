//! Buckets in several regions behind one mount. The local servers have one region, so these
//! tests run against a stand-in on 127.0.0.1 that answers like AWS does when a request is
//! signed for the wrong region: a 301 with `x-amz-bucket-region`, or a 400
//! AuthorizationHeaderMalformed whose body names the expected region. It checks only the
//! region in each request's credential scope, not the signature.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{names, Mount};

/// bucket → (region, whether HEAD of a wrong region answers 301 with the region header).
const BUCKETS: &[(&str, &str, bool)] =
    &[("euro-data", "eu-west-1", true), ("asia-data", "ap-southeast-1", false), ("home-data", "us-east-1", true)];

struct StandIn {
    endpoint: String,
    /// (bucket, region the request was signed for, whether that was the bucket's region).
    seen: Arc<Mutex<Vec<(String, String, bool)>>>,
}

impl StandIn {
    fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, log));
            }
        });
        StandIn { endpoint, seen }
    }

    fn requests_for(&self, bucket: &str) -> Vec<(String, bool)> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(b, _, _)| b == bucket).map(|(_, region, right)| (region.clone(), *right)).collect()
    }
}

fn serve(stream: TcpStream, log: Arc<Mutex<Vec<(String, String, bool)>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let signed = headers
            .get("authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').nth(2))
            .unwrap_or("")
            .to_string();
        let response = answer(method, target, &signed, &headers, &log);
        writer.write_all(&response).unwrap();
    }
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", if head { 0 } else { body.len() });
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

fn answer(
    method: &str,
    target: &str,
    signed: &str,
    headers: &HashMap<String, String>,
    log: &Mutex<Vec<(String, String, bool)>>,
) -> Vec<u8> {
    let head = method == "HEAD";
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let bucket = segments.next().unwrap_or("");
    let key = segments.next().unwrap_or("");
    if bucket.is_empty() {
        let list: String = BUCKETS
            .iter()
            .map(|(b, _, _)| {
                format!("<Bucket><Name>{b}</Name><CreationDate>2024-01-01T00:00:00.000Z</CreationDate></Bucket>")
            })
            .collect();
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListAllMyBucketsResult><Owner><ID>o</ID></Owner><Buckets>{list}</Buckets></ListAllMyBucketsResult>");
        return response("200 OK", &[("Content-Type", "application/xml".into())], xml.as_bytes(), head);
    }
    let Some(&(_, region, redirects)) = BUCKETS.iter().find(|(b, _, _)| *b == bucket) else {
        let xml = "<Error><Code>NoSuchBucket</Code><Message>none</Message></Error>";
        return response("404 Not Found", &[], xml.as_bytes(), head);
    };
    let right = signed == region;
    log.lock().unwrap().push((bucket.to_string(), signed.to_string(), right));
    if !right {
        if head && redirects {
            return response("301 Moved Permanently", &[("x-amz-bucket-region", region.to_string())], b"", true);
        }
        let xml = format!(
            "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region '{signed}' is wrong; expecting '{region}'</Message><Region>{region}</Region></Error>"
        );
        return response("400 Bad Request", &[("Content-Type", "application/xml".into())], xml.as_bytes(), head);
    }
    let region_header = ("x-amz-bucket-region", region.to_string());
    if key.is_empty() && query == "location" {
        let constraint = if region == "us-east-1" { String::new() } else { region.to_string() };
        let xml = format!("<LocationConstraint>{constraint}</LocationConstraint>");
        return response("200 OK", &[region_header], xml.as_bytes(), head);
    }
    if key.is_empty() && query.contains("list-type=2") {
        let prefix = query.split('&').find_map(|p| p.strip_prefix("prefix=")).unwrap_or("");
        let contents = if prefix.is_empty() {
            "<Contents><Key>hello.txt</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>\"e\"</ETag><Size>SIZE</Size></Contents>"
                .replace("SIZE", &greeting(region).len().to_string())
        } else {
            String::new()
        };
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>{bucket}</Name><Prefix>{prefix}</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>");
        return response("200 OK", &[("Content-Type", "application/xml".into())], xml.as_bytes(), head);
    }
    if key.is_empty() {
        return response("200 OK", &[region_header], b"", head);
    }
    if key != "hello.txt" {
        return response("404 Not Found", &[], b"<Error><Code>NoSuchKey</Code></Error>", head);
    }
    let body = greeting(region);
    let etag = ("ETag", "\"e\"".to_string());
    let modified = ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT".to_string());
    match headers.get("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap();
            let end = end.parse::<usize>().unwrap().min(body.len() - 1);
            let range = ("Content-Range", format!("bytes {start}-{end}/{}", body.len()));
            response("206 Partial Content", &[etag, modified, range], &body.as_bytes()[start..=end], head)
        }
        None => {
            let mut out = response("200 OK", &[etag, modified], body.as_bytes(), false);
            if head {
                let text = String::from_utf8(out).unwrap();
                let (head_part, _) = text.split_once("\r\n\r\n").unwrap();
                out = format!("{}\r\n\r\n", head_part).into_bytes();
            }
            out
        }
    }
}

fn greeting(region: &str) -> String {
    format!("hello from {region}\n")
}

#[test]
fn one_account_mount_reaches_buckets_in_every_region() {
    let stand_in = StandIn::start();
    let mount = Mount::at(&stand_in.endpoint, ("key", "secret"), "s3://", &[]).expect("mount");
    assert_eq!(names(&mount.path), ["asia-data", "euro-data", "home-data"]);
    for (bucket, region, _) in BUCKETS {
        assert_eq!(names(&mount.join(bucket)), ["hello.txt"], "{bucket}");
        let text = std::fs::read_to_string(mount.join(bucket).join("hello.txt")).unwrap();
        assert_eq!(text, greeting(region), "{bucket}");
    }
    // Each bucket costs at most its discovery (HEAD, and GetBucketLocation where HEAD says
    // nothing) in the wrong region; everything after is signed for the bucket's own region.
    for (bucket, _, redirects) in BUCKETS {
        let requests = stand_in.requests_for(bucket);
        let wrong = requests.iter().filter(|(_, right)| !right).count();
        assert!(wrong <= if *redirects { 1 } else { 2 }, "{bucket}: {requests:?}");
        assert!(requests.last().is_some_and(|(_, right)| *right), "{bucket}: {requests:?}");
    }
}

#[test]
fn a_bucket_mount_finds_its_region_without_region_option() {
    let stand_in = StandIn::start();
    for (bucket, region, _) in BUCKETS {
        let mount = Mount::at(&stand_in.endpoint, ("key", "secret"), &format!("s3://{bucket}"), &[]).expect("mount");
        assert_eq!(std::fs::read_to_string(mount.join("hello.txt")).unwrap(), greeting(region));
    }
}

#[test]
fn the_control_file_signs_for_the_bucket_region_or_the_one_named() {
    let stand_in = StandIn::start();
    let mount = Mount::at(&stand_in.endpoint, ("key", "secret"), "s3://", &[]).expect("mount");
    let call = |request: &str| {
        let control = mount.join(".s3api");
        std::fs::write(&control, request).unwrap();
        std::fs::read_to_string(&control).unwrap()
    };
    let answer = call("GET /euro-data/hello.txt\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(&greeting("eu-west-1")), "{answer}");
    let answer = call("GET /euro-data/hello.txt\nx-bucketfs-region: us-east-1\n");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("expecting 'eu-west-1'"), "{answer}");
    let answer = call("GET /asia-data/hello.txt\nx-bucketfs-region: ap-southeast-1\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
