//! HTTP/1.1 framing: requests parsed with `httparse` out of the connection's read buffer,
//! responses written into its send buffer. No I/O here (see `conn.rs`).

use std::io::Write as _;

/// Longest request head (request line + headers) accepted, in bytes; longer → 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header lines accepted in one request; more → 431.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (and ignored: every route is a GET), in bytes; larger → 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request, copied out of the read buffer so it can outlive the next read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target's path, still percent-encoded (the query string removed).
    pub path: String,
    /// Whether the connection stays open after the response (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl Request {
    /// A HEAD request: the response carries headers only.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What the start of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request occupying the first `len` bytes (head and body).
    Request { request: Request, len: usize },
    /// Not a whole request yet: read more.
    Partial,
    /// A request we will not serve; answer with this and close the connection.
    Reject(Response),
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => return too_large_head(),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return too_large_head(),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return too_large_head(),
        Err(e) => return Parsed::Reject(Response::text(400, format!("malformed request: {e}"))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(Response::text(400, "malformed request"));
    };
    let mut body_len: Option<usize> = None;
    let mut close = false;
    let mut keep_alive = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match (n, body_len) {
                (None, _) => return Parsed::Reject(Response::text(400, "bad Content-Length")),
                (Some(n), Some(prev)) if n != prev => {
                    return Parsed::Reject(Response::text(400, "conflicting Content-Length"))
                }
                (Some(n), _) => body_len = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Reject(Response::text(
                501,
                "Transfer-Encoding is not supported; send a Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Parsed::Reject(Response::text(413, "request body too large"));
    }
    if buf.len() < head_len + body_len {
        return Parsed::Partial;
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Parsed::Reject(Response::text(400, "the request target must be a path"));
    }
    Parsed::Request {
        request: Request {
            method: method.to_owned(),
            path: path.to_owned(),
            keep_alive: !close && (version >= 1 || keep_alive),
        },
        len: head_len + body_len,
    }
}

fn too_large_head() -> Parsed {
    Parsed::Reject(Response::text(
        431,
        format!("request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"),
    ))
}

/// A response before it is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Extra header lines, each `Name: value` (values sanitised by [`header_value`]).
    pub headers: Vec<String>,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    /// Adds a header line.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers
            .push(format!("{name}: {}", header_value(value)));
        self
    }

    /// Appends the framed response to `out`: status line, headers, and (unless `head_only`)
    /// the body. `close` adds `Connection: close`.
    pub fn write_to(&self, out: &mut Vec<u8>, head_only: bool, close: bool) {
        // Straight into `out` (no head string per response). Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// A header value safe to send: one line of printable ASCII (anything else becomes `?`),
/// at most 200 bytes.
pub fn header_value(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The reason phrase of the status codes we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Parsed::Request { request, len } => (request, len),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn rejected(buf: &[u8]) -> u16 {
        match parse(buf) {
            Parsed::Reject(r) => r.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_get_and_strips_the_query() {
        let buf = b"GET /add/41?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n";
        let (r, len) = request(buf);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/add/41"));
        assert!(r.keep_alive);
        assert_eq!(&buf[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&buf[len..]), Parsed::Partial);
    }

    #[test]
    fn connection_header_decides_keep_alive() {
        let (r, _) = request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = request(b"GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn a_body_is_skipped_whole() {
        let buf = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        let (r, len) = request(buf);
        assert_eq!(r.method, "POST");
        assert_eq!(&buf[len..], b"GET");
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Parsed::Partial
        );
    }

    #[test]
    fn hostile_requests_are_rejected() {
        assert_eq!(rejected(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(rejected(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(rejected(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            rejected(b"POST / HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n"),
            413
        );
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(rejected(&many), 431);

        let mut long = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(rejected(&long), 431, "partial but already too long");
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(rejected(&long), 431, "complete but too long");
    }

    #[test]
    fn responses_are_framed() {
        let mut out = Vec::new();
        Response::text(200, "42").write_to(&mut out, false, false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n42"
        );
        out.clear();
        Response::text(500, "42P01")
            .with_header("X-Pg-Message", "bad\r\nInjected: yes")
            .write_to(&mut out, true, true);
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("X-Pg-Message: bad??Injected: yes\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
    }
}
