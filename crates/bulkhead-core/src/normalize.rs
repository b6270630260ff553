//! Path normalization before matching (DESIGN §2 step 4, RFC 3986 §6.2.2).
//!
//! Routes match — and backends receive — the normalized path, so a request
//! cannot say `/public/%2e%2e/admin` to the router and `/admin` to the
//! backend. The steps run in this order:
//!
//! 1. syntax: the path starts with `/`; a raw `\`, `#`, control byte, space or
//!    non-ASCII byte, an invalid `%` escape, an escape that decodes to NUL, a
//!    control byte or invalid (e.g. overlong) UTF-8 are rejected; `;` is
//!    rejected unless the tenant keeps it;
//! 2. percent-encoded unreserved characters are decoded (`%61` → `a`,
//!    `%2e` → `.`, RFC 3986 §6.2.2.2); other escapes are upper-cased
//!    (§6.2.2.1); `%2F` and `%5C` are rejected unless the tenant keeps them
//!    encoded;
//! 3. runs of `/` are merged (unless `merge_slashes: false`);
//! 4. `.` and `..` segments are resolved (§5.2.4); `..` at the root stays at
//!    the root.

use bulkhead_config::Normalize;
use std::borrow::Cow;

/// Why a path was rejected (each one is a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A byte not allowed in a path (raw `\`, `#`, space, control, non-ASCII, `"<>^`{|}`).
    InvalidByte,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `%2F` or `%5C` on a tenant that rejects them.
    EncodedSlash,
    /// An escape decoding to NUL or a control byte.
    EncodedControl,
    /// Escapes that decode to invalid UTF-8 (overlong forms included).
    InvalidUtf8,
    /// `;` on a tenant that rejects path parameters.
    Semicolon,
}

impl PathError {
    /// A short reason for logs and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path does not start with /",
            PathError::InvalidByte => {
                "path holds a byte that is not allowed (\\, #, space, control or non-ASCII)"
            }
            PathError::InvalidEscape => "path holds an invalid percent-escape",
            PathError::EncodedSlash => "path holds an encoded / or \\ (%2F, %5C)",
            PathError::EncodedControl => "path holds an encoded NUL or control byte",
            PathError::InvalidUtf8 => "path escapes decode to invalid UTF-8",
            PathError::Semicolon => "path holds ; (path parameters)",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes allowed raw in a path: RFC 3986 `pchar` plus `/` and `%`.
fn is_path_byte(b: u8) -> bool {
    PATH_BYTES[usize::from(b)]
}

/// `is_path_byte` as a table: it runs once per byte of every request path.
static PATH_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    let extra = b"!$&'()*+,;=:@/%";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalize `path` (the request-target's path, without the query) with the
/// tenant's options. Borrows when the path is already normal.
pub fn normalize_path<'a>(path: &'a str, opts: &Normalize) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        if !is_path_byte(b) {
            return Err(PathError::InvalidByte);
        }
        match b {
            b';' if !opts.keep_semicolon => return Err(PathError::Semicolon),
            b'%' => needs_work = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') && opts.merge_slashes => needs_work = true,
            b'.' if bytes[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_escapes(bytes, opts)?;
    Ok(Cow::Owned(resolve_segments(&decoded, opts.merge_slashes)))
}

/// Step 2: decode unreserved escapes, upper-case the others, check what they decode to.
fn decode_escapes(bytes: &[u8], opts: &Normalize) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    // Bytes that escapes decode to, for the UTF-8 check of each run.
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            check_utf8(&mut run)?;
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (hi, lo) = match (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (Some(hi), Some(lo)) => (hi, lo),
            _ => return Err(PathError::InvalidEscape),
        };
        let value = hi << 4 | lo;
        i += 3;
        if is_unreserved(value) {
            check_utf8(&mut run)?;
            out.push(char::from(value));
            continue;
        }
        match value {
            b'/' | b'\\' if !opts.keep_encoded_slash => return Err(PathError::EncodedSlash),
            0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
            _ => {}
        }
        run.push(value);
        out.push('%');
        out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
        out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
    }
    check_utf8(&mut run)?;
    Ok(out)
}

