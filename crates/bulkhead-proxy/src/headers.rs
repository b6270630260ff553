//! Headers at trust boundaries (DESIGN §2 step 9): hop-by-hop headers are
//! stripped both ways (RFC 9110 §7.6.1), forwarding headers are replaced
//! (untrusted zones) or appended to (trusted zones), the zone's
//! `strip_headers` are dropped, and the group's `identity_header` is set.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};
use std::net::SocketAddr;

/// Hop-by-hop headers, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding headers a client may not forge in an untrusted zone.
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

/// Headers the proxy sets itself; `Connection` may never remove them.
const PROXY_SET: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    "host",
];

/// Remove hop-by-hop headers and those named in `Connection`. When
/// `keep_upgrade` is set (a WebSocket handshake), `Connection: upgrade` and
/// `Upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !PROXY_SET.contains(&name.as_str()))
        .collect();
    let upgrade = headers.get(UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if keep_upgrade {
        if let Some(u) = upgrade {
            headers.insert(UPGRADE, u);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// What the proxy knows about the hop it adds.
pub struct Hop<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The request's Host (as received).
    pub host: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The listener's zone is trusted.
    pub trusted: bool,
}

/// Set the forwarding headers of DESIGN §2 step 9.
pub fn set_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let ip = hop.client.ip().to_string();
    let node = match hop.client {
        SocketAddr::V6(_) => format!("\"[{ip}]\""),
        SocketAddr::V4(_) => ip.clone(),
    };
    let forwarded = format!(
        "for={node};proto={};host=\"{}\"",
        hop.proto,
        hop.host.replace(['"', '\\'], "")
    );
    if hop.trusted {
        append(headers, "x-forwarded-for", &ip);
        append(headers, "forwarded", &forwarded);
        set_if_absent(headers, "x-forwarded-proto", hop.proto);
        set_if_absent(headers, "x-forwarded-host", hop.host);
        set_if_absent(headers, "x-real-ip", &ip);
        set_if_absent(headers, "x-request-id", hop.request_id);
    } else {
        for name in FORWARDING {
            headers.remove(*name);
        }
        set(headers, "x-forwarded-for", &ip);
        set(headers, "x-forwarded-proto", hop.proto);
        set(headers, "x-forwarded-host", hop.host);
        set(headers, "x-real-ip", &ip);
        set(headers, "forwarded", &forwarded);
        set(headers, "x-request-id", hop.request_id);
    }
}

/// The request id a trusted client sent, if any (it is kept on trusted zones).
pub fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
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

fn set_if_absent(headers: &mut HeaderMap, name: &str, value: &str) {
    if !headers.contains_key(name) {
        set(headers, name, value);
    }
}

fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    let joined = {
        let existing: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            value.to_string()
        } else {
            format!("{}, {value}", existing.join(", "))
        }
    };
    set(headers, name, &joined);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(trusted: bool) -> Hop<'static> {
        Hop {
            client: "203.0.113.9:5555".parse().expect("addr"),
            proto: "https",
            host: "acme.test",
            request_id: "abc",
            trusted,
        }
    }

    #[test]
    fn untrusted_zone_replaces_spoofed_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-request-id", HeaderValue::from_static("forged"));
        set_forwarding(&mut h, &hop(false));
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
        set_forwarding(&mut h, &hop(true));
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
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }
}
