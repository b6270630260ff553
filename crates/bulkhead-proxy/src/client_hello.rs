//! Reading the SNI out of a TLS ClientHello without terminating TLS (for
//! tls-passthrough listeners). RFC 8446 §4.1.2 and RFC 6066 §3. The hello
//! may span several TLS records; it is reassembled up to [`MAX_HELLO`].

/// Largest ClientHello accepted.
pub const MAX_HELLO: usize = 64 << 10;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Read more bytes.
    Incomplete,
    /// A complete ClientHello; its SNI host name if it has one.
    Complete(Option<String>),
    /// Not a TLS ClientHello.
    Invalid,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Parse the bytes a client sent first.
pub fn parse(bytes: &[u8]) -> Hello {
    // Reassemble the handshake layer from as many records as are complete.
    let mut handshake = Vec::new();
    let mut records = Reader { buf: bytes };
    loop {
        if records.buf.is_empty() {
            break;
        }
        if records.buf[0] != 22 {
            return Hello::Invalid;
        }
        if records.buf.len() < 5 {
            return Hello::Incomplete;
        }
        let len = usize::from(records.buf[3]) << 8 | usize::from(records.buf[4]);
        if len == 0 || len > 16_384 + 256 {
            return Hello::Invalid;
        }
        if records.buf.len() < 5 + len {
            break;
        }
        let _ = records.take(5);
        handshake.extend_from_slice(records.take(len).unwrap_or_default());
        if handshake.len() >= 4 {
            let need = 4
                + (usize::from(handshake[1]) << 16
                    | usize::from(handshake[2]) << 8
                    | usize::from(handshake[3]));
            if handshake.len() >= need {
                break;
            }
        }
    }
    if handshake.len() < 4 {
        return if bytes.len() >= MAX_HELLO {
            Hello::Invalid
        } else {
            Hello::Incomplete
        };
    }
    let mut r = Reader { buf: &handshake };
    let (Some(kind), Some(len)) = (r.u8(), r.u24()) else {
        return Hello::Incomplete;
    };
    if kind != 1 || len + 4 > MAX_HELLO {
        return Hello::Invalid;
    }
    let Some(body) = r.take(len) else {
        return Hello::Incomplete;
    };
    match sni_of(body) {
        Some(sni) => Hello::Complete(sni),
        None => Hello::Invalid,
    }
}

/// The SNI of a ClientHello body: `Some(None)` when it has none, `None` when malformed.
fn sni_of(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { buf: body };
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    if r.buf.is_empty() {
        return Some(None);
    }
    let mut exts = Reader { buf: r.vec16()? };
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader {
            buf: Reader { buf: data }.vec16()?,
        };
        while !list.buf.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
                {
                    return None;
                }
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with the given SNI, built by hand.
    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.len();
            let mut list = vec![0u8];
            list.extend([(n >> 8) as u8, n as u8]);
            list.extend(name.as_bytes());
            let mut data = vec![(list.len() >> 8) as u8, list.len() as u8];
            data.extend(list);
            exts.extend([0, 0, (data.len() >> 8) as u8, data.len() as u8]);
            exts.extend(data);
        }
        exts.extend([0, 43, 0, 3, 2, 3, 4]); // supported_versions
        body.extend([(exts.len() >> 8) as u8, exts.len() as u8]);
        body.extend(exts);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend(body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend(hs);
        rec
    }

    #[test]
    fn finds_sni() {
        assert_eq!(
            parse(&hello(Some("DB.internal"))),
            Hello::Complete(Some("db.internal".into()))
        );
        assert_eq!(parse(&hello(None)), Hello::Complete(None));
    }

    #[test]
    fn partial_hello_asks_for_more() {
        let h = hello(Some("db.internal"));
        for cut in [0, 1, 4, 5, 20, h.len() - 1] {
            assert_eq!(parse(&h[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn hello_split_across_records() {
        let h = hello(Some("db.internal"));
        let hs = &h[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![22, 3, 1, 0, a.len() as u8];
        two.extend(a);
        two.extend([22, 3, 1, (b.len() >> 8) as u8, b.len() as u8]);
        two.extend(b);
        assert_eq!(parse(&two), Hello::Complete(Some("db.internal".into())));
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::Invalid);
        let mut bad = hello(Some("db.internal"));
        bad[5] = 2; // ServerHello
        assert_eq!(parse(&bad), Hello::Invalid);
    }
}
