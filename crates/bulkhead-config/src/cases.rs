//! Route test cases (`bulkhead test`, DESIGN §6): a YAML list of requests and
//! the outcome each must get. Loaded with the same reader as the config, so
//! mistakes in a suite are reported at their line too.

use crate::error::{Collector, ConfigErrors};
use crate::model::Spanned;
use crate::read::*;
use crate::yaml::{self, Node, NodeKind, Pos};
use std::path::Path;

/// One test case.
#[derive(Clone, Debug)]
pub struct TestCase {
    /// `name`.
    pub name: String,
    /// Where the case starts.
    pub pos: Pos,
    /// `request`.
    pub request: CaseRequest,
    /// `expect`.
    pub expect: Expect,
}

/// The request of a case.
#[derive(Clone, Debug, Default)]
pub struct CaseRequest {
    /// `listener`.
    pub listener: Spanned<String>,
    /// `host` (absent = no Host header).
    pub host: Option<String>,
    /// `path`: origin-form (`/a?b`) or absolute-form (`http://h/a`).
    pub path: String,
    /// `method`, default GET.
    pub method: String,
    /// `source` IP.
    pub source: Option<Spanned<String>>,
    /// `sni`: absent = the host (as a client would send); empty = no SNI.
    pub sni: Option<String>,
    /// `headers`.
    pub headers: Vec<(String, String)>,
    /// `claims` of a verified JWT.
    pub claims: Vec<(String, String)>,
    /// `query` (without `?`).
    pub query: Option<String>,
    /// `identity`: a service name or a raw verified id.
    pub identity: Option<Spanned<String>>,
}

/// What a case expects. Missing keys are not checked.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// `decision`.
    pub decision: Option<Spanned<String>>,
    /// `status`.
    pub status: Option<u16>,
    /// `tenant`.
    pub tenant: Option<String>,
    /// `route`.
    pub route: Option<String>,
    /// `group` (`tenant/group`).
    pub group: Option<String>,
    /// `reason` (substring).
    pub reason: Option<String>,
}

/// Read a test-case file.
pub fn load_cases(path: &Path) -> Result<Vec<TestCase>, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let cx = Collector::new(file.clone());
        cx.error(
            Pos { line: 1, col: 1 },
            format!("cannot read the test cases: {e}"),
            "",
        );
        cx.finish().err().unwrap_or(ConfigErrors(Vec::new()))
    })?;
    cases_from_str(&text, &file)
}

/// Parse test cases from text.
pub fn cases_from_str(text: &str, file: &str) -> Result<Vec<TestCase>, ConfigErrors> {
    let cx = Collector::new(file);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            cx.error(
                e.pos,
                format!("invalid YAML: {}", e.message),
                "fix the syntax",
            );
            return Err(cx.finish().err().unwrap_or(ConfigErrors(Vec::new())));
        }
    };
    let mut cases = Vec::new();
    if let Some(f) = fields(&cx, &root, "the test file", &["cases"]) {
        match f.get("cases") {
            Some(n) => {
                for item in list(&cx, n, "cases") {
                    if let Some(c) = case(&cx, item) {
                        cases.push(c);
                    }
                }
            }
            None => cx.error(f.pos, "the test file has no `cases`", "add `cases: [ … ]`"),
        }
    }
    cx.finish()?;
    Ok(cases)
}

fn case(cx: &Collector, n: &Node) -> Option<TestCase> {
    let f = fields(cx, n, "test case", &["name", "request", "expect"])?;
    let name = string(cx, f.req(cx, "name", "test case")?, "name")?.value;
    let request = request(cx, f.req(cx, "request", "test case")?)?;
    let expect = expect(cx, f.req(cx, "expect", "test case")?)?;
    Some(TestCase {
        name,
        pos: n.pos,
        request,
        expect,
    })
}

const REQUEST_KEYS: &[&str] = &[
    "listener", "host", "path", "method", "source", "sni", "headers", "claims", "query", "identity",
];

fn request(cx: &Collector, n: &Node) -> Option<CaseRequest> {
    let f = fields(cx, n, "request", REQUEST_KEYS)?;
    let listener = string(cx, f.req(cx, "listener", "request")?, "listener")?;
    let text = |key: &str| f.get(key).and_then(|n| n.as_str()).map(str::to_string);
    let pairs = |key: &str| -> Vec<(String, String)> {
        match f.get(key).map(|n| &n.kind) {
            Some(NodeKind::Map(entries)) => entries
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect(),
            Some(_) => {
                cx.error(
                    n.pos,
                    format!("request.{key} must be a mapping"),
                    "write `{ name: value }`",
                );
                Vec::new()
            }
            None => Vec::new(),
        }
    };
    let sni = match f.raw("sni") {
        Some(n) if n.is_null() => Some(String::new()),
        Some(n) => n.as_str().map(str::to_string),
        None => None,
    };
    Some(CaseRequest {
        listener,
        host: text("host"),
        // Optional: tcp / tls-passthrough cases have no path.
        path: text("path").unwrap_or_else(|| "/".into()),
        method: text("method").unwrap_or_else(|| "GET".into()),
        source: f.get("source").and_then(|n| string(cx, n, "source")),
        sni,
        headers: pairs("headers"),
        claims: pairs("claims"),
        query: text("query"),
        identity: f.get("identity").and_then(|n| string(cx, n, "identity")),
    })
}

fn expect(cx: &Collector, n: &Node) -> Option<Expect> {
    let f = fields(
        cx,
        n,
        "expect",
        &["decision", "status", "tenant", "route", "group", "reason"],
    )?;
    let text = |key: &str| f.get(key).and_then(|n| n.as_str()).map(str::to_string);
    Some(Expect {
        decision: f.get("decision").and_then(|n| string(cx, n, "decision")),
        status: f
            .get("status")
            .and_then(|n| int(cx, n, "status", 100, 599))
            .map(|s| s as u16),
        tenant: text("tenant"),
        route: text("route"),
        group: text("group"),
        reason: text("reason"),
    })
}
