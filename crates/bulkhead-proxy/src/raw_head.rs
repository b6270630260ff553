//! A target's response head forwarded as the target wrote it.
//!
//! Building a header map for a response — each name hashed and looked up,
//! each value checked and sliced — and encoding it again for the client
//! cost ~4k instructions per HTTP/1.x request, an eighth of the whole. When
//! nothing reads or edits the response's fields (the client is on the
//! HTTP/1.x fast path, the route has no response header edits and no
//! cache), the head stays bytes: [`RawHead`] keeps the spans of the fields
//! the proxy forwards, and the client side writes them as they came.
//!
//! The fields forwarded are exactly those of the header map's path: the
//! hop-by-hop fields are dropped (RFC 9110 §7.6.1), the rest are kept. A
//! head that needs more — a `Connection` naming other fields,
//! `Transfer-Encoding`, a `Content-Length` that is not one plain number —
//! takes the header map's path (`h1_upstream`), where those are handled.
//! A head the scan accepts but a caller wants as a header map is built
//! into one without the fields the scan drops.

use crate::h1_server::Span;
use crate::headers;
use bytes::Bytes;

/// How a caller takes a target's response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseHeads {
    /// In the response's header map (every caller that reads or edits them).
    Map,
    /// As a [`RawHead`] in the response's extensions where the head allows
    /// (the header map is then empty); in the header map where it does not.
    Raw,
}

/// A response head's forwarded fields as spans of its bytes (a response
/// extension; see the module docs).
#[derive(Clone, Debug)]
pub struct RawHead {
    head: Bytes,
    /// The forwarded fields as runs of whole lines, each from a field's name
    /// to the last value before a dropped field (or a line ending other
    /// than CRLF): one copy each. Usually one run, or two.
    runs: smallvec::SmallVec<[Span; 4]>,
    content_length: Option<u64>,
    has_date: bool,
    close: bool,
    /// The dropped fields, by their index in the head (bit `i`: field `i`).
    dropped: u128,
}

impl RawHead {
    /// The head's forwarded fields, if it can be forwarded as bytes: `None`
    /// when it needs the header map. `fields` are the spans of all the
    /// head's fields, as httparse found them (valid names and values, only
    /// `:` and spaces between a name and its value).
    pub(crate) fn scan(head: &Bytes, fields: &[(Span, Span)]) -> Option<RawHead> {
        if fields.len() > u128::BITS as usize {
            return None;
        }
        let mut raw = RawHead {
            head: head.clone(),
            runs: smallvec::SmallVec::new(),
            content_length: None,
            has_date: false,
            close: false,
            dropped: 0,
        };
        // Where the current run ends, if the last field was forwarded.
        let mut run_end = None;
        for (i, &(name, value)) in fields.iter().enumerate() {
            let n = &head[name.0..name.0 + name.1];
            let v = &head[value.0..value.0 + value.1];
            let forwarded = if n.eq_ignore_ascii_case(b"content-length") {
                // A second one, or a list: the header map's path checks them.
                if raw.content_length.is_some() {
                    return None;
                }
                raw.content_length = Some(headers::decimal(v.trim_ascii())?);
                true
            } else if n.eq_ignore_ascii_case(b"connection") {
                if headers::named_by_connection(v).next().is_some() {
                    return None;
                }
                raw.close |= headers::lists_token(v, b"close");
                false
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                return None;
            } else {
                raw.has_date |= n.eq_ignore_ascii_case(b"date");
                !headers::is_hop_by_hop(n)
            };
            if !forwarded {
                raw.dropped |= 1 << i;
                run_end = None;
                continue;
            }
            let end = value.0 + value.1;
            match (run_end, raw.runs.last_mut()) {
                (Some(at), Some(run)) if head.get(at..name.0) == Some(b"\r\n") => {
                    run.1 = end - run.0;
                }
                _ => raw.runs.push((name.0, end - name.0)),
            }
            run_end = Some(end);
        }
        Some(raw)
    }

    /// The one `Content-Length` the head states, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether the head carries `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Whether the field at `index` (of the `fields` scanned) is forwarded.
    pub(crate) fn forwards(&self, index: usize) -> bool {
        index >= u128::BITS as usize || self.dropped & (1 << index) == 0
    }

    /// Whether the target's `Connection` says `close`.
    pub fn close(&self) -> bool {
        self.close
    }

    /// How many bytes [`RawHead::write`] adds.
    pub fn encoded_len(&self) -> usize {
        self.runs.iter().map(|run| run.1 + 2).sum()
    }

    /// Append the forwarded fields' lines, each ending in CRLF.
    pub fn write(&self, out: &mut Vec<u8>) {
        for &(start, len) in &self.runs {
            out.extend_from_slice(&self.head[start..start + len]);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The spans of `head`'s fields, as `h1_upstream` finds them.
    fn scanned(head: &[u8]) -> Option<RawHead> {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(parsed.parse(head).unwrap().is_complete());
        let base = head.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        let fields: Vec<(Span, Span)> = parsed
            .headers
            .iter()
            .map(|h| (offset(h.name.as_bytes()), offset(h.value)))
            .collect();
        RawHead::scan(&Bytes::copy_from_slice(head), &fields)
    }

    fn lines(raw: &RawHead) -> String {
        let mut out = Vec::new();
        raw.write(&mut out);
        assert_eq!(out.len(), raw.encoded_len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_and_the_rest_kept_in_order() {
        let raw = scanned(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Content-Length: 12\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x\r\nProxy-Connection: close\r\n\
              Proxy-Authenticate: Basic\r\nX-A:  1 \r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            lines(&raw),
            "Server: nginx\r\nContent-Length: 12\r\nX-A:  1\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n"
        );
        // Split at each dropped field, and after `X-A` (its space before CRLF is cut).
        assert_eq!(raw.runs.len(), 4);
        assert_eq!(raw.content_length(), Some(12));
        assert!(raw.has_date());
        assert!(!raw.close());
    }

    #[test]
    fn lines_are_copied_in_runs_and_end_in_crlf_whatever_the_target_used() {
        let raw = scanned(b"HTTP/1.1 200 OK\r\nA: 1\r\nB:2\nC: 3 \r\nD: 4\r\n\r\n").unwrap();
        assert_eq!(lines(&raw), "A: 1\r\nB:2\r\nC: 3\r\nD: 4\r\n");
        let raw = scanned(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").unwrap();
        assert_eq!(raw.runs.len(), 1);
    }

    #[test]
    fn connection_close_is_noted_and_dropped() {
        let raw = scanned(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").unwrap();
        assert!(raw.close());
        assert_eq!(lines(&raw), "");
        assert!(!raw.has_date());
        assert_eq!(raw.content_length(), None);
    }

    #[test]
    fn heads_the_header_map_must_handle_are_refused() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
        ] {
            assert!(scanned(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
