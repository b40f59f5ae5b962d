//! Parsing what a user writes to the control file into a request, with httparse. A request
//! that cannot be parsed is never sent: the error text becomes the body of a 400 response.

/// Written requests larger than this (headers and body) are refused with EFBIG.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// The pseudo-header that picks the region; it is removed before sending.
pub const REGION_HEADER: &str = "x-bucketfs-region";

/// Headers bucketfs adds itself when signing; a user who writes them gets a 400.
const SIGNED_HEADERS: &[&str] =
    &["host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"];

pub const EXPECTED_FORM: &str = "Expected:
METHOD PATH[?QUERY] [HTTP/1.1]
Header-Name: value          (zero or more)
x-bucketfs-region: REGION   (optional)
<blank line>
body                        (optional)

For example:
GET /my-bucket?list-type=2&prefix=photos/ HTTP/1.1
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    pub method: String,
    /// The path and query exactly as written, starting with `/`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub region: Option<String>,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The bucket the path names, if any: `/bucket/key` → `bucket`.
    pub fn bucket(&self) -> Option<&str> {
        let path = self.target.split('?').next().unwrap_or("");
        path.trim_start_matches('/').split('/').next().filter(|b| !b.is_empty())
    }

    /// The key the path names, if any: `/bucket/a/b` → `a/b`.
    pub fn key(&self) -> Option<&str> {
        let path = self.target.split('?').next().unwrap_or("");
        path.trim_start_matches('/').split_once('/').map(|(_, key)| key).filter(|k| !k.is_empty())
    }
}

/// Parses a request written to the control file: request line with or without a version,
/// LF or CRLF line ends, headers, a blank line, and an optional body.
pub fn parse(written: &[u8]) -> Result<RawRequest, String> {
    let text_end = written.iter().position(|&b| b == b'\n').ok_or("the request line is not finished by a line end")?;
    let first_line = std::str::from_utf8(&written[..text_end]).map_err(|_| "the request line is not UTF-8")?;
    let first_line = first_line.trim_end_matches('\r');
    let words: Vec<&str> = first_line.split(' ').filter(|w| !w.is_empty()).collect();
    let normalised_line = match words.as_slice() {
        [method, target] => format!("{method} {target} HTTP/1.1"),
        [method, target, "HTTP/1.1"] => format!("{method} {target} HTTP/1.1"),
        [_, _, version] => return Err(format!("unsupported version '{version}': write HTTP/1.1 or nothing")),
        _ => return Err(format!("the request line '{first_line}' is not METHOD PATH [HTTP/1.1]")),
    };
    let mut normalised = normalised_line.into_bytes();
    normalised.extend_from_slice(b"\r\n");
    let rest = &written[text_end + 1..];
    normalised.extend_from_slice(rest);
    if !rest.is_empty() && !contains_blank_line(&normalised) {
        normalised.extend_from_slice(b"\r\n");
    }
    if rest.is_empty() {
        normalised.extend_from_slice(b"\r\n");
    }
    let mut header_slots = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut header_slots);
    let head_len = match parsed.parse(&normalised) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err("the headers are not finished by a blank line".into()),
        Err(e) => return Err(format!("cannot parse the request: {e}")),
    };
    let method = parsed.method.unwrap_or_default().to_string();
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("'{method}' is not a method such as GET, PUT, HEAD, POST or DELETE"));
    }
    let target = parsed.path.unwrap_or_default().to_string();
    if !target.starts_with('/') {
        return Err(format!("the path '{target}' must start with '/'"));
    }
    let mut headers = Vec::new();
    let mut region = None;
    for header in parsed.headers.iter() {
        let value =
            std::str::from_utf8(header.value).map_err(|_| format!("the value of {} is not UTF-8", header.name))?;
        let lower = header.name.to_ascii_lowercase();
        if lower == REGION_HEADER {
            region = Some(value.trim().to_string()).filter(|r| !r.is_empty());
        } else if SIGNED_HEADERS.contains(&lower.as_str()) {
            return Err(format!("leave out {}: bucketfs adds it when signing", header.name));
        } else {
            headers.push((header.name.to_string(), value.trim().to_string()));
        }
    }
    let body = normalised[head_len..].to_vec();
    let declared = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.clone());
    match declared {
        Some(length) if length.parse::<usize>().ok() != Some(body.len()) => {
            return Err(format!("Content-Length says {length} but the body has {} bytes", body.len()))
        }
        Some(_) => {}
        None if !body.is_empty() || matches!(method.as_str(), "PUT" | "POST") => {
            headers.push(("Content-Length".into(), body.len().to_string()))
        }
        None => {}
    }
    Ok(RawRequest { method, target, headers, region, body })
}

fn contains_blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_with_and_without_a_version() {
        let request = parse(b"GET /\n").unwrap();
        assert_eq!((request.method.as_str(), request.target.as_str()), ("GET", "/"));
        let request = parse(b"GET /b?location HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(request.target, "/b?location");
        assert_eq!(request.bucket(), Some("b"));
        assert_eq!(request.key(), None);
        assert!(parse(b"GET / HTTP/2\n").unwrap_err().contains("HTTP/1.1"));
        assert!(parse(b"GET\n").unwrap_err().contains("METHOD PATH"));
        assert!(parse(b"get /\n").unwrap_err().contains("method"));
        assert!(parse(b"GET nopath\n").unwrap_err().contains("start with '/'"));
        assert!(parse(b"GET /").unwrap_err().contains("line end"));
    }

    #[test]
    fn headers_region_and_body() {
        let written =
            b"PUT /b/dir/k.txt\nContent-Type: text/plain\nx-bucketfs-region: eu-west-1\nx-amz-meta-a: 1\n\nhello";
        let request = parse(written).unwrap();
        assert_eq!(request.region.as_deref(), Some("eu-west-1"));
        assert_eq!(request.key(), Some("dir/k.txt"));
        assert_eq!(request.body, b"hello");
        assert!(request.headers.contains(&("Content-Length".into(), "5".into())));
        assert!(!request.headers.iter().any(|(n, _)| n == "x-bucketfs-region"));
        let crlf = parse(b"PUT /b/k HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(crlf.body, b"hi");
        assert!(parse(b"PUT /b/k\nContent-Length: 9\n\nhi").unwrap_err().contains("Content-Length"));
        assert!(parse(b"GET /\nAuthorization: x\n\n").unwrap_err().contains("bucketfs adds it"));
        assert!(parse(b"GET /\nbad header line\n\n").is_err());
        assert_eq!(
            parse(b"GET /b\nRange: bytes=0-9\n").unwrap().headers,
            [("Range".to_string(), "bytes=0-9".to_string())]
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x853c49e6748fea9bu64;
        let seeds: [&[u8]; 3] =
            [b"GET /b/k HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n", b"PUT /b/k\nA: b\n\nbody", b"DELETE /b?x=1&y\n"];
        for round in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(state % 6) {
                let at = (state as usize >> 8) % (input.len() + 1);
                match (state >> 32) % 3 {
                    0 => input.insert(at, (state >> 40) as u8),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ if at < input.len() => input[at] = (state >> 48) as u8,
                    _ => {}
                }
                state = state.rotate_left(7);
            }
            if let Ok(request) = parse(&input) {
                assert!(request.target.starts_with('/'));
            }
        }
    }
}
