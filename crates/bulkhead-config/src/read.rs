//! Small readers that turn [`Node`]s into typed values, recording an error
//! (and returning `None`) instead of stopping at the first mistake.

use crate::error::Collector;
use crate::model::Spanned;
use crate::yaml::{Node, NodeKind, Pos};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A mapping whose keys were checked against the allowed set.
pub struct Fields<'a> {
    pub pos: Pos,
    entries: &'a [(Node, Node)],
}

impl<'a> Fields<'a> {
    /// The value of `key`, if present (a `null` value counts as absent).
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    /// The value of `key` even when it is null.
    pub fn raw(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value of `key`, or an error naming what needs it.
    pub fn req(&self, cx: &Collector, key: &str, what: &str) -> Option<&'a Node> {
        let v = self.get(key);
        if v.is_none() {
            cx.error(
                self.pos,
                format!("{what} is missing `{key}`"),
                format!("add `{key}:`"),
            );
        }
        v
    }

    /// The position of `key` itself (for errors about the key).
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k.pos)
    }
}

/// Read `node` as a mapping whose keys must all be in `allowed`; unknown keys
/// are errors with a "did you mean" hint, so a typo never disables a rule.
pub fn fields<'a>(
    cx: &Collector,
    node: &'a Node,
    what: &str,
    allowed: &[&str],
) -> Option<Fields<'a>> {
    let entries: &'a [(Node, Node)] = match &node.kind {
        NodeKind::Map(entries) => entries,
        _ if node.is_null() => &[],
        _ => {
            cx.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.kind_name()),
                "write it as `key: value` pairs",
            );
            return None;
        }
    };
    for (k, _) in entries {
        match k.as_str() {
            Some(key) if allowed.contains(&key) => {}
            Some(key) => {
                let hint = match suggest(key, allowed) {
                    Some(s) => format!("did you mean `{s}`? allowed: {}", allowed.join(", ")),
                    None => format!("allowed: {}", allowed.join(", ")),
                };
                cx.error(k.pos, format!("unknown key `{key}` in {what}"), hint);
            }
            None => cx.error(k.pos, format!("{what} has a non-scalar key"), ""),
        }
    }
    Some(Fields {
        pos: node.pos,
        entries,
    })
}

/// The entries of a mapping whose keys are names chosen by the operator.
pub fn named<'a>(cx: &Collector, node: &'a Node, what: &str) -> Vec<(Spanned<String>, &'a Node)> {
    match &node.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| match k.as_str() {
                Some(name) if valid_name(name) => Some((Spanned::new(name.to_string(), k.pos), v)),
                Some(name) => {
                    cx.error(
                        k.pos,
                        format!("invalid {what} name `{name}`"),
                        "use letters, digits, `-`, `_` and `.`",
                    );
                    None
                }
                None => {
                    cx.error(k.pos, format!("{what} names must be scalars"), "");
                    None
                }
            })
            .collect(),
        _ if node.is_null() => Vec::new(),
        _ => {
            cx.error(
                node.pos,
                format!("{what}s must be a mapping of name to definition"),
                "write `name: { … }` entries",
            );
            Vec::new()
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn suggest<'b>(key: &str, allowed: &[&'b str]) -> Option<&'b str> {
    allowed
        .iter()
        .map(|a| (strsim::damerau_levenshtein(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// The items of a list; a single scalar is accepted as a one-item list.
pub fn list<'a>(cx: &Collector, node: &'a Node, what: &str) -> Vec<&'a Node> {
    match &node.kind {
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Scalar(..) if node.is_null() => Vec::new(),
        NodeKind::Scalar(..) => vec![node],
        NodeKind::Map(_) => {
            cx.error(
                node.pos,
                format!("{what} must be a list, found a mapping"),
                "write `[a, b]` or one `- item` per line",
            );
            Vec::new()
        }
    }
}

/// A non-empty string scalar.
pub fn string(cx: &Collector, node: &Node, what: &str) -> Option<Spanned<String>> {
    match node.as_str() {
        Some(s) if !s.is_empty() => Some(Spanned::new(s.to_string(), node.pos)),
        Some(_) => {
            cx.error(node.pos, format!("{what} must not be empty"), "");
            None
        }
        None => {
            cx.error(
                node.pos,
                format!("{what} must be a string, found {}", node.kind_name()),
                "",
            );
            None
        }
    }
}

/// A list of strings (a single string is a list of one).
pub fn strings(cx: &Collector, node: &Node, what: &str) -> Vec<Spanned<String>> {
    list(cx, node, what)
        .into_iter()
        .filter_map(|n| string(cx, n, what))
        .collect()
}

/// An integer in `min..=max`.
pub fn int(cx: &Collector, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
    let parsed = node.as_str().and_then(|s| s.parse::<u64>().ok());
    match parsed {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            cx.error(
                node.pos,
                format!(
                    "{what} must be an integer from {min} to {max}, found `{}`",
                    node.as_str().unwrap_or(node.kind_name())
                ),
                "",
            );
            None
        }
    }
}

