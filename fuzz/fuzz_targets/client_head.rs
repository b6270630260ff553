//! Arbitrary bytes as what a client sent, given to the HTTP/1.x fast path's
//! head parser (`h1_server`). Besides "never panics", it checks what keeps
//! the fast path from opening a smuggling gap next to hyper:
//! - a head it does not take leaves every byte where it was (hyper gets them all);
//! - a head it takes is exactly the head httparse finds (nothing before the
//!   next request is skipped or swallowed), carries no body framing
//!   (`Transfer-Encoding`, a `Content-Length` other than one `0`), no
//!   `Upgrade` and no `Expect`, and is HTTP/1.0 or 1.1;
//! - `Connection: close` on HTTP/1.1, or HTTP/1.0 without `keep-alive`,
//!   never keeps the connection.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn has_token(req: &http::Request<()>, token: &str) -> bool {
    req.headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Some((req, keep_alive)) = bulkhead_proxy::fast_path_parse_head(&mut buf) else {
        assert_eq!(&buf[..], data, "a head left to hyper must keep every byte");
        return;
    };
    let consumed = data.len() - buf.len();
    assert_eq!(&buf[..], &data[consumed..], "the bytes after the head are untouched");

    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut reference = httparse::Request::new(&mut slots);
    assert_eq!(
        reference.parse(data).ok(),
        Some(httparse::Status::Complete(consumed)),
        "the head is the one httparse finds"
    );
    assert_eq!(reference.method, Some(req.method().as_str()));
    assert_eq!(reference.headers.len(), req.headers().len(), "every header kept");

    let h = req.headers();
    assert!(!h.contains_key(http::header::TRANSFER_ENCODING));
    assert!(!h.contains_key(http::header::UPGRADE));
    assert!(!h.contains_key(http::header::EXPECT));
    let lengths: Vec<_> = h.get_all(http::header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.is_empty() || (lengths.len() == 1 && lengths[0] == "0"));
    assert_ne!(req.method(), http::Method::CONNECT);
    match req.version() {
        http::Version::HTTP_11 => assert_eq!(keep_alive, !has_token(&req, "close")),
        http::Version::HTTP_10 => assert_eq!(keep_alive, has_token(&req, "keep-alive")),
        v => panic!("version {v:?} on the fast path"),
    }
});
