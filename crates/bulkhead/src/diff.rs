//! `bulkhead diff -c FILE --admin URL [--token-env NAME]` (DESIGN §6): drift
//! between a config file and a running instance. The instance's `GET
//! /config` answers its effective config (`Snapshot::effective`); the file's
//! own effective config is computed here with the same code, and the two JSON
//! documents are compared by [`compare`], a generic structural diff.

use crate::output;
use anyhow::{bail, Context, Result};
use bulkhead_core::EffectiveConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `diff` flags.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The config file.
    #[arg(short, long)]
    config: PathBuf,
    /// The running instance's admin API, e.g. `http://127.0.0.1:9901`.
    #[arg(long, value_name = "URL")]
    admin: String,
    /// The environment variable holding the admin bearer token (default: the file's `admin.token_env`).
    #[arg(long, value_name = "NAME")]
    token_env: Option<String>,
}

/// How long the whole request to the admin API may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `GET /config` answer accepted.
const MAX_BODY: usize = 64 << 20;

/// Run `diff`: exit 0 when the instance serves what the file says, 1 when
/// they differ (each difference printed), 2 when the instance cannot be asked.
pub fn run(args: &DiffArgs) -> Result<ExitCode> {
    let Some(snapshot) = output::load_or_report(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let url = config_url(&args.admin)?;
    let file_token_env = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token_env.clone());
    let (token, token_env) = match (&args.token_env, &file_token_env) {
        (Some(name), _) => {
            match std::env::var(name) {
                Ok(v) => (Some(v), Some(name.clone())),
                Err(_) => {
                    eprintln!("warning: --token-env names `{name}`, which is not set; asking without a token");
                    (None, Some(name.clone()))
                }
            }
        }
        (None, Some(name)) => (std::env::var(name).ok(), Some(name.clone())),
        (None, None) => (None, None),
    };
    let body = fetch(&url, token.as_deref(), token_env.as_deref())?;
    let doc: Value =
        serde_json::from_slice(&body).with_context(|| format!("GET {url} did not answer JSON"))?;
    let Some(remote) = doc.get("config") else {
        bail!("GET {url} answered JSON without a `config` field");
    };
    let hash = doc
        .get("config_hash")
        .and_then(Value::as_str)
        .map(str::to_string);
    // Parse what the instance answers as an effective config (this version's
    // shape) and compare canonical forms; an instance of another version may
    // answer a different shape, which is still compared as JSON.
    let remote = match serde_json::from_value::<EffectiveConfig>(remote.clone()) {
        Ok(view) => {
            serde_json::to_value(view).context("cannot re-serialize the instance's config")?
        }
        Err(e) => {
            eprintln!("note: the instance's config does not have this bulkhead's shape ({e}); comparing it as plain JSON");
            remote.clone()
        }
    };
    let local =
        serde_json::to_value(snapshot.effective()).context("cannot serialize the file's config")?;
    let differences = compare(&presentable(remote), &presentable(local));
    let at = match &hash {
        Some(h) => format!("{} (config_hash {h})", args.admin),
        None => args.admin.clone(),
    };
    if differences.is_empty() {
        println!(
            "no drift: {} matches the instance at {at}",
            args.config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} difference{} between the instance at {at} and {} (instance -> file):",
        differences.len(),
        if differences.len() == 1 { "" } else { "s" },
        args.config.display()
    );
    for d in &differences {
        println!("  {d}");
    }
    Ok(ExitCode::from(1))
}

/// `{URL}/config` as a URI; plain http only (the admin API is on loopback).
fn config_url(admin: &str) -> Result<http::Uri> {
    let admin = admin.trim();
    let with_scheme = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let base: http::Uri = with_scheme
        .parse()
        .with_context(|| format!("--admin `{admin}` is not a URL (write http://127.0.0.1:9901)"))?;
    match base.scheme_str() {
        Some("http") => {}
        Some(other) => bail!(
            "--admin `{admin}`: the admin API speaks plain http on a loopback address, not {other}"
        ),
        None => bail!("--admin `{admin}` has no scheme (write http://127.0.0.1:9901)"),
    }
    let Some(authority) = base.authority() else {
        bail!("--admin `{admin}` names no host (write http://127.0.0.1:9901)");
    };
    let prefix = base.path().trim_end_matches('/');
    format!("http://{authority}{prefix}/config")
        .parse()
        .with_context(|| format!("--admin `{admin}` does not make a valid URL"))
}

