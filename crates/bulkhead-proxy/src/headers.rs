//! Headers at trust boundaries (DESIGN §2 step 9): hop-by-hop headers are
//! stripped both ways (RFC 9110 §7.6.1), forwarding headers are replaced
//! (untrusted zones) or appended to (trusted zones), the zone's
//! `strip_headers` are dropped, and the group's `identity_header` is set.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, FORWARDED, HOST,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use std::net::SocketAddr;
use std::sync::LazyLock;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers, never forwarded.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers the proxy sets itself; `Connection` may never remove them.
static PROXY_SET: [HeaderName; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    FORWARDED,
    X_REAL_IP,
    X_REQUEST_ID,
    HOST,
];

/// Remove hop-by-hop headers and those named in `Connection`. When
/// `keep_upgrade` is set (a WebSocket handshake), `Connection: upgrade` and
/// `Upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none, or only `Connection`.
    let found = present(headers, &HOP_BY_HOP, *HOP_BY_HOP_LENGTHS);
    if found == 0 {
        return;
    }
    let mut named: smallvec::SmallVec<[HeaderName; 4]> = smallvec::SmallVec::new();
    for value in headers.get_all(CONNECTION) {
        named.extend(named_by_connection(value.as_bytes()));
    }
    let upgrade = if keep_upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    for name in named {
        headers.remove(name);
    }
    remove_present(headers, &HOP_BY_HOP, found);
    if let Some(u) = upgrade {
        headers.insert(UPGRADE, u);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Which of `names` (at most 16) `headers` carries, as a bitmask: one pass
/// over the map's names, so that only those present are looked up to be
/// removed ([`remove_present`]). `lengths` is `names`' [`length_mask`]: a
/// field whose name has none of their lengths (most of them) is passed over
/// without comparing it with each.
fn present(headers: &HeaderMap, names: &[HeaderName], lengths: u64) -> u16 {
    debug_assert!(names.len() <= 16);
    debug_assert_eq!(lengths, length_mask(names));
    let mut present = 0u16;
    for name in headers.keys() {
        if lengths & length_bit(name) == 0 {
            continue;
        }
        if let Some(i) = names.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    present
}

/// The lengths of `names` as a bitmask (see [`length_bit`]).
fn length_mask(names: &[HeaderName]) -> u64 {
    names.iter().fold(0, |mask, name| mask | length_bit(name))
}

/// Bit `n` for a name `n` bytes long (63 for any longer).
fn length_bit(name: &HeaderName) -> u64 {
    1 << name.as_str().len().min(63)
}

static HOP_BY_HOP_LENGTHS: LazyLock<u64> = LazyLock::new(|| length_mask(&HOP_BY_HOP));
static FORWARDING_LENGTHS: LazyLock<u64> = LazyLock::new(|| length_mask(&FORWARDING));

/// Remove the `names` that [`present`] found.
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], present: u16) {
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// A client's address in the forms the forwarding headers use, built
/// once per connection.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    /// `ip:port`, for logs.
    pub text: crate::access_log::Name,
    /// The IP alone.
    pub ip: String,
    /// The IP as a header value.
    ip_value: Option<HeaderValue>,
    /// The `for=` node of `Forwarded` (RFC 7239: IPv6 quoted in brackets).
    node: String,
}

impl ClientAddr {
    /// The forms of `addr`.
    pub fn of(addr: SocketAddr) -> ClientAddr {
        let ip = addr.ip().to_string();
        let node = match addr {
            SocketAddr::V6(_) => format!("\"[{ip}]\""),
            SocketAddr::V4(_) => ip.clone(),
        };
        ClientAddr {
            text: addr.to_string().into(),
            ip_value: value(&ip),
            ip,
            node,
        }
    }
}

/// Does a comma-separated header (`Connection`, say) list `token`
/// (ASCII case-insensitively)?
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| lists_token(v.as_bytes(), token.as_bytes()))
}

/// Does one comma-separated value list `token` (ASCII case-insensitively)?
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// [`HOP_BY_HOP`] as bytes (`HeaderName::as_str` is a lookup of its own).
const HOP_BY_HOP_BYTES: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Is `name` a hop-by-hop field (ASCII case-insensitively)?
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP_BYTES
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The fields a `Connection` value names for removal beyond the hop-by-hop
/// ones (RFC 9110 §7.6.1); never the proxy's own headers, and `close` is
/// an option, not a name.
pub(crate) fn named_by_connection(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(token))
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .filter(|name| !PROXY_SET.contains(name))
}

