//! Host handling (DESIGN §2 step 3): validate and normalize a `Host` /
//! `:authority` / SNI value, and find the tenant that owns it.
//!
//! A tenant's hosts are exact (`acme.test`) or one-label wildcards
//! (`*.acme.test` matches `a.acme.test`, not `a.b.acme.test` nor `acme.test`);
//! exact beats wildcard.

use crate::router::FastMap;
use compact_str::CompactString;
use std::borrow::Cow;

/// Why a host value was rejected (a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// Empty host.
    Empty,
    /// A byte that cannot appear in a host (space, `/`, `@`, control…).
    InvalidByte,
    /// A port that is not 1–65535 digits.
    BadPort,
}

impl HostError {
    /// A short reason for logs and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostError::Empty => "empty Host",
            HostError::InvalidByte => "Host holds a byte that is not allowed",
            HostError::BadPort => "Host has an invalid port",
        }
    }
}

/// Normalize a host: lowercase, port dropped, one trailing dot dropped.
/// IPv6 literals keep their brackets (`[::1]`).
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let (name, port) = if raw.starts_with('[') {
        let end = raw.find(']').ok_or(HostError::InvalidByte)?;
        let (name, rest) = raw.split_at(end + 1);
        let inner = &name[1..name.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HostError::InvalidByte);
        }
        match rest {
            "" => (name, None),
            _ => (
                name,
                Some(rest.strip_prefix(':').ok_or(HostError::InvalidByte)?),
            ),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        }
    };
    if let Some(port) = port {
        let valid = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !valid || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535) {
            return Err(HostError::BadPort);
        }
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    let upper = if name.starts_with('[') {
        name.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        // One pass: letters, digits, `-`, `_` and single dots, neither first nor last.
        let mut upper = false;
        let mut prev = b'.';
        for b in name.bytes() {
            let ok = match b {
                b'.' => prev != b'.',
                _ => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            };
            if !ok {
                return Err(HostError::InvalidByte);
            }
            upper |= b.is_ascii_uppercase();
            prev = b;
        }
        if prev == b'.' {
            return Err(HostError::InvalidByte);
        }
        upper
    };
    if upper {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

/// Host → owner lookup over exact names and one-label wildcards.
///
/// Keys of up to 24 bytes are stored in the table itself ([`CompactString`]):
/// with thousands of hosts the entry a request finds is cold, and a key on
/// the heap would be a second miss for the comparison.
#[derive(Clone, Debug, Default)]
pub struct HostIndex<T> {
    exact: FastMap<CompactString, T>,
    /// Keyed by the part after `*.`.
    wildcard: FastMap<CompactString, T>,
}

impl<T: Copy> HostIndex<T> {
    /// Add a pattern (`acme.test` or `*.acme.test`, already normalized).
    /// Returns the previous owner of the same pattern, if any.
    pub fn insert(&mut self, pattern: &str, owner: T) -> Option<T> {
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.into(), owner),
            None => self.exact.insert(pattern.into(), owner),
        }
    }

    /// The owner of a normalized host: exact first, then the wildcard of its parent.
    pub fn get(&self, host: &str) -> Option<T> {
        if let Some(owner) = self.exact.get(host) {
            return Some(*owner);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// True when no pattern was added.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// True when `host` (normalized) is covered by `pattern` (exact or `*.x`).
pub fn pattern_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && parent == suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_host("Acme.Test").as_deref(), Ok("acme.test"));
        assert_eq!(normalize_host("acme.test.").as_deref(), Ok("acme.test"));
        assert_eq!(normalize_host("acme.test:8080").as_deref(), Ok("acme.test"));
        assert_eq!(normalize_host("ACME.test.:443").as_deref(), Ok("acme.test"));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Ok("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Ok("127.0.0.1"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "acme.test..",
            "a b",
            "acme.test/admin",
            "user@acme.test",
            "acme.test:",
            "acme.test:99999",
            "acme.test:0",
            "acme.test:80x",
            "acme.test\r\n",
            "[::1",
            "[zz]",
            ".",
            "..acme.test",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn wildcard_is_one_label() {
        let mut idx = HostIndex::default();
        idx.insert("*.acme.test", 1);
        idx.insert("www.acme.test", 2);
        assert_eq!(idx.get("a.acme.test"), Some(1));
        assert_eq!(idx.get("www.acme.test"), Some(2));
        assert_eq!(idx.get("a.b.acme.test"), None);
        assert_eq!(idx.get("acme.test"), None);
        assert!(pattern_matches("*.acme.test", "a.acme.test"));
        assert!(!pattern_matches("*.acme.test", "a.b.acme.test"));
    }
}