/// `GET url`, with a bearer token when there is one; the body of a 200.
fn fetch(url: &http::Uri, token: Option<&str>, token_env: Option<&str>) -> Result<Bytes> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = http::Request::get(url.clone());
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::new())
            .context("cannot build the request (is the token a valid header value?)")?;
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {url}: {}", chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer of GET {url}: {e}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "GET {url} got no answer within {}s",
                    FETCH_TIMEOUT.as_secs()
                )
            })??;
        if status == http::StatusCode::UNAUTHORIZED {
            let name = token_env.unwrap_or("NAME");
            if token.is_some() {
                bail!("the admin API at {url} refused the token from `{name}` (401): check it, or name the right variable with --token-env NAME");
            }
            bail!("the admin API wants a token: --token-env {name}");
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(200).collect();
            bail!("GET {url} answered {status}: {}", excerpt.trim());
        }
        Ok(body)
    })
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Reshape an effective config for people before comparing: flows become a
/// set of `from -> to` edges (their order means nothing), targets become
/// `host:port` strings (`host:port (weight N)` when the weight is not 1).
pub fn presentable(mut v: Value) -> Value {
    if let Some(flows) = v.get_mut("flows") {
        if let Some(list) = flows.as_array() {
            let mut edges = Map::new();
            for f in list {
                let from = f.get("from").and_then(Value::as_str).unwrap_or("?");
                for to in f.get("to").and_then(Value::as_array).into_iter().flatten() {
                    let to = to.as_str().unwrap_or("?");
                    edges.insert(format!("{from} -> {to}"), Value::Bool(true));
                }
            }
            *flows = Value::Object(edges);
        }
    }
    if let Some(tenants) = v.get_mut("tenants").and_then(Value::as_object_mut) {
        for tenant in tenants.values_mut() {
            let Some(groups) = tenant
                .get_mut("target_groups")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for group in groups.values_mut() {
                let Some(targets) = group.get_mut("targets") else {
                    continue;
                };
                if let Some(list) = targets.as_array() {
                    let simple: Option<Vec<Value>> = list
                        .iter()
                        .map(|t| {
                            let address = t.get("address")?.as_str()?;
                            Some(Value::String(
                                match t.get("weight").and_then(Value::as_u64) {
                                    Some(1) | None => address.to_string(),
                                    Some(w) => format!("{address} (weight {w})"),
                                },
                            ))
                        })
                        .collect();
                    if let Some(simple) = simple {
                        *targets = Value::Array(simple);
                    }
                }
            }
        }
    }
    v
}

/// One difference between two JSON documents, at a path like
/// `tenants.acme.routes.api.match` (the element of a named list is addressed
/// by its name).
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// Where (keys and element names joined by `.`; empty = the root).
    pub path: String,
    /// What.
    pub kind: DiffKind,
}

/// What differs.
#[derive(Clone, Debug, PartialEq)]
pub enum DiffKind {
    /// A key (or a named element) only the new document has.
    Added {
        /// The key or name.
        name: String,
    },
    /// A key (or a named element) only the old document has.
    Removed {
        /// The key or name.
        name: String,
    },
    /// A value that differs.
    Changed {
        /// The old value.
        old: Value,
        /// The new value.
        new: Value,
    },
    /// The same named elements in another order (names in each order).
    Reordered {
        /// Old order.
        old: Vec<String>,
        /// New order.
        new: Vec<String>,
    },
}

/// Compare two JSON documents: objects key by key; arrays whose elements are
/// all objects with a unique string `"name"` element by element, matched by
/// name (and their order compared); any other array as a whole; scalars by
/// value. Differences come in document order, old keys first.
pub fn compare(old: &Value, new: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), old, new, &mut out);
    out
}

fn walk(path: &mut Vec<String>, old: &Value, new: &Value, out: &mut Vec<Difference>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => {
                        path.push(k.clone());
                        walk(path, va, vb, out);
                        path.pop();
                    }
                    None => out.push(Difference {
                        path: join(path),
                        kind: DiffKind::Removed { name: k.clone() },
                    }),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(Difference {
                    path: join(path),
                    kind: DiffKind::Added { name: k.clone() },
                });
            }
        }
        (Value::Array(a), Value::Array(b)) => match (names(a), names(b)) {
            (Some(na), Some(nb)) => named_lists(path, a, &na, b, &nb, out),
            _ if a != b => out.push(changed(path, old, new)),
            _ => {}
        },
        _ if old != new => out.push(changed(path, old, new)),
        _ => {}
    }
}

fn changed(path: &[String], old: &Value, new: &Value) -> Difference {
    Difference {
        path: join(path),
        kind: DiffKind::Changed {
            old: old.clone(),
            new: new.clone(),
        },
    }
}

