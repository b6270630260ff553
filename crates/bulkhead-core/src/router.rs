//! Per-tenant route matching: first match wins, in file order (DESIGN §1).
//!
//! `matchit` returns only the most specific match, which cannot express
//! "first in file order", so the router is a small segment trie: literal
//! `path_prefix` routes hang on the trie node of their last segment and
//! `path_exact` routes sit in a hash map, so one walk over the request's
//! segments yields every route whose path could match. Routes with a regex or
//! no path criterion form a short tail that is a candidate unless the
//! regex's literal prefix (see [`regex_literal_prefix`]) rules it out. The
//! candidates are then tried in file order against their other criteria.

use crate::normalize::hex;
use crate::request::{HeaderSource, MatchFacts};
use compact_str::CompactString;
use ipnet::IpNet;
use regex::Regex;
use smallvec::SmallVec;
use std::collections::HashMap;

/// The hash maps of the request path: read-only tables built from the config,
/// looked up with request bytes. SipHash's keyed DoS resistance buys nothing
/// here (no request inserts), and foldhash is several times faster.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Index of a route within its tenant (file order).
pub type RouteIdx = u32;

/// A compiled value criterion (header, query parameter, claim).
#[derive(Clone, Debug)]
pub enum ValueMatcher {
    /// Equal to this value.
    Exact(Box<str>),
    /// Matches this anchored regex.
    Regex(Regex),
    /// Present with any value.
    Present,
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => **v == *value,
            ValueMatcher::Regex(re) => re.is_match(value),
            ValueMatcher::Present => true,
        }
    }
}

/// The path criterion of a route, compiled.
#[derive(Clone, Debug)]
pub enum PathMatcher {
    /// No path criterion.
    Any,
    /// Exact path.
    Exact(Box<str>),
    /// Whole-segment prefix (stored without trailing slash; `/` is empty).
    Prefix(Box<str>),
    /// Anchored regex.
    Regex(Regex),
}

/// Everything a route matches on besides the host, compiled.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Path criterion.
    pub path: PathMatcher,
    /// Methods (upper case); empty = any.
    pub methods: Vec<Box<str>>,
    /// Header criteria (lowercase names).
    pub headers: Vec<(Box<str>, ValueMatcher)>,
    /// Query criteria.
    pub query: Vec<(Box<str>, ValueMatcher)>,
    /// Source CIDRs; empty = any.
    pub sources: Vec<IpNet>,
    /// Service ids the caller must be one of; empty = anyone.
    pub identities: Vec<u32>,
    /// JWT claim criteria.
    pub claims: Vec<(Box<str>, ValueMatcher)>,
}

impl Matcher {
    /// True when the route has no criterion besides its path.
    pub fn path_only(&self) -> bool {
        self.methods.is_empty()
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.sources.is_empty()
            && self.identities.is_empty()
            && self.claims.is_empty()
    }

    /// Check every criterion but the trie-handled path ones.
    pub fn matches_rest(&self, path: &str, facts: &MatchFacts<'_>) -> bool {
        if let PathMatcher::Regex(re) = &self.path {
            if !re.is_match(path) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *facts.method) {
            return false;
        }
        if !self.sources.is_empty()
            && !facts
                .source
                .is_some_and(|ip| self.sources.iter().any(|n| n.contains(&ip)))
        {
            return false;
        }
        if !self.identities.is_empty()
            && !self.identities.iter().any(|s| facts.services.contains(s))
        {
            return false;
        }
        for (name, m) in &self.headers {
            if !facts.headers.any_value(name, &mut |v| m.matches(v)) {
                return false;
            }
        }
        for (name, m) in &self.query {
            if !query_pairs(facts.query).any(|(k, v)| k == **name && m.matches(&v)) {
                return false;
            }
        }
        for (name, m) in &self.claims {
            let ok = facts
                .claims
                .is_some_and(|claims| claims.iter().any(|(k, v)| k == &**name && m.matches(v)));
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Decoded `name=value` pairs of a query string (`+` is a space).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k), form_decode(v))
    })
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    routes: SmallVec<[RouteIdx; 2]>,
    /// Segments of up to 24 bytes are stored inline (see `HostIndex`).
    children: FastMap<CompactString, TrieNode>,
}

/// The candidate index of one tenant's routes.
#[derive(Clone, Debug, Default)]
pub struct Router {
    root: TrieNode,
    exact: FastMap<CompactString, SmallVec<[RouteIdx; 2]>>,
    /// Regex and path-less routes, with the literal prefix a path must start with.
    tail: Vec<(RouteIdx, Box<str>)>,
    case_insensitive: bool,
}

/// Candidates of one lookup; small lists stay on the stack.
pub type Candidates = SmallVec<[RouteIdx; 16]>;

