//! `docs/bulkhead.schema.json` describes the same format as the parser:
//! it is a valid draft 2020-12 schema, the DESIGN sample and a config using
//! every key pass it, typos and other shape mistakes fail it, and the key set
//! of each of its closed objects is one of the key lists in `src/parse.rs`
//! (and the other way round).

use bulkhead_config::yaml::{self, Node, NodeKind};
use serde_json::{Map, Number, Value};
use std::collections::BTreeSet;
use std::path::Path;

const SCHEMA: &str = include_str!("../../../docs/bulkhead.schema.json");
const DESIGN_SAMPLE: &str = include_str!("data/design-sample.yaml");
const EVERY_KEY: &str = include_str!("data/every-key.yaml");
const PARSER_SOURCE: &str = include_str!("../src/parse.rs");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("docs/bulkhead.schema.json is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// YAML → JSON the way a YAML 1.2 (core schema) reader sees it: quoted
/// scalars are strings; plain ones may be null, booleans, integers or floats.
fn to_json(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        NodeKind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeKind::Scalar(s, false) => Value::String(s.clone()),
        NodeKind::Scalar(s, true) => plain_scalar(s),
    }
}

fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = s.trim_start_matches(['-', '+']);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
    }
    let floaty = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if floaty {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

fn yaml_to_json(text: &str) -> Value {
    to_json(&yaml::parse(text).expect("valid YAML"))
}

/// The schema errors of a YAML config, as `instance path: message`.
fn schema_errors(text: &str) -> Vec<String> {
    let instance = yaml_to_json(text);
    let validator = validator();
    validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn assert_schema_accepts(what: &str, text: &str) {
    let errors = schema_errors(text);
    assert!(
        errors.is_empty(),
        "{what} must pass the schema:\n{}",
        errors.join("\n")
    );
}

/// The schema rejects `text`, with an error at or under `path`.
fn assert_schema_rejects(text: &str, path: &str) {
    let errors = schema_errors(text);
    assert!(!errors.is_empty(), "the schema accepted:\n{text}");
    assert!(
        errors.iter().any(|e| e.starts_with(path)),
        "no schema error under {path}:\n{}",
        errors.join("\n")
    );
}

/// `DESIGN_SAMPLE` with `from` replaced by `to` (which must occur exactly once).
fn sample_with(from: &str, to: &str) -> String {
    assert_eq!(DESIGN_SAMPLE.matches(from).count(), 1, "{from:?} is unique");
    DESIGN_SAMPLE.replacen(from, to, 1)
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("not a valid schema: {e}");
    }
    validator();
}

#[test]
fn design_sample_passes_the_schema() {
    assert_schema_accepts("the DESIGN sample", DESIGN_SAMPLE);
}

#[test]
fn yaml_scalars_convert_like_a_yaml_1_2_reader() {
    let v = yaml_to_json("a: 1\nb: '1'\nc: true\nd: off\ne: 0.5\nf: -1\ng:\nh: 64KiB\ni: 1.2.3\n");
    assert_eq!(
        v,
        serde_json::json!({"a": 1, "b": "1", "c": true, "d": "off", "e": 0.5, "f": -1,
                           "g": null, "h": "64KiB", "i": "1.2.3"})
    );
}

fn write_cert(dir: &Path, stem: &str, name: &str) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate cert");
    std::fs::write(dir.join(format!("{stem}.pem")), ck.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .expect("write key");
}

#[test]
fn every_key_config_loads_and_passes_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir certs");
    write_cert(&certs, "acme", "acme.test");
    write_cert(&certs, "ops", "ops.test");
    write_cert(&certs, "ops-ca", "Ops test CA");
    let file = dir.path().join("every-key.yaml");
    std::fs::write(&file, EVERY_KEY).expect("write config");
    if let Err(e) = bulkhead_config::load(&file) {
        panic!("every-key.yaml must load:\n{e}");
    }
    assert_schema_accepts("every-key.yaml", EVERY_KEY);
}