/// The names of a list of named objects, if it is one (names unique).
fn names(list: &[Value]) -> Option<Vec<String>> {
    let names: Vec<String> = list
        .iter()
        .map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect::<Option<_>>()?;
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

fn named_lists(
    path: &mut Vec<String>,
    a: &[Value],
    na: &[String],
    b: &[Value],
    nb: &[String],
    out: &mut Vec<Difference>,
) {
    for name in na.iter().filter(|n| !nb.contains(n)) {
        out.push(Difference {
            path: join(path),
            kind: DiffKind::Removed { name: name.clone() },
        });
    }
    for name in nb.iter().filter(|n| !na.contains(n)) {
        out.push(Difference {
            path: join(path),
            kind: DiffKind::Added { name: name.clone() },
        });
    }
    let common_a: Vec<&String> = na.iter().filter(|n| nb.contains(n)).collect();
    let common_b: Vec<&String> = nb.iter().filter(|n| na.contains(n)).collect();
    if common_a != common_b {
        out.push(Difference {
            path: join(path),
            kind: DiffKind::Reordered {
                old: na.to_vec(),
                new: nb.to_vec(),
            },
        });
    }
    for (i, name) in na.iter().enumerate() {
        if let Some(j) = nb.iter().position(|n| n == name) {
            path.push(name.clone());
            walk(path, &a[i], &b[j], out);
            path.pop();
        }
    }
}

/// Join path segments with `.`, quoting a segment that holds a `.`, a space
/// or nothing.
fn join(path: &[String]) -> String {
    path.iter()
        .map(|s| {
            if s.is_empty() || s.contains(['.', ' ', '"']) {
                Value::String(s.clone()).to_string()
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `routes` → `route`, `target_groups` → `target group`: what one element
/// of the collection at `path` is called.
fn element_word(path: &str) -> Option<String> {
    let last = path.rsplit('.').next().filter(|s| !s.is_empty())?;
    let word = last.trim_matches('"').replace('_', " ");
    let singular = if word.ends_with("ss") {
        &word
    } else {
        word.strip_suffix('s').unwrap_or(&word)
    };
    Some(singular.to_string())
}

/// A value for people: JSON, with `, ` between elements, cut when long.
pub fn render(v: &Value) -> String {
    let text = render_full(v);
    const MAX: usize = 240;
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn render_full(v: &Value) -> String {
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(render_full).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), render_full(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        let what = |name: &str| match element_word(&self.path) {
            Some(w) => format!("{w} {}", Value::String(name.to_string())),
            None => Value::String(name.to_string()).to_string(),
        };
        match &self.kind {
            DiffKind::Added { name } => write!(f, "{at}: added {}", what(name)),
            DiffKind::Removed { name } => write!(f, "{at}: removed {}", what(name)),
            DiffKind::Changed { old, new } => write!(f, "{at}: {} -> {}", render(old), render(new)),
            DiffKind::Reordered { old, new } => write!(
                f,
                "{at}: reordered: {} -> {}",
                old.join(", "),
                new.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(old: Value, new: Value) -> Vec<String> {
        compare(&old, &new).iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn equal_documents_have_no_difference() {
        let doc = json!({"a": 1, "b": [1, 2], "c": {"d": null}, "routes": [{"name": "x", "v": 1}]});
        assert!(compare(&doc, &doc.clone()).is_empty());
        assert!(compare(&json!(null), &json!(null)).is_empty());
        assert!(compare(&json!([]), &json!([])).is_empty());
    }

    #[test]
    fn objects_compare_key_by_key() {
        assert_eq!(
            lines(
                json!({"tenants": {"acme": {"x": 1}, "gone": {}}}),
                json!({"tenants": {"acme": {"x": 2}, "new": {}}})
            ),
            [
                "tenants.acme.x: 1 -> 2",
                "tenants: removed tenant \"gone\"",
                "tenants: added tenant \"new\"",
            ]
        );
    }

    #[test]
    fn scalars_and_types() {
        assert_eq!(
            lines(json!("a"), json!("b")),
            ["(top level): \"a\" -> \"b\""]
        );
        assert_eq!(
            lines(json!({"h": null}), json!({"h": {"path": "/healthz"}})),
            ["h: null -> {\"path\": \"/healthz\"}"]
        );
        assert_eq!(lines(json!({"n": 1}), json!({"n": "1"})), ["n: 1 -> \"1\""]);
    }

    #[test]
    fn plain_arrays_compare_whole() {
        assert_eq!(
            lines(
                json!({"targets": ["127.0.0.1:9001"]}),
                json!({"targets": ["127.0.0.1:9001", "127.0.0.1:9002"]})
            ),
            ["targets: [\"127.0.0.1:9001\"] -> [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]"]
        );
        // Order matters for plain arrays.
        assert_eq!(lines(json!([1, 2]), json!([2, 1])).len(), 1);
        // Objects without names are compared whole too.
        assert_eq!(
            lines(
                json!({"inv": [{"never": 1}]}),
                json!({"inv": [{"never": 2}]})
            ),
            ["inv: [{\"never\": 1}] -> [{\"never\": 2}]"]
        );
    }

    #[test]
    fn named_arrays_match_by_name() {
        let old = json!({"routes": [
            {"name": "admin", "match": "/admin/"},
            {"name": "site", "match": "/"}
        ]});
        let new = json!({"routes": [
            {"name": "admin", "match": "/admin"},
            {"name": "api", "match": "/api/"},
            {"name": "site", "match": "/"}
        ]});
        assert_eq!(
            lines(old.clone(), new.clone()),
            [
                "routes: added route \"api\"",
                "routes.admin.match: \"/admin/\" -> \"/admin\""
            ]
        );
        assert_eq!(
            lines(new, old),
            [
                "routes: removed route \"api\"",
                "routes.admin.match: \"/admin\" -> \"/admin/\""
            ]
        );
    }

    #[test]
    fn named_arrays_report_a_new_order() {
        let old =
            json!({"tenants": {"acme": {"routes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}});
        let new =
            json!({"tenants": {"acme": {"routes": [{"name": "b"}, {"name": "a"}, {"name": "c"}]}}});
        assert_eq!(
            lines(old, new),
            ["tenants.acme.routes: reordered: a, b, c -> b, a, c"]
        );
        // An insertion alone is not a reorder.
        let old = json!([{"name": "a"}, {"name": "c"}]);
        let new = json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]);
        let d = compare(&old, &new);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, DiffKind::Added { name: "b".into() });
    }

    #[test]
    fn duplicate_or_missing_names_fall_back_to_whole_arrays() {
        let old = json!([{"name": "a", "v": 1}, {"name": "a", "v": 2}]);
        let new = json!([{"name": "a", "v": 1}]);
        assert!(matches!(
            compare(&old, &new)[..],
            [Difference {
                kind: DiffKind::Changed { .. },
                ..
            }]
        ));
        let old = json!([{"name": "a"}, {"id": "b"}]);
        let new = json!([{"name": "a"}]);
        assert!(matches!(
            compare(&old, &new)[..],
            [Difference {
                kind: DiffKind::Changed { .. },
                ..
            }]
        ));
        // An empty list and a named one: each element is added.
        assert_eq!(
            lines(json!({"routes": []}), json!({"routes": [{"name": "x"}]})),
            ["routes: added route \"x\""]
        );
    }

    #[test]
    fn keys_with_dots_are_quoted() {
        assert_eq!(
            lines(
                json!({"forward_by_sni": {"db.internal": "a/b"}}),
                json!({"forward_by_sni": {"db.internal": "a/c"}})
            ),
            ["forward_by_sni.\"db.internal\": \"a/b\" -> \"a/c\""]
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(1000);
        let text = render(&json!(long));
        assert!(text.ends_with('…'));
        assert!(text.chars().count() < 300);
    }

    #[test]
    fn flows_and_targets_are_presented_for_people() {
        let old = presentable(json!({
            "flows": [{"from": "public", "to": ["public", "internal"]}],
            "tenants": {"acme": {"target_groups": {"app": {"targets": [{"address": "127.0.0.1:9001", "weight": 1}]}}}}
        }));
        let new = presentable(json!({
            "flows": [{"from": "public", "to": ["public"]}, {"from": "admin", "to": ["admin"]}],
            "tenants": {"acme": {"target_groups": {"app": {"targets": [
                {"address": "127.0.0.1:9001", "weight": 1},
                {"address": "127.0.0.1:9002", "weight": 2}
            ]}}}}
        }));
        assert_eq!(
            lines(old, new),
            [
                "flows: removed flow \"public -> internal\"",
                "flows: added flow \"admin -> admin\"",
                "tenants.acme.target_groups.app.targets: [\"127.0.0.1:9001\"] -> [\"127.0.0.1:9001\", \"127.0.0.1:9002 (weight 2)\"]",
            ]
        );
        // Flow order means nothing.
        let a =
            presentable(json!({"flows": [{"from": "a", "to": ["a"]}, {"from": "b", "to": ["b"]}]}));
        let b =
            presentable(json!({"flows": [{"from": "b", "to": ["b"]}, {"from": "a", "to": ["a"]}]}));
        assert!(compare(&a, &b).is_empty());
    }

    #[test]
    fn urls() {
        let u = |s: &str| config_url(s).map(|u| u.to_string());
        assert_eq!(
            u("http://127.0.0.1:9901").ok().as_deref(),
            Some("http://127.0.0.1:9901/config")
        );
        assert_eq!(
            u("http://127.0.0.1:9901/").ok().as_deref(),
            Some("http://127.0.0.1:9901/config")
        );
        assert_eq!(
            u("127.0.0.1:9901").ok().as_deref(),
            Some("http://127.0.0.1:9901/config")
        );
        assert_eq!(
            u("http://127.0.0.1:9901/lb/").ok().as_deref(),
            Some("http://127.0.0.1:9901/lb/config")
        );
        assert!(u("https://127.0.0.1:9901").is_err());
        assert!(u("http://").is_err());
    }
}