impl Router {
    /// Build the index from route path criteria in file order.
    pub fn new<'a>(paths: impl Iterator<Item = &'a PathMatcher>, case_insensitive: bool) -> Router {
        let mut router = Router {
            case_insensitive,
            ..Router::default()
        };
        for (idx, path) in paths.enumerate() {
            let idx = idx as RouteIdx;
            match path {
                PathMatcher::Any => router.tail.push((idx, "".into())),
                PathMatcher::Regex(re) => {
                    router
                        .tail
                        .push((idx, regex_literal_prefix(re.as_str()).into()));
                }
                PathMatcher::Exact(p) => router.exact.entry((**p).into()).or_default().push(idx),
                PathMatcher::Prefix(p) => {
                    let mut node = &mut router.root;
                    for seg in p.split('/').filter(|s| !s.is_empty()) {
                        node = node.children.entry(seg.into()).or_default();
                    }
                    node.routes.push(idx);
                }
            }
        }
        router
    }

    /// Every route whose path criterion matches `path`, in file order.
    /// `path` must already be lowercased when the tenant is case-insensitive.
    pub fn candidates(&self, path: &str, out: &mut Candidates) {
        out.clear();
        out.extend(
            self.tail
                .iter()
                .filter(|(_, prefix)| path.starts_with(&**prefix))
                .map(|(idx, _)| *idx),
        );
        if let Some(routes) = self.exact.get(path) {
            out.extend_from_slice(routes);
        }
        let mut node = &self.root;
        out.extend_from_slice(&node.routes);
        for seg in path[1..].split('/') {
            match node.children.get(seg) {
                Some(child) => {
                    node = child;
                    out.extend_from_slice(&node.routes);
                }
                None => break,
            }
        }
        out.sort_unstable();
    }

    /// True when paths are matched case-insensitively.
    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }
}

/// The literal text every match of a compiled path regex (`^(?:…)$`, see
/// [`compile_path`]) starts with, so the router can skip the regex for paths
/// that cannot match. Conservative: `""` (no filter) for case-insensitive
/// patterns and any pattern with `|`; otherwise the leading characters that
/// are literal outside a class, minus the last one when a `?`, `*` or `{`
/// quantifies it.
pub fn regex_literal_prefix(compiled: &str) -> &str {
    let Some(inner) = compiled.strip_prefix("^(?:") else {
        return "";
    };
    if inner.contains('|') {
        return "";
    }
    let bytes = inner.as_bytes();
    let mut end = 0;
    while end < bytes.len()
        && (bytes[end].is_ascii_alphanumeric() || b"/-_~%:=@!,;'\"".contains(&bytes[end]))
    {
        end += 1;
    }
    if end > 0 && matches!(bytes.get(end), Some(b'?' | b'*' | b'{')) {
        end -= 1;
    }
    &inner[..end]
}

/// Compile a config path criterion (case folded when the tenant says so).
pub fn compile_path(
    path: Option<&bulkhead_config::PathMatch>,
    case_insensitive: bool,
) -> Result<PathMatcher, regex::Error> {
    use bulkhead_config::PathMatch;
    let fold = |s: &str| -> Box<str> {
        if case_insensitive {
            s.to_ascii_lowercase().into()
        } else {
            s.into()
        }
    };
    Ok(match path {
        None => PathMatcher::Any,
        Some(PathMatch::Exact(p)) => PathMatcher::Exact(fold(p)),
        Some(PathMatch::Prefix(p)) => PathMatcher::Prefix(fold(p.trim_end_matches('/'))),
        Some(PathMatch::Regex(r)) => {
            let flags = if case_insensitive { "(?i)" } else { "" };
            PathMatcher::Regex(Regex::new(&format!("{flags}^(?:{r})$"))?)
        }
    })
}

/// Compile a value criterion.
pub fn compile_value(v: &bulkhead_config::ValueMatch) -> Result<ValueMatcher, regex::Error> {
    use bulkhead_config::ValueMatch;
    Ok(match v {
        ValueMatch::Exact(s) => ValueMatcher::Exact(s.as_str().into()),
        ValueMatch::Regex(r) => ValueMatcher::Regex(Regex::new(&format!("^(?:{r})$"))?),
        ValueMatch::Present => ValueMatcher::Present,
    })
}

/// The reference semantics of a path criterion, used by tests and lints:
/// does `path` satisfy it?
pub fn path_matches(m: &PathMatcher, path: &str) -> bool {
    match m {
        PathMatcher::Any => true,
        PathMatcher::Exact(p) => **p == *path,
        PathMatcher::Prefix(p) => {
            p.is_empty()
                || path == &**p
                || (path.starts_with(&**p) && path.as_bytes().get(p.len()) == Some(&b'/'))
        }
        PathMatcher::Regex(re) => re.is_match(path),
    }
}

impl HeaderSource for Vec<(String, String)> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && f(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_config::PathMatch;

    fn router(paths: &[PathMatch]) -> (Router, Vec<PathMatcher>) {
        let compiled: Vec<PathMatcher> = paths
            .iter()
            .map(|p| compile_path(Some(p), false).expect("valid"))
            .collect();
        (Router::new(compiled.iter(), false), compiled)
    }

    #[test]
    fn prefix_is_whole_segments() {
        let (r, _) = router(&[PathMatch::Prefix("/admin/".into())]);
        let mut c = Candidates::new();
        for p in ["/admin", "/admin/", "/admin/x"] {
            r.candidates(p, &mut c);
            assert_eq!(c.as_slice(), &[0], "{p}");
        }
        r.candidates("/administrator", &mut c);
        assert!(c.is_empty());
    }

    #[test]
    fn candidates_come_in_file_order() {
        let (r, _) = router(&[
            PathMatch::Prefix("/".into()),
            PathMatch::Regex("/a.*".into()),
            PathMatch::Exact("/a/b".into()),
            PathMatch::Prefix("/a".into()),
        ]);
        let mut c = Candidates::new();
        r.candidates("/a/b", &mut c);
        assert_eq!(c.as_slice(), &[0, 1, 2, 3]);
        r.candidates("/a/b/", &mut c);
        assert_eq!(c.as_slice(), &[0, 1, 3]);
    }

    #[test]
    fn query_pairs_decode() {
        let pairs: Vec<_> = query_pairs("a=1&b=x+y&c=%41&d&&e=%zz").collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "A".into()),
                ("d".into(), "".into()),
                ("e".into(), "%zz".into())
            ]
        );
    }
}