/// The `Content-Length` a message declares (RFC 9110 §8.6): `None` without
/// one; `Err` when a value is not all digits (`+12`, `-1`, empty) or the
/// values differ. A list of one length (`12, 12`, or the header repeated)
/// is that length.
pub fn content_length(headers: &HeaderMap) -> Option<Result<u64, &'static str>> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let Some(n) = decimal(part.trim_ascii()) else {
                return Some(Err("invalid Content-Length"));
            };
            if length.is_some_and(|m| m != n) {
                return Some(Err("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    length.map(Ok)
}

/// A non-empty run of ASCII digits as a number (`None` on anything else,
/// or when it does not fit).
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Is `chunked` the final transfer coding (RFC 9112 §6.3: the message is
/// then chunked; any other final coding leaves it unframed)?
pub fn chunked_is_final(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// What the proxy knows about the hop it adds.
pub struct Hop<'a> {
    /// The client's address.
    pub client: &'a ClientAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The request's Host (as received).
    pub host: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The listener's zone is trusted.
    pub trusted: bool,
}

/// Set the forwarding headers of DESIGN §2 step 9, and `Host`.
pub fn set_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let ip = &hop.client.ip;
    // Exactly sized: the header value then takes the string's allocation as it is.
    let kept = |c: &u8| !matches!(c, b'"' | b'\\');
    let host_len = hop.host.bytes().filter(kept).count();
    let mut forwarded = String::with_capacity(
        "for=;proto=;host=\"\"".len() + hop.client.node.len() + hop.proto.len() + host_len,
    );
    forwarded.push_str("for=");
    forwarded.push_str(&hop.client.node);
    forwarded.push_str(";proto=");
    forwarded.push_str(hop.proto);
    forwarded.push_str(";host=\"");
    for part in hop.host.split(['"', '\\']) {
        forwarded.push_str(part);
    }
    forwarded.push('"');
    let ip_value = hop.client.ip_value.clone();
    // Usually the one Host header already says it: that value is shared, not copied.
    let same = one_host_saying(headers, hop.host).cloned();
    let host_unchanged = same.is_some();
    let host = same.or_else(|| value(hop.host));
    // Room for what is added below: one growth of the map at most.
    headers.reserve(7);
    if hop.trusted {
        append(headers, X_FORWARDED_FOR, ip);
        append(headers, FORWARDED, &forwarded);
        set_if_absent(
            headers,
            X_FORWARDED_PROTO,
            Some(HeaderValue::from_static(hop.proto)),
        );
        set_if_absent(headers, X_FORWARDED_HOST, host.clone());
        set_if_absent(headers, X_REAL_IP, ip_value);
        set_if_absent(headers, X_REQUEST_ID, value(hop.request_id));
    } else {
        // Every forwarding header is replaced (or removed when its value
        // cannot be written): nothing the client sent survives.
        headers.remove(X_FORWARDED_PORT);
        replace(headers, X_FORWARDED_FOR, ip_value.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
        replace(headers, X_FORWARDED_HOST, host.clone());
        replace(headers, X_REAL_IP, ip_value);
        replace(headers, FORWARDED, owned_value(forwarded));
        replace(headers, X_REQUEST_ID, value(hop.request_id));
    }
    if !host_unchanged {
        put(headers, HOST, host);
    }
}

/// [`set_forwarding`] for an untrusted hop to an HTTP/1.1 target, with the
/// proxy's forwarding headers written as `name: value` lines for the
/// request head (after the map's fields) instead of inserted: six inserts
/// of custom names, each hashed, and the values built for them, were ~2.5k
/// instructions per request. The forwarding headers the client sent are
/// removed from `headers`; `Host` is set there as `set_forwarding` sets
/// it. The lines are those `set_forwarding` would insert, value for value,
/// and one is left out where it leaves the header out (a value that
/// cannot be written).
pub fn untrusted_forwarding_lines(headers: &mut HeaderMap, hop: &Hop<'_>) -> Vec<u8> {
    use crate::h1_upstream::push_line;
    debug_assert!(!hop.trusted, "a trusted hop keeps the client's headers");
    // Usually none are present.
    let found = present(headers, &FORWARDING, *FORWARDING_LENGTHS);
    remove_present(headers, &FORWARDING, found);
    let host = hop.host.as_bytes();
    let host_unchanged = one_host_saying(headers, hop.host).is_some();
    let node = hop.client.node.as_bytes();
    let mut out = Vec::with_capacity(
        160 + 2 * (hop.client.ip.len() + host.len()) + node.len() + hop.request_id.len(),
    );
    let ip = hop.client.ip_value.as_ref().map(HeaderValue::as_bytes);
    if let Some(ip) = ip {
        push_line(&mut out, b"x-forwarded-for: ", ip);
    }
    push_line(&mut out, b"x-forwarded-proto: ", hop.proto.as_bytes());
    // The rest of `Forwarded` is an address and a scheme: whether it can
    // be written is whether the host can.
    let host_writable = writable(host);
    if host_unchanged || host_writable {
        push_line(&mut out, b"x-forwarded-host: ", host);
    }
    if let Some(ip) = ip {
        push_line(&mut out, b"x-real-ip: ", ip);
    }
    if host_writable {
        // The element `set_forwarding` builds as a string, written as bytes
        // here: built from shared `str` pieces (`str::split` on two chars)
        // it cost ~460 instructions more per request.
        out.extend_from_slice(b"forwarded: for=");
        out.extend_from_slice(node);
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(hop.proto.as_bytes());
        out.extend_from_slice(b";host=\"");
        if host.iter().any(|&b| b == b'"' || b == b'\\') {
            out.extend(host.iter().filter(|&&b| b != b'"' && b != b'\\'));
        } else {
            out.extend_from_slice(host);
        }
        out.extend_from_slice(b"\"\r\n");
    }
    if writable(hop.request_id.as_bytes()) {
        push_line(&mut out, b"x-request-id: ", hop.request_id.as_bytes());
    }
    if !host_unchanged {
        put(headers, HOST, value(hop.host));
    }
    out
}

/// The request's one `Host` value, when it says `host` (byte for byte).
fn one_host_saying<'h>(headers: &'h HeaderMap, host: &str) -> Option<&'h HeaderValue> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(v), None) if v.as_bytes() == host.as_bytes() => Some(v),
        _ => None,
    }
}

