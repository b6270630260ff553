//! Property tests of the core (DESIGN §2 steps 4–6, §3 "Paths"):
//!
//! * path normalization is idempotent and leaves no dot segment or `//`;
//! * nothing whose normalized path is under a denied prefix is forwarded;
//! * the segment-trie router picks the same route as a naive linear matcher.

use bulkhead_config::Normalize;
use bulkhead_core::normalize::normalize_path;
use bulkhead_core::{
    Credentials, DecisionKind, HeaderSource, HostHeader, HttpVersion, NoHeaders, Request, Snapshot,
};
use proptest::prelude::*;
use std::path::Path;

/// 256 cases by default so CI stays fast; `PROPTEST_CASES=100000` for a long run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn compile(yaml: &str) -> Snapshot {
    let cfg = bulkhead_config::from_str(yaml, "prop.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("config does not load: {e:?}\n{yaml}"));
    Snapshot::compile(cfg).unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{yaml}"))
}

fn request<'a>(
    listener: &'a str,
    host: &'a str,
    method: &'a str,
    target: &'a str,
    headers: &'a dyn HeaderSource,
    creds: &'a Credentials,
) -> Request<'a> {
    Request {
        listener,
        source: None,
        sni: None,
        version: HttpVersion::Http11,
        method,
        target,
        host: HostHeader::One(host),
        headers,
        credentials: creds,
        pick: 0,
        trace: false,
    }
}

/// Path segments an attacker (or a confused client) might write.
const SEGMENTS: &[&str] = &[
    "a", "admin", "ADMIN", "Admin", "..", ".", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "", "%61",
    "%61dmin", "%41DMIN", "adm%69n", "%41", "~", "%7e", "%25", "%252e", "%C3%A9", "%c3%a9",
    "public", "users", "a.", ".a", "..a",
];

/// Segments that some tenants reject (or that are always rejected).
const REJECTED: &[&str] = &[
    "%2F", "%2f", "%5c", ";x", "..;", "%c0%ae", "x y", "#", "%", "%zz", "%00",
];

fn segment() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(SEGMENTS),
        1 => prop::sample::select(REJECTED),
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..8),
        any::<bool>(),
        0..3usize,
    )
        .prop_map(|(segs, trailing, leading)| {
            let mut p = "/".repeat(leading.max(1));
            p.push_str(&segs.join("/"));
            if trailing {
                p.push('/');
            }
            p
        })
}

fn normalize_opts() -> impl Strategy<Value = Normalize> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(merge_slashes, keep_encoded_slash, keep_semicolon, case_insensitive)| Normalize {
            merge_slashes,
            keep_encoded_slash,
            keep_semicolon,
            case_insensitive,
        },
    )
}