/// A run of escaped bytes must be valid UTF-8 on its own (`%C0%AE`, an
/// overlong `.`, is not), so no backend can decode it into something else.
fn check_utf8(run: &mut Vec<u8>) -> Result<(), PathError> {
    if run.is_empty() {
        return Ok(());
    }
    let ok = std::str::from_utf8(run).is_ok();
    run.clear();
    if ok {
        Ok(())
    } else {
        Err(PathError::InvalidUtf8)
    }
}

/// Steps 3 and 4: merge slashes, then resolve dot segments.
fn resolve_segments(path: &str, merge_slashes: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            "" if merge_slashes && !last => {}
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p, &Normalize::default()).map(Cow::into_owned)
    }

    /// The adversarial table: every spelling an attacker might use to reach
    /// `/admin/` from a route that should not see it, and what it becomes.
    #[test]
    fn adversarial_table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/admin/users", Ok("/admin/users")),
            ("/public/../admin/", Ok("/admin/")),
            ("/public/%2e%2e/admin/", Ok("/admin/")),
            ("/public/%2E%2E/admin/", Ok("/admin/")),
            ("/public/.%2e/admin/", Ok("/admin/")),
            ("/public/%2e./admin", Ok("/admin")),
            ("/./admin/", Ok("/admin/")),
            ("/%2e/admin/", Ok("/admin/")),
            ("/../admin", Ok("/admin")),
            ("/../../../../admin", Ok("/admin")),
            ("/%2e%2e/%2e%2e/admin", Ok("/admin")),
            ("//admin//users", Ok("/admin/users")),
            ("///admin", Ok("/admin")),
            ("/public//..//admin", Ok("/admin")),
            ("/%61dmin/", Ok("/admin/")),
            ("/%41DMIN/", Ok("/ADMIN/")),
            ("/adm%69n/", Ok("/admin/")),
            ("/admin%2Fusers", Err(EncodedSlash)),
            ("/admin%2fusers", Err(EncodedSlash)),
            ("/public%2F..%2Fadmin", Err(EncodedSlash)),
            ("/public/..%2Fadmin", Err(EncodedSlash)),
            ("/public/..%5Cadmin", Err(EncodedSlash)),
            ("/public\\..\\admin", Err(InvalidByte)),
            ("/admin%00/", Err(EncodedControl)),
            ("/admin%0d%0aX-Evil:1", Err(EncodedControl)),
            ("/admin%", Err(InvalidEscape)),
            ("/admin%2", Err(InvalidEscape)),
            ("/admin%zz", Err(InvalidEscape)),
            ("/admin%%32%65", Err(InvalidEscape)),
            ("/public/%c0%ae%c0%ae/admin", Err(InvalidUtf8)),
            ("/public/%e0%80%ae/admin", Err(InvalidUtf8)),
            ("/public/%ff/admin", Err(InvalidUtf8)),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/public/..;/admin", Err(Semicolon)),
            ("/admin;jsessionid=1/", Err(Semicolon)),
            ("/admin#frag", Err(InvalidByte)),
            ("/admin users", Err(InvalidByte)),
            ("/admin\t", Err(InvalidByte)),
            ("/adm\u{e9}n", Err(InvalidByte)),
            ("admin", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/./b/../c", Ok("/a/c")),
            ("/", Ok("/")),
            ("/..", Ok("/")),
            ("/.", Ok("/")),
        ];
        for (input, want) in cases {
            let got = norm(input);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                *want,
                "normalizing {input:?}"
            );
        }
    }

    #[test]
    fn tenant_options() {
        let keep = Normalize {
            keep_encoded_slash: true,
            keep_semicolon: true,
            merge_slashes: false,
            ..Normalize::default()
        };
        let n = |p| normalize_path(p, &keep).map(Cow::into_owned);
        assert_eq!(n("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(n("/a%5cb").as_deref(), Ok("/a%5Cb"));
        assert_eq!(n("/a;b=1").as_deref(), Ok("/a;b=1"));
        assert_eq!(n("//a").as_deref(), Ok("//a"));
        assert_eq!(n("/a//../b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/x/..;/a").as_deref(), Ok("/x/..;/a"));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/api/v1/items", &Normalize::default()),
            Ok(Cow::Borrowed(_))
        ));
    }
}