/// Every subschema, depth first.
fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Map<String, Value>>) {
    match v {
        Value::Object(m) => {
            out.push(m);
            m.values().for_each(|c| walk(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| walk(c, out)),
        _ => {}
    }
}

/// The key sets of the schema's closed objects (`additionalProperties: false`).
fn schema_key_sets(schema: &Value) -> BTreeSet<Vec<String>> {
    let mut all = Vec::new();
    walk(schema, &mut all);
    all.into_iter()
        .filter(|m| m.get("additionalProperties") == Some(&Value::Bool(false)))
        .map(|m| {
            let mut keys: Vec<String> = m
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            keys
        })
        .collect()
}

#[test]
fn every_object_type_says_what_else_it_allows() {
    // A closed object lists its keys; an open one (names chosen by the
    // operator: zones, headers, …) says what its values are. None is silent.
    let schema = schema();
    let mut all = Vec::new();
    walk(&schema, &mut all);
    let objects: Vec<_> = all
        .into_iter()
        .filter(|m| m.get("type") == Some(&Value::String("object".into())))
        .collect();
    assert!(objects.len() > 40, "found {} object schemas", objects.len());
    for m in objects {
        match m.get("additionalProperties") {
            Some(Value::Bool(false)) => assert!(
                m.get("properties").is_some_and(Value::is_object),
                "a closed object without properties: {m:?}"
            ),
            Some(Value::Object(_)) => {}
            other => panic!("object schema with additionalProperties {other:?}: {m:?}"),
        }
    }
}

/// The key lists of `src/parse.rs`: every `fields(cx, node, what, KEYS)` call,
/// with `KEYS` written inline or as a `const …: &[&str]`.
fn parser_key_sets() -> BTreeSet<Vec<String>> {
    let strings = regex::Regex::new(r#""([^"]*)""#).expect("regex");
    let consts = regex::Regex::new(r"(?s)const ([A-Z_]+): &\[&str\] = &\[(.*?)\];").expect("regex");
    let literals = |text: &str| -> Vec<String> {
        strings
            .captures_iter(text)
            .map(|c| c[1].to_string())
            .collect()
    };
    let named: Vec<(String, Vec<String>)> = consts
        .captures_iter(PARSER_SOURCE)
        .map(|c| (c[1].to_string(), literals(&c[2])))
        .collect();

    let mut sets = BTreeSet::new();
    let mut calls = 0;
    let call = regex::Regex::new(r"\bfields\(").expect("regex");
    for m in call.find_iter(PARSER_SOURCE) {
        // The arguments up to the matching `)`, split at top-level commas.
        let mut depth = 1;
        let mut args = vec![String::new()];
        for c in PARSER_SOURCE[m.end()..].chars() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 1 => {
                    args.push(String::new());
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
            args.last_mut().expect("one arg").push(c);
        }
        let args: Vec<&str> = args
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .collect();
        assert_eq!(args.len(), 4, "fields call with args {args:?}");
        let keys = if args[3].starts_with("&[") {
            literals(args[3])
        } else {
            named
                .iter()
                .find(|(n, _)| n == args[3])
                .unwrap_or_else(|| panic!("no const {}", args[3]))
                .1
                .clone()
        };
        let mut keys = keys;
        keys.sort();
        sets.insert(keys);
        calls += 1;
    }
    assert!(calls > 40, "found only {calls} fields(…) calls in parse.rs");
    sets
}

#[test]
fn schema_key_sets_match_the_parser() {
    let parser = parser_key_sets();
    let schema = schema_key_sets(&schema());
    let only_parser: Vec<_> = parser.difference(&schema).collect();
    let only_schema: Vec<_> = schema.difference(&parser).collect();
    assert!(
        only_parser.is_empty() && only_schema.is_empty(),
        "key sets differ\nonly in parse.rs: {only_parser:#?}\nonly in the schema: {only_schema:#?}"
    );
}

#[test]
fn every_key_config_uses_every_schema_key() {
    fn keys(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut used = BTreeSet::new();
    keys(&yaml_to_json(EVERY_KEY), &mut used);
    let declared: BTreeSet<String> = schema_key_sets(&schema()).into_iter().flatten().collect();
    let unused: Vec<_> = declared.difference(&used).collect();
    assert!(unused.is_empty(), "every-key.yaml misses {unused:?}");
}

#[test]
fn typo_key_fails_the_schema() {
    let typo = sample_with(
        "match: { path_prefix: /admin/ }",
        "match: { path_prefx: /admin/ }",
    );
    assert_schema_rejects(&typo, "/tenants/acme/routes/0/match");
    // …and the parser agrees.
    assert!(bulkhead_config::from_str(&typo, "typo.yaml", Path::new(".")).is_err());
}

#[test]
fn unknown_top_level_key_fails_the_schema() {
    assert_schema_rejects(&format!("{DESIGN_SAMPLE}drain_timout: 10s\n"), "");
}

#[test]
fn shape_mistakes_fail_the_schema() {
    let cases = [
        ("version: 1", "version: 2", ""),
        (
            "targets: [\"127.0.0.1:9004\"]",
            "targets: [{ address: \"127.0.0.1:9004\", weight: 0 }]",
            "/tenants/acme/target_groups/canary/targets",
        ),
        (
            "{ group: canary, weight: 10 }",
            "{ group: canary, weight: -1 }",
            "/tenants/acme/routes/1/forward",
        ),
        (
            "interval: 2s",
            "interval: 2x",
            "/tenants/acme/target_groups/app/health/interval",
        ),
        (
            "max_bytes: 64MiB",
            "max_bytes: 64MiBs",
            "/profiles/public-cache/cache/max_bytes",
        ),
        (
            "allow_sources: [\"127.0.0.0/8\"]",
            "allow_sources: [\"127.0.0.0/8x\"]",
            "/listeners/ops/allow_sources",
        ),
        (
            "redirect: { location: /new, status: 308 }",
            "redirect: { location: /new, status: 308 }\n        deny: { status: 403 }",
            "/tenants/acme/routes/2",
        ),
        (
            "protocol: tcp, forward: shared/postgres }",
            "protocol: tcp }",
            "/listeners/pg",
        ),
        ("format: json", "format: text", "/log/format"),
        (
            "path_prefix: /debug/",
            "path_prefix: /debug/../admin/",
            "/tenants/acme/routes/4/match/path_prefix",
        ),
        (
            "path_prefix: /api/",
            "path_prefix: //api",
            "/tenants/acme/routes/1/match/path_prefix",
        ),
    ];
    for (from, to, path) in cases {
        assert_schema_rejects(&sample_with(from, to), path);
    }
}

#[test]
fn https_listener_without_certificates_fails_the_schema() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web-tls: { bind: "127.0.0.1:8443", zone: public, protocol: https }
"#;
    assert_schema_rejects(text, "/listeners/web-tls");
}

#[test]
fn admin_off_loopback_needs_a_token_in_the_schema_too() {
    assert_schema_rejects("version: 1\nadmin: { bind: \"0.0.0.0:9901\" }\n", "/admin");
    assert_schema_accepts(
        "admin with a token",
        "version: 1\nadmin: { bind: \"0.0.0.0:9901\", token_env: TOKEN }\n",
    );
}

#[test]
fn hash_on_needs_consistent_hash_in_the_schema_too() {
    let text = sample_with(
        "balance: round_robin",
        "balance: round_robin\n        hash_on: client_ip",
    );
    assert_schema_rejects(&text, "/tenants/acme/target_groups/app");
}

/// Does the parser accept `value` put into `template` (at `VALUE`, single-quoted)?
/// And the schema?
fn verdicts(template: &str, value: &str) -> (bool, bool) {
    let text = template.replace("VALUE", &format!("'{}'", value.replace('\'', "''")));
    let parser = bulkhead_config::from_str(&text, "t.yaml", Path::new(".")).is_ok();
    let schema = schema_errors(&text).is_empty();
    (parser, schema)
}

const ROUTE_TEMPLATE: &str = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - { name: r, match: { path_prefix: VALUE }, forward: app }
"#;

const LISTENER_TEMPLATE: &str = r#"version: 1
zones: { public: {} }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http, limits: { max_body_bytes: VALUE } }
"#;

#[test]
fn schema_and_parser_agree_on_paths_durations_and_sizes() {
    let cases: [(&str, &[&str]); 3] = [
        (
            ROUTE_TEMPLATE,
            &[
                "/",
                "/admin/",
                "/a/b",
                "/.well-known/x",
                "/a..b/",
                "/~user",
                "admin",
                "//a",
                "/a//b",
                "/a/./b",
                "/a/../b",
                "/..",
                "/a/.",
                "/a%2Fb",
                "/a;b",
                "/a?b",
                "/a#b",
                "/a b",
                "/a\\b",
                "",
            ],
        ),
        (
            "version: 1\ndrain_timeout: VALUE\n",
            &[
                "0", "250ms", "2s", "1m", "1h", "1d", "2x", "2", "s", "-1s", "1.5s", "00", "2 s",
            ],
        ),
        (
            LISTENER_TEMPLATE,
            &[
                "0", "512", "64KiB", "64MiB", "1GiB", "10KB", "10MB", "1GB", "64 MiB", "1TiB",
                "64MiBs", "-1", "1.5MiB", "KiB", "",
            ],
        ),
    ];
    for (template, values) in cases {
        for value in values {
            let (parser, schema) = verdicts(template, value);
            assert_eq!(
                parser, schema,
                "{value:?}: the parser says {parser}, the schema says {schema}"
            );
        }
    }
}

#[test]
fn schema_accepts_what_the_parser_accepts() {
    // The schema's patterns for addresses are looser than the parser (which
    // also checks host bits, ranges, …), but never stricter.
    let cases: [(&str, &[&str]); 3] = [
        (
            "version: 1\nzones: { public: {} }\nlisteners:\n  web: { bind: \"127.0.0.1:8080\", zone: public, protocol: http, allow_sources: [VALUE] }\n",
            &["10.0.0.0/8", "127.0.0.1", "::1", "::1/128", "fe80::/10", "0.0.0.0/0", "::/0", "10.1.2.3/8", "10.0.0.0/33", "x"],
        ),
        (
            "version: 1\nadmin: { bind: VALUE, token_env: T }\n",
            &["127.0.0.1:9901", "[::1]:9901", "0.0.0.0:1", "[fe80::1%2]:80", "localhost:80", "1.2.3.4", "[::1]"],
        ),
        (
            "version: 1\ntenants:\n  acme: { hosts: [VALUE] }\n",
            &["acme.test", "*.acme.test", "ACME.test.", "a_b.test", "localhost", "*.*.acme.test", "acme.test:80", "a..b", "*acme.test", ""],
        ),
    ];
    for (template, values) in cases {
        for value in values {
            let (parser, schema) = verdicts(template, value);
            assert!(
                !parser || schema,
                "{value:?}: the parser accepts it, the schema does not"
            );
        }
    }
}

#[test]
fn example_configs_pass_the_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        let name = path.display().to_string();
        if !name.ends_with(".yaml") || name.ends_with(".tests.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        assert_schema_accepts(&name, &text);
    }
}