proptest! {
    #![proptest_config(config())]

    /// Normalizing twice changes nothing, and the result is free of dot
    /// segments (and of `//` when slashes are merged).
    #[test]
    fn normalization_is_idempotent(path in raw_path(), opts in normalize_opts()) {
        if let Ok(n) = normalize_path(&path, &opts) {
            let again = normalize_path(&n, &opts);
            prop_assert_eq!(again.as_deref(), Ok(&*n), "{:?} -> {:?}", path, n);
            prop_assert!(n.starts_with('/'), "{:?} -> {:?}", path, n);
            prop_assert!(!n.contains("/./"), "{:?} -> {:?}", path, n);
            prop_assert!(!n.contains("/../"), "{:?} -> {:?}", path, n);
            prop_assert!(!n.ends_with("/."), "{:?} -> {:?}", path, n);
            prop_assert!(!n.ends_with("/.."), "{:?} -> {:?}", path, n);
            if opts.merge_slashes {
                prop_assert!(!n.contains("//"), "{:?} -> {:?}", path, n);
            }
            // Unreserved characters never stay encoded; other escapes are upper case.
            let lower = n.to_ascii_lowercase();
            for esc in ["%2e", "%61", "%41", "%7e"] {
                prop_assert!(!lower.contains(esc), "{:?} -> {:?}", path, n);
            }
            prop_assert!(!n.contains("%c") && !n.contains("%e"), "{:?} -> {:?}", path, n);
            if !opts.keep_encoded_slash {
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{:?} -> {:?}", path, n);
            }
            if !opts.keep_semicolon {
                prop_assert!(!n.contains(';'), "{:?} -> {:?}", path, n);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (b) A denied prefix is never forwarded, whatever the spelling.

fn segmented_config(normalize: &str) -> String {
    format!(
        r#"
version: 1
zones: {{ public: {{}}, admin: {{}} }}
flows: [{{ from: public, to: [public] }}]
listeners: {{ web: {{ bind: "127.0.0.1:8080", zone: public, protocol: http }} }}
tenants:
  acme:
    hosts: [acme.test]
    normalize: {normalize}
    target_groups:
      app: {{ zone: public, targets: ["127.0.0.1:9001"] }}
      admin-panel: {{ zone: admin, targets: ["127.0.0.1:9003"] }}
    routes:
      - {{ name: admin, match: {{ path_prefix: /admin/ }}, forward: admin-panel }}
      - {{ name: site, match: {{ path_prefix: / }}, forward: app }}
"#
    )
}

fn raw_target() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["", "", "", "http://acme.test", "HTTP://ACME.TEST:8080"][..]),
        prop::sample::select(&["", "", "/admin", "/%61dmin", "/x/..", "/%2e%2e", "/ADMIN"][..]),
        raw_path(),
        prop::sample::select(&["", "", "?a=1", "?/admin/", "?x=%2e%2e/admin", "#frag"][..]),
    )
        .prop_map(|(authority, lead, path, query)| format!("{authority}{lead}{path}{query}"))
}

fn under_admin(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

fn check_admin_denied(
    snapshot: &Snapshot,
    target: &str,
    case_insensitive: bool,
) -> Result<(), TestCaseError> {
    let creds = Credentials::default();
    let req = request("web", "acme.test", "GET", target, &NoHeaders, &creds);
    let d = snapshot.decide(&req);
    let app = snapshot.group_id("acme/app");
    if d.kind == DecisionKind::Forward {
        prop_assert_eq!(d.group, app, "{:?} forwarded to the wrong group", target);
        prop_assert_eq!(d.route, Some(1), "{:?}", target);
    }
    if let Some(path) = d.path.as_deref() {
        let folded = if case_insensitive {
            path.to_ascii_lowercase()
        } else {
            path.to_string()
        };
        if under_admin(&folded) {
            prop_assert_eq!(d.kind, DecisionKind::Deny, "{:?} -> {:?}", target, path);
            prop_assert_eq!(d.status, Some(403), "{:?} -> {:?}", target, path);
            prop_assert_eq!(d.route, Some(0), "{:?} -> {:?}", target, path);
        } else {
            prop_assert_eq!(d.kind, DecisionKind::Forward, "{:?} -> {:?}", target, path);
        }
    } else {
        // No normalized path: rejected before routing.
        prop_assert_eq!(d.kind, DecisionKind::BadRequest, "{:?}", target);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn denied_prefix_is_never_forwarded(target in raw_target()) {
        thread_local! {
            static SNAPSHOTS: [Snapshot; 3] = [
                compile(&segmented_config("{}")),
                compile(&segmented_config("{ case: insensitive }")),
                compile(&segmented_config(
                    "{ merge_slashes: false, encoded_slash: keep, semicolon: keep }",
                )),
            ];
        }
        SNAPSHOTS.with(|s| {
            check_admin_denied(&s[0], &target, false)?;
            check_admin_denied(&s[1], &target, true)?;
            check_admin_denied(&s[2], &target, false)
        })?;
    }
}

#[test]
fn upper_case_admin_is_denied_on_a_case_insensitive_tenant() {
    let s = compile(&segmented_config("{ case: insensitive }"));
    let creds = Credentials::default();
    for target in ["/ADMIN/", "/Admin/users", "/%41DMIN", "/x/../aDmIn/y"] {
        let d = s.decide(&request(
            "web",
            "acme.test",
            "GET",
            target,
            &NoHeaders,
            &creds,
        ));
        assert_eq!(
            (d.kind, d.status),
            (DecisionKind::Deny, Some(403)),
            "{target}"
        );
    }
    // On a case-sensitive tenant `/ADMIN/` is a different path (DESIGN §2 step 4).
    let s = compile(&segmented_config("{}"));
    let d = s.decide(&request(
        "web",
        "acme.test",
        "GET",
        "/ADMIN/",
        &NoHeaders,
        &creds,
    ));
    assert_eq!(d.kind, DecisionKind::Forward);
}

// ---------------------------------------------------------------------------
// (c) The router agrees with a naive linear reference matcher.

#[derive(Clone, Debug)]
enum PathCrit {
    None,
    Exact(&'static str),
    Prefix(&'static str),
    Regex(&'static str),
}

#[derive(Clone, Debug)]
struct RouteSpec {
    path: PathCrit,
    methods: Option<&'static [&'static str]>,
    header: Option<&'static str>,
}

const LITERALS: &[&str] = &[
    "/", "/a", "/a/b", "/a/", "/b", "/a/b/c", "/A", "/a/b/", "/ab",
];
const REGEXES: &[&str] = &[
    "/a/.*",
    "/a/?",
    "/[ab]/b",
    "/a/b/c",
    "/.*",
    "/a",
    "/a+/b",
    "/a/b{0,1}",
    "/ab*",
    "/a/b|/b",
    "(?i)/A/b",
    "/a\\/b",
    "/(a|b)/c",
    "/a/(b/)?c",
];
const METHOD_SETS: &[&[&str]] = &[&["GET"], &["POST"], &["GET", "POST"]];

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    let path = prop_oneof![
        1 => Just(PathCrit::None),
        3 => prop::sample::select(LITERALS).prop_map(PathCrit::Exact),
        4 => prop::sample::select(LITERALS).prop_map(PathCrit::Prefix),
        2 => prop::sample::select(REGEXES).prop_map(PathCrit::Regex),
    ];
    (
        path,
        prop::option::weighted(0.3, prop::sample::select(METHOD_SETS)),
        prop::option::weighted(0.3, prop::sample::select(&["1", "2"][..])),
    )
        .prop_map(|(path, methods, header)| RouteSpec {
            path,
            methods,
            header,
        })
}

#[derive(Clone, Debug)]
struct Probe {
    path: String,
    method: &'static str,
    headers: Headers,
}

#[derive(Clone, Debug)]
struct Headers(Vec<(String, String)>);

impl HeaderSource for Headers {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && f(v))
    }
}

fn probe() -> impl Strategy<Value = Probe> {
    let path = prop_oneof![
        prop::sample::select(LITERALS).prop_map(str::to_string),
        (
            prop::sample::select(LITERALS),
            prop::collection::vec(
                prop::sample::select(&["a", "b", "c", "x", "", "A", "..", ".", "ab"][..]),
                1..4
            )
        )
            .prop_map(|(base, extra)| format!(
                "{}/{}",
                base.trim_end_matches('/'),
                extra.join("/")
            )),
    ];
    let header = (
        prop::sample::select(&["x-v", "X-V", "x-w"][..]),
        prop::sample::select(&["1", "2", "3"][..]),
    )
        .prop_map(|(k, v)| (k.to_string(), v.to_string()));
    (
        path,
        prop::sample::select(&["GET", "POST", "PUT", "get"][..]),
        prop::collection::vec(header, 0..3),
    )
        .prop_map(|(path, method, headers)| Probe {
            path,
            method,
            headers: Headers(headers),
        })
}

fn routes_yaml(routes: &[RouteSpec], merge_slashes: bool, case_insensitive: bool) -> String {
    let mut y = format!(
        r#"
version: 1
zones: {{ public: {{}} }}
flows: [{{ from: public, to: [public] }}]
listeners: {{ web: {{ bind: "127.0.0.1:8080", zone: public, protocol: http }} }}
tenants:
  t:
    hosts: [t.test]
    normalize: {{ merge_slashes: {merge_slashes}, case: {} }}
    target_groups:
      app: {{ zone: public, targets: ["127.0.0.1:9001"] }}
    routes:
"#,
        if case_insensitive {
            "insensitive"
        } else {
            "sensitive"
        }
    );
    for (i, r) in routes.iter().enumerate() {
        let mut m = Vec::new();
        match r.path {
            PathCrit::None => {}
            PathCrit::Exact(p) => m.push(format!("path_exact: {p:?}")),
            PathCrit::Prefix(p) => m.push(format!("path_prefix: {p:?}")),
            PathCrit::Regex(p) => m.push(format!("path_regex: {p:?}")),
        }
        if let Some(methods) = r.methods {
            m.push(format!("methods: [{}]", methods.join(", ")));
        }
        if let Some(v) = r.header {
            m.push(format!("headers: {{ x-v: {v:?} }}"));
        }
        y.push_str(&format!(
            "      - {{ name: r{i}, match: {{ {} }}, forward: app }}\n",
            m.join(", ")
        ));
    }
    y
}

/// DESIGN §3 "Paths", written as plainly as possible.
fn reference_path_match(crit: &PathCrit, path: &str, case_insensitive: bool) -> bool {
    let fold = |s: &str| {
        if case_insensitive {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path = fold(path);
    match crit {
        PathCrit::None => true,
        PathCrit::Exact(p) => fold(p) == path,
        PathCrit::Prefix(p) => {
            // Whole segments; a trailing slash on the prefix is ignored.
            let p = fold(p);
            let p = p.trim_end_matches('/');
            let want: Vec<&str> = p.split('/').skip(1).collect();
            let have: Vec<&str> = path.split('/').skip(1).collect();
            p.is_empty() || (have.len() >= want.len() && have[..want.len()] == want[..])
        }
        PathCrit::Regex(r) => {
            let flags = if case_insensitive { "(?i)" } else { "" };
            regex::Regex::new(&format!("{flags}^(?:{r})$"))
                .expect("test regex")
                .is_match(&path)
        }
    }
}

fn reference_route(
    routes: &[RouteSpec],
    path: &str,
    probe: &Probe,
    case_insensitive: bool,
) -> Option<usize> {
    routes.iter().position(|r| {
        reference_path_match(&r.path, path, case_insensitive)
            && r.methods.is_none_or(|ms| ms.contains(&probe.method))
            && r.header.is_none_or(|want| {
                probe
                    .headers
                    .0
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("x-v") && v == want)
            })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn router_agrees_with_linear_reference(
        routes in prop::collection::vec(route_spec(), 1..10),
        probes in prop::collection::vec(probe(), 1..16),
        merge_slashes in any::<bool>(),
        case_insensitive in any::<bool>(),
    ) {
        let snapshot = compile(&routes_yaml(&routes, merge_slashes, case_insensitive));
        let opts = Normalize { merge_slashes, case_insensitive, ..Normalize::default() };
        let creds = Credentials::default();
        for p in &probes {
            let d = snapshot.decide(&request("web", "t.test", p.method, &p.path, &p.headers, &creds));
            let Ok(normalized) = normalize_path(&p.path, &opts) else {
                prop_assert_eq!(d.kind, DecisionKind::BadRequest, "{:?}", p);
                continue;
            };
            prop_assert_eq!(d.path.as_deref(), Some(&*normalized), "{:?}", p);
            match reference_route(&routes, &normalized, p, case_insensitive) {
                Some(i) => {
                    prop_assert_eq!(d.kind, DecisionKind::Forward, "{:?} {:?}", p, routes);
                    prop_assert_eq!(d.route, Some(i as u32), "{:?} on {:?} routes {:?}", p, normalized, routes);
                }
                None => {
                    prop_assert_eq!(d.kind, DecisionKind::NoRoute, "{:?} on {:?} routes {:?}", p, normalized, routes);
                    prop_assert_eq!(d.status, Some(404));
                }
            }
        }
    }
}

#[test]
fn regex_literal_prefixes_are_conservative() {
    use bulkhead_core::router::regex_literal_prefix;
    let cases = [
        ("/search/[a-z]+", "/search/"),
        ("/a/b/c", "/a/b/c"),
        ("/a/?", "/a"),
        ("/ab*", "/a"),
        ("/a/b{0,1}", "/a/"),
        ("/a+/b", "/a"),
        ("/.*", "/"),
        ("/a/b|/b", ""),
        ("(a)", ""),
        ("/a\\.b", "/a"),
    ];
    for (pattern, want) in cases {
        let compiled = format!("^(?:{pattern})$");
        assert_eq!(regex_literal_prefix(&compiled), want, "{pattern}");
        let re = regex::Regex::new(&compiled).expect("valid");
        assert_eq!(regex_literal_prefix(re.as_str()), want, "{pattern}");
    }
    assert_eq!(regex_literal_prefix("(?i)^(?:/a)$"), "");
}

// ---------------------------------------------------------------------------
// Host normalization (DESIGN §2 step 3) agrees with a plain reference.

fn reference_host(raw: &str) -> Option<String> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        let inner = &rest[..end];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let after = &rest[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':')?)
        };
        (&raw[..end + 2], port)
    } else {
        match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        let n: u32 = if p.len() <= 5 && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse().ok()?
        } else {
            return None;
        };
        if n == 0 || n > 65535 {
            return None;
        }
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    if !name.starts_with('[') {
        let labels: Vec<&str> = name.split('.').collect();
        let ok = labels.iter().all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !ok {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn host_normalization_agrees_with_reference(
        raw in prop::collection::vec(
            prop::sample::select(&["a", "B", ".", "-", "_", ":", "8", "0", "[", "]", "::1", "/", " ", "@", "acme", "test", "\r"][..]),
            0..10,
        ).prop_map(|v| v.concat())
    ) {
        let got = bulkhead_core::host::normalize_host(&raw).ok().map(|h| h.into_owned());
        prop_assert_eq!(got, reference_host(&raw), "{:?}", raw);
    }
}