/// A boolean: `true`/`false` (also `yes`/`no`/`on`/`off` so YAML 1.1 and 1.2 agree).
pub fn boolean(cx: &Collector, node: &Node, what: &str) -> Option<bool> {
    match node.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "yes" | "on") => Some(true),
        Some("false" | "no" | "off") => Some(false),
        _ => {
            cx.error(
                node.pos,
                format!("{what} must be true or false"),
                "write `true` or `false`",
            );
            None
        }
    }
}

/// A duration: `250ms`, `2s`, `1m`, `1h` (or `0`).
pub fn duration(cx: &Collector, node: &Node, what: &str) -> Option<Duration> {
    let text = node.as_str().unwrap_or("");
    let parsed = parse_duration(text);
    if parsed.is_none() {
        cx.error(
            node.pos,
            format!("{what} `{text}` is not a duration"),
            "write a number and a unit: `250ms`, `2s`, `1m`, `1h`",
        );
    }
    parsed
}

/// Parse `250ms`, `2s`, `1m`, `1h`, `1d`, `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

/// A size: `512`, `64KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 10).
pub fn size(cx: &Collector, node: &Node, what: &str) -> Option<u64> {
    let text = node.as_str().unwrap_or("");
    let parsed = parse_size(text);
    if parsed.is_none() {
        cx.error(
            node.pos,
            format!("{what} `{text}` is not a size"),
            "write bytes or a number and a unit: `8KiB`, `64MiB`, `1GiB`",
        );
    }
    parsed
}

/// Parse `512`, `64KiB`, `64MiB`, `1GiB`, `10KB`, `10MB`, `1GB`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A CIDR (`10.0.0.0/8`) or a bare address (a /32 or /128). Host bits must be zero.
pub fn cidr(cx: &Collector, node: &Node, what: &str) -> Option<IpNet> {
    let text = node.as_str().unwrap_or("").trim();
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    };
    match parsed {
        Some(net) if net.trunc() == net => Some(net),
        Some(net) => {
            cx.error(
                node.pos,
                format!("{what} `{text}` has host bits set"),
                format!("did you mean `{}`?", net.trunc()),
            );
            None
        }
        None => {
            cx.error(
                node.pos,
                format!("{what} `{text}` is not a CIDR"),
                "write an address or network like `10.0.0.0/8` or `::1/128`",
            );
            None
        }
    }
}

/// A list of CIDRs.
pub fn cidrs(cx: &Collector, node: &Node, what: &str) -> Vec<IpNet> {
    list(cx, node, what)
        .into_iter()
        .filter_map(|n| cidr(cx, n, what))
        .collect()
}

/// A socket address `ip:port` (`[::1]:80` for IPv6).
pub fn socket_addr(cx: &Collector, node: &Node, what: &str) -> Option<Spanned<SocketAddr>> {
    let text = node.as_str().unwrap_or("");
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(Spanned::new(addr, node.pos)),
        Err(_) => {
            cx.error(
                node.pos,
                format!("{what} `{text}` is not an address"),
                "write `ip:port`, e.g. `127.0.0.1:8080` or `[::1]:8080`",
            );
            None
        }
    }
}

/// One of a fixed set of words.
pub fn one_of<T: Copy>(
    cx: &Collector,
    node: &Node,
    what: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let text = node.as_str().unwrap_or("");
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
        return Some(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    cx.error(
        node.pos,
        format!("{what} `{text}` is not supported"),
        format!("use one of: {}", names.join(", ")),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("8KiB"), Some(8192));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 TiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    #[test]
    fn suggestions_find_typos() {
        assert_eq!(
            suggest("path_prefx", &["path_prefix", "path_exact"]),
            Some("path_prefix")
        );
        assert_eq!(suggest("zzz", &["path_prefix"]), None);
    }
}