/// Can `value` be a header value (as `HeaderValue` checks: no control
/// characters but tab)?
fn writable(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= b' ' && b != 0x7f) || b == b'\t')
}

/// Append `name: value` lines (CRLF-ended, as
/// [`untrusted_forwarding_lines`] writes them) to `headers`.
pub(crate) fn append_lines(headers: &mut HeaderMap, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
}

/// The forwarding headers a client may send, all replaced on an untrusted hop.
static FORWARDING: [HeaderName; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_REAL_IP,
    FORWARDED,
    X_REQUEST_ID,
];

/// The request id a trusted client sent, if any (it is kept on trusted zones).
pub fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Set a header, replacing every existing value. Invalid values are skipped.
pub fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(n, v);
    }
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn owned_value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    if let Some(v) = value {
        headers.insert(name, v);
    }
}

fn replace(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

fn set_if_absent(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    if !headers.contains_key(&name) {
        put(headers, name, value);
    }
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = {
        let existing: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            value.to_string()
        } else {
            format!("{}, {value}", existing.join(", "))
        }
    };
    put(headers, name, HeaderValue::from_str(&joined).ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientAddr {
        ClientAddr::of("203.0.113.9:5555".parse().expect("addr"))
    }

    #[test]
    fn the_hop_by_hop_lists_agree() {
        let names: Vec<&[u8]> = HOP_BY_HOP.iter().map(|h| h.as_str().as_bytes()).collect();
        assert_eq!(names, HOP_BY_HOP_BYTES);
        assert!(is_hop_by_hop(b"Keep-Alive") && is_hop_by_hop(b"TE"));
        assert!(!is_hop_by_hop(b"tee") && !is_hop_by_hop(b"x-connection"));
    }

    fn hop(client: &ClientAddr, trusted: bool) -> Hop<'_> {
        Hop {
            client,
            proto: "https",
            host: "acme.test",
            request_id: "abc",
            trusted,
        }
    }

    /// A header map as sorted `(name, value)` pairs (the values of one name in order).
    fn pairs(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = h
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    proptest::proptest! {
        /// Written as lines or inserted into the map, an untrusted hop's
        /// forwarding headers are the same: nothing the client sent
        /// survives, and the lines read back give the map's fields.
        #[test]
        fn forwarding_lines_equal_the_maps_forwarding_headers(
            sent in proptest::collection::vec((
                proptest::sample::select(vec![
                    "host", "x-forwarded-for", "x-forwarded-port", "x-forwarded-proto",
                    "x-forwarded-host", "forwarded", "x-real-ip", "x-request-id", "accept",
                    "cookie",
                ]),
                proptest::sample::select(vec!["acme.test", "1.2.3.4", "a, b", "for=x", ""]),
            ), 0..8),
            host in proptest::sample::select(vec!["acme.test", "acme.test:8080", "a\"b\\c", "\u{e9}.test", "x\u{7f}"]),
            request_id in proptest::sample::select(vec!["abc", "bad\nid", ""]),
            v6 in proptest::bool::ANY,
        ) {
            let client = ClientAddr::of(if v6 {
                "[2001:db8::1]:443".parse().expect("addr")
            } else {
                "203.0.113.9:5555".parse().expect("addr")
            });
            let hop = Hop { client: &client, proto: "http", host, request_id, trusted: false };
            let mut map = HeaderMap::new();
            for (name, value) in &sent {
                map.append(*name, HeaderValue::from_static(value));
            }
            let mut by_map = map.clone();
            set_forwarding(&mut by_map, &hop);
            let mut by_lines = map;
            let lines = untrusted_forwarding_lines(&mut by_lines, &hop);
            proptest::prop_assert!(lines.ends_with(b"\r\n") || lines.is_empty());
            for name in FORWARDING.iter() {
                proptest::prop_assert!(!by_lines.contains_key(name), "{name} survived");
            }
            append_lines(&mut by_lines, &lines);
            proptest::prop_assert_eq!(pairs(&by_lines), pairs(&by_map));
        }
    }

    #[test]
    fn untrusted_zone_replaces_spoofed_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-request-id", HeaderValue::from_static("forged"));
        set_forwarding(&mut h, &hop(&client(), false));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;proto=https;host=\"acme.test\""
        );
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_zone_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        set_forwarding(&mut h, &hop(&client(), true));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
    }

    #[test]
    fn connection_cannot_remove_proxy_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, x-forwarded-for, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get(CONNECTION).is_none());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
    }

    #[test]
    fn lengths_are_digits_that_fit() {
        let length = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_LENGTH, HeaderValue::from_static(v));
            content_length(&h)
        };
        assert_eq!(length("18446744073709551615"), Some(Ok(u64::MAX)));
        assert_eq!(length("007"), Some(Ok(7)));
        assert_eq!(length(" 12\t"), Some(Ok(12)));
        for bad in ["18446744073709551616", "", "12,", "1 2", "0x1", "1e3"] {
            assert!(matches!(length(bad), Some(Err(_))), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_whole_list_items() {
        let listed = |v: &[u8], token| {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_bytes(v).expect("value"));
            has_token(&h, CONNECTION, token)
        };
        assert!(listed(b"Keep-Alive, CLOSE", "close"));
        assert!(listed(b"\tclose ", "close"));
        assert!(listed(b"close, \xff", "close"));
        assert!(!listed(b"closed", "close"));
        assert!(!listed(b"x-close, keep-alive", "close"));
    }

    proptest::proptest! {
        /// The byte-level parser agrees with reading the value as text.
        #[test]
        fn length_matches_the_text_reading(v in "[0-9 ,+-]{0,24}") {
            let reference = |v: &str| -> Option<Result<u64, ()>> {
                let mut length = None;
                for part in v.split(',') {
                    let part = part.trim();
                    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                        return Some(Err(()));
                    }
                    let Ok(n) = part.parse::<u64>() else {
                        return Some(Err(()));
                    };
                    if length.is_some_and(|m| m != n) {
                        return Some(Err(()));
                    }
                    length = Some(n);
                }
                length.map(Ok)
            };
            let mut h = HeaderMap::new();
            h.insert(CONTENT_LENGTH, HeaderValue::from_str(&v).expect("value"));
            proptest::prop_assert_eq!(content_length(&h).map(|r| r.map_err(|_| ())), reference(&v));
        }
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }
}
