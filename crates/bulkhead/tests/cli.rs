//! End-to-end tests of the real `bulkhead` binary's offline commands
//! (DESIGN §6): `check`, `test` (with `--variants`), `explain` and `graph`,
//! their exit codes (0 success, 1 invalid config / failed cases, 2 usage) and
//! the shapes of their output.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/segmented.yaml");
const EXAMPLE_SUITE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/segmented.tests.yaml"
);
const DESIGN_SAMPLE: &str = include_str!("data/design-sample.yaml");
const DESIGN_SAMPLE_CASES: &str = include_str!("data/design-sample.tests.yaml");

// ---------------------------------------------------------------------------
// helpers

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn bulkhead<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the bulkhead binary");
    Run {
        code: out.status.code().expect("bulkhead exited by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A temp dir with `files` (name, contents) written into it.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
    }
    dir
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` is not in the text"))
        + 1
}

/// A diagnostic line `FILE:LINE:COL: message`.
#[derive(Debug)]
struct Diag {
    line: usize,
    col: usize,
    message: String,
}

/// Every line of `out` of the form `FILE:LINE:COL: message`.
fn diags(out: &str, file: &str) -> Vec<Diag> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            let message = parts.next()?.strip_prefix(' ')?.to_string();
            Some(Diag { line, col, message })
        })
        .collect()
}

/// The diagnostic whose message contains `needle` (exactly one must).
fn diag<'a>(ds: &'a [Diag], needle: &str) -> &'a Diag {
    let found: Vec<&Diag> = ds.iter().filter(|d| d.message.contains(needle)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one diagnostic containing `{needle}`, got {ds:#?}"
    );
    found[0]
}

/// Number of cases in a suite file (each starts with `  - name:`).
fn count_cases(suite: &str) -> usize {
    suite
        .lines()
        .filter(|l| l.trim_start().starts_with("- name:"))
        .count()
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

/// A small valid config: one public http listener, tenant `acme` with a
/// `no-admin` deny route on `ADMIN_PREFIX` and a catch-all `site`, and the
/// tenant `normalize` block given.
fn bypass_config(normalize: &str, admin_prefix: &str) -> String {
    format!(
        r#"version: 1
zones:
  public: {{}}
flows:
  - {{ from: public, to: [public] }}
listeners:
  web: {{ bind: "127.0.0.1:8080", zone: public, protocol: http }}
tenants:
  acme:
    hosts: [acme.test]
    normalize: {normalize}
    target_groups:
      app: {{ zone: public, targets: ["127.0.0.1:9001"] }}
    routes:
      - {{ name: no-admin, match: {{ path_prefix: {admin_prefix} }}, deny: {{ status: 403 }} }}
      - {{ name: site, match: {{ path_prefix: / }}, forward: app }}
"#
    )
}

// ---------------------------------------------------------------------------
// check

#[test]
fn check_accepts_the_example() {
    let r = bulkhead(["check", "-c", EXAMPLE]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("ok"), "{r:?}");
    assert!(
        !r.stdout.contains("warning:"),
        "the example should be lint-clean: {r:?}"
    );
    assert!(r.stderr.is_empty(), "{r:?}");
}

const BROKEN: &str = r#"version: 1
zones:
  public: {}
flows:
  - { from: public, to: [public] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: nowhere, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app:
        zone: public
        targets: ["127.0.0.1:9001"]
        timeouts: { connect: 5 parsecs }
        colour: blue
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
"#;

#[test]
fn check_reports_every_error_with_its_line() {
    let dir = dir_with(&[("broken.yaml", BROKEN)]);
    let file = dir.path().join("broken.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!r.stdout.contains("ok"), "{r:?}");

    let ds = diags(&r.stderr, p(&file));
    assert_eq!(ds.len(), 3, "three errors, all at once: {r:?}");
    for d in &ds {
        assert!(
            d.message.contains(" — "),
            "every error says how to fix it (`what — how`): {d:?}"
        );
        assert!(d.col >= 1, "{d:?}");
    }
    let zone = diag(&ds, "nowhere");
    assert_eq!(zone.line, line_of(BROKEN, "zone: nowhere"), "{zone:?}");
    let dur = diag(&ds, "5 parsecs");
    assert_eq!(dur.line, line_of(BROKEN, "5 parsecs"), "{dur:?}");
    let key = diag(&ds, "colour");
    assert_eq!(key.line, line_of(BROKEN, "colour: blue"), "{key:?}");
    assert!(
        key.message.contains("unknown key"),
        "an unknown key is named as such: {key:?}"
    );
}

#[test]
fn check_of_a_missing_file_is_an_invalid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nope.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    // DESIGN §6: 1 for an invalid config (a config that cannot be read is one).
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(p(&file)), "names the file: {r:?}");
    assert!(r.stderr.contains("cannot read"), "says why: {r:?}");
}

const LINTY: &str = r#"version: 1
zones:
  public: {}
  internal: {}
flows:
  - { from: public, to: [public, internal] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
      spare: { zone: public, targets: ["127.0.0.1:9002"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
      - { name: api, match: { path_prefix: /api/ }, forward: app }
"#;

#[test]
fn lint_warnings_do_not_change_the_exit_code() {
    let dir = dir_with(&[("lint.yaml", LINTY)]);
    let file = dir.path().join("lint.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 0, "warnings never change the exit code: {r:?}");
    assert!(r.stdout.contains("ok"), "{r:?}");

    let out = r.all();
    let ds = diags(&out, p(&file));
    let warnings: Vec<&Diag> = ds
        .iter()
        .filter(|d| d.message.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{r:?}");

    let shadow = diag(&ds, "shadowed");
    assert!(shadow.message.contains("`api`"), "{shadow:?}");
    assert_eq!(shadow.line, line_of(LINTY, "name: api"), "{shadow:?}");
    let group = diag(&ds, "acme/spare");
    assert_eq!(group.line, line_of(LINTY, "spare:"), "{group:?}");
    let flow = diag(&ds, "flow from public to internal");
    assert_eq!(
        flow.line,
        line_of(LINTY, "to: [public, internal]"),
        "{flow:?}"
    );
}

const NEVER_BROKEN: &str = r#"version: 1
zones:
  public: {}
  admin: {}
flows:
  - { from: public, to: [public, admin] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
      panel: { zone: admin, targets: ["127.0.0.1:9002"] }
    routes:
      - name: admin
        match: { path_prefix: /admin/ }
        forward: panel
      - { name: site, match: { path_prefix: / }, forward: app }
invariants:
  - never: { from: public, to: admin }
"#;

#[test]
fn a_never_invariant_rejects_an_allowed_edge() {
    let dir = dir_with(&[("never.yaml", NEVER_BROKEN)]);
    let file = dir.path().join("never.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&file));
    assert_eq!(ds.len(), 1, "{r:?}");
    let d = &ds[0];
    assert!(d.message.contains("never"), "names the invariant: {d:?}");
    assert!(d.message.contains("public") && d.message.contains("admin"));
    assert!(d.message.contains("`admin`"), "names the route: {d:?}");
    assert_eq!(d.line, line_of(NEVER_BROKEN, "- name: admin"), "{d:?}");

    // Without the offending flow the route's edge is denied, which is fine:
    // a denied edge is the proof that the boundary holds.
    let fixed = NEVER_BROKEN.replace("to: [public, admin]", "to: [public]");
    let dir = dir_with(&[("never.yaml", &fixed)]);
    let r = bulkhead(["check", "-c", p(&dir.path().join("never.yaml"))]);
    assert_eq!(r.code, 0, "{r:?}");
}

const REQUIRE_MTLS: &str = r#"version: 1
zones:
  ops: {}
  admin: {}
flows:
  - { from: ops, to: [admin] }
listeners:
  opsl: { bind: "127.0.0.1:8081", zone: ops, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      panel: { zone: admin, targets: ["127.0.0.1:9002"] }
    routes:
      - name: admin
        match: { path_prefix: / }
        forward: panel
invariants:
  - require: { zone: admin, auth: mtls }
"#;

#[test]
fn a_require_invariant_wants_mtls_on_the_route() {
    let dir = dir_with(&[("req.yaml", REQUIRE_MTLS)]);
    let file = dir.path().join("req.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&file));
    let d = diag(&ds, "require");
    assert!(d.message.contains("`admin`"), "names the route: {d:?}");
    assert_eq!(d.line, line_of(REQUIRE_MTLS, "- name: admin"), "{d:?}");

    let fixed = REQUIRE_MTLS.replace(
        "        forward: panel\n",
        "        forward: panel\n        profile: admin-strict\n",
    );
    let dir = dir_with(&[("req.yaml", &fixed)]);
    let r = bulkhead(["check", "-c", p(&dir.path().join("req.yaml"))]);
    assert_eq!(
        r.code, 0,
        "the built-in admin-strict profile requires mTLS: {r:?}"
    );
}

const TAKEOVER: &str = r#"version: 1
zones:
  public: {}
flows:
  - { from: public, to: [public] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
tenants:
  a:
    hosts: ["*.acme.test"]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
  b:
    hosts:
      - b.test
      - shop.acme.test
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9002"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
invariants:
  - tenants_isolated: true
"#;

#[test]
fn tenants_isolated_rejects_a_host_takeover() {
    let dir = dir_with(&[("takeover.yaml", TAKEOVER)]);
    let file = dir.path().join("takeover.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&file));
    assert_eq!(ds.len(), 1, "{r:?}");
    let d = &ds[0];
    assert!(d.message.contains("tenants_isolated"), "{d:?}");
    assert!(d.message.contains("takeover"), "{d:?}");
    assert!(d.message.contains("shop.acme.test"), "{d:?}");
    assert_eq!(d.line, line_of(TAKEOVER, "- shop.acme.test"), "{d:?}");

    // Without the invariant, exact-beats-wildcard makes it legal.
    let lax = TAKEOVER.replace("invariants:\n  - tenants_isolated: true\n", "");
    let dir = dir_with(&[("takeover.yaml", &lax)]);
    let r = bulkhead(["check", "-c", p(&dir.path().join("takeover.yaml"))]);
    assert_eq!(r.code, 0, "{r:?}");
}

const STRICT: &str = r#"version: 1
zones:
  public: {}
  internal: {}
flows:
  - { from: public, to: [public] }
  - { from: internal, to: [internal] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  pg: { bind: "127.0.0.1:15432", zone: internal, protocol: tcp, forward: shared/postgres }
tenants:
  a:
    hosts: [a.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
    grants:
      - { tenant: a, groups: [postgres] }
invariants:
  - tenants_isolated: strict
"#;

#[test]
fn strict_isolation_rejects_grants() {
    let dir = dir_with(&[("strict.yaml", STRICT)]);
    let file = dir.path().join("strict.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&file));
    assert_eq!(ds.len(), 1, "{r:?}");
    let d = &ds[0];
    assert!(d.message.contains("tenants_isolated: strict"), "{d:?}");
    assert!(d.message.contains("grant"), "{d:?}");
    assert_eq!(d.line, line_of(STRICT, "{ tenant: a, groups"), "{d:?}");

    let lax = STRICT.replace("tenants_isolated: strict", "tenants_isolated: true");
    let dir = dir_with(&[("strict.yaml", &lax)]);
    let r = bulkhead(["check", "-c", p(&dir.path().join("strict.yaml"))]);
    assert_eq!(r.code, 0, "grants are fine under `true`: {r:?}");
}

const SPLIT: &str = r#"version: 1
zones:
  public: {}
  internal: {}
flows:
  - { from: public, to: [public] }
  - { from: internal, to: [internal] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  int: { bind: "127.0.0.1:8081", zone: internal, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
      backend: { zone: internal, targets: ["127.0.0.1:9002"] }
    routes:
      - name: api
        match: { path_prefix: /api/ }
        forward: [{ group: app, weight: 50 }, { group: backend, weight: 50 }]
      - { name: site, match: { path_prefix: / }, forward: app }
"#;

#[test]
fn a_split_across_flow_outcomes_is_rejected() {
    let dir = dir_with(&[("split.yaml", SPLIT)]);
    let file = dir.path().join("split.yaml");
    let r = bulkhead(["check", "-c", p(&file)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&file));
    assert!(!ds.is_empty(), "{r:?}");
    for d in &ds {
        assert!(d.message.contains("`api`"), "names the route: {d:?}");
        assert_eq!(d.line, line_of(SPLIT, "- name: api"), "{d:?}");
    }
    // Both listeners see a mixed split: `web` reaches app not backend, `int` the reverse.
    assert!(ds.iter().any(|d| d.message.contains("`web`")), "{r:?}");
}

// ---------------------------------------------------------------------------
// test

#[test]
fn the_example_suite_passes() {
    let n = count_cases(&std::fs::read_to_string(EXAMPLE_SUITE).expect("read suite"));
    assert!(n >= 30, "the example suite has {n} cases");
    let want = format!("{n} passed, 0 failed");
    let r = bulkhead(["test", "-c", EXAMPLE, EXAMPLE_SUITE]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(last_line(&r.stdout), want, "{r:?}");

    let r = bulkhead(["test", "-c", EXAMPLE, EXAMPLE_SUITE, "--variants"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(last_line(&r.stdout), want, "{r:?}");
    assert!(
        r.stdout.contains("attack variants checked"),
        "--variants says it ran them: {r:?}"
    );
}

const SUITE_ONE_WRONG: &str = r#"cases:
  - name: the site forwards
    request: { listener: web, host: acme.test, path: /x }
    expect: { decision: forward, route: site, group: acme/app }
  - name: this expectation is wrong
    request: { listener: web, host: acme.test, path: /y }
    expect: { decision: deny, status: 403 }
"#;

#[test]
fn a_failed_case_shows_expected_and_got() {
    let cfg = bypass_config("{}", "/admin/");
    let dir = dir_with(&[("c.yaml", &cfg), ("t.yaml", SUITE_ONE_WRONG)]);
    let suite = dir.path().join("t.yaml");
    let r = bulkhead(["test", "-c", p(&dir.path().join("c.yaml")), p(&suite)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(last_line(&r.stdout), "1 passed, 1 failed", "{r:?}");

    let lines: Vec<&str> = r.stdout.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.contains("this expectation is wrong"))
        .expect("the failed case is named");
    assert!(lines[fail].contains("FAIL"), "{r:?}");
    let at = format!(
        "{}:{}",
        p(&suite),
        line_of(SUITE_ONE_WRONG, "this expectation is wrong")
    );
    assert!(lines[fail].contains(&at), "points at the case: {r:?}");
    let detail = lines[fail + 1..].join("\n");
    let expected = detail.find("expected").expect("prints `expected`");
    let got = detail.find("got").expect("prints `got`");
    assert!(expected < got, "{r:?}");
    assert!(
        detail.contains("deny") && detail.contains("forward"),
        "{r:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("FAIL the site forwards")),
        "{r:?}"
    );
}

const SUITE_UNKNOWN_NAMES: &str = r#"cases:
  - name: bad decision
    request: { listener: web, host: acme.test, path: /x }
    expect: { decision: forwarded }
  - name: bad listener
    request: { listener: nope, host: acme.test, path: /x }
    expect: { decision: forward }
"#;

#[test]
fn a_suite_naming_unknown_things_is_rejected_with_lines() {
    let cfg = bypass_config("{}", "/admin/");
    let dir = dir_with(&[("c.yaml", &cfg), ("t.yaml", SUITE_UNKNOWN_NAMES)]);
    let suite = dir.path().join("t.yaml");
    let r = bulkhead(["test", "-c", p(&dir.path().join("c.yaml")), p(&suite)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&suite));
    let dec = diag(&ds, "forwarded");
    assert_eq!(
        dec.line,
        line_of(SUITE_UNKNOWN_NAMES, "decision: forwarded"),
        "{dec:?}"
    );
    assert!(dec.message.contains("decision"), "{dec:?}");
    let lis = diag(&ds, "nope");
    assert_eq!(
        lis.line,
        line_of(SUITE_UNKNOWN_NAMES, "listener: nope"),
        "{lis:?}"
    );
    assert!(lis.message.contains("listener"), "{lis:?}");
    assert!(
        !r.stdout.contains("passed"),
        "no case runs when the suite is invalid: {r:?}"
    );
}

#[test]
fn a_suite_with_an_unknown_key_is_rejected() {
    let suite_text = "cases:\n  - name: typo\n    request: { listener: web, host: acme.test, pth: /x }\n    expect: { decision: forward }\n";
    let cfg = bypass_config("{}", "/admin/");
    let dir = dir_with(&[("c.yaml", &cfg), ("t.yaml", suite_text)]);
    let suite = dir.path().join("t.yaml");
    let r = bulkhead(["test", "-c", p(&dir.path().join("c.yaml")), p(&suite)]);
    assert_eq!(r.code, 1, "{r:?}");
    let ds = diags(&r.stderr, p(&suite));
    assert_eq!(diag(&ds, "pth").line, 3, "{r:?}");
}

#[test]
fn test_with_an_invalid_config_exits_1() {
    let dir = dir_with(&[("c.yaml", BROKEN), ("t.yaml", SUITE_ONE_WRONG)]);
    let r = bulkhead([
        "test",
        "-c",
        p(&dir.path().join("c.yaml")),
        p(&dir.path().join("t.yaml")),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nowhere"), "{r:?}");
}

const SUITE_ADMIN_X: &str = r#"cases:
  - name: the admin area is denied
    request: { listener: web, host: acme.test, path: /admin/x }
    expect: { decision: deny, status: 403, route: no-admin }
"#;

const SUITE_ADMIN_USERS: &str = r#"cases:
  - name: the user admin is denied
    request: { listener: web, host: acme.test, path: /admin/users }
    expect: { decision: deny, route: no-admin }
"#;

/// Run `suite` against `cfg` with and without `--variants`.
fn run_both(cfg: &str, suite: &str) -> (Run, Run) {
    let dir = dir_with(&[("c.yaml", cfg), ("t.yaml", suite)]);
    let c = dir.path().join("c.yaml");
    let t = dir.path().join("t.yaml");
    let plain = bulkhead(["test", "-c", p(&c), p(&t)]);
    let variants = bulkhead(["test", "-c", p(&c), p(&t), "--variants"]);
    (plain, variants)
}

/// The `FAIL` block of `stdout` (from the FAIL line to the next case or summary).
fn fail_block(stdout: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for l in stdout.lines() {
        if l.starts_with("FAIL") {
            inside = true;
        } else if !l.starts_with(' ') {
            inside = false;
        }
        if inside {
            out.push(l);
        }
    }
    out.join("\n")
}

#[test]
fn variants_catch_a_double_slash_bypass() {
    let cfg = bypass_config("{ merge_slashes: false }", "/admin/");
    let (plain, variants) = run_both(&cfg, SUITE_ADMIN_X);
    assert_eq!(plain.code, 0, "the case passes by itself: {plain:?}");
    assert_eq!(last_line(&plain.stdout), "1 passed, 0 failed");

    assert_eq!(variants.code, 1, "`//admin/x` is forwarded: {variants:?}");
    assert_eq!(last_line(&variants.stdout), "0 passed, 1 failed");
    let block = fail_block(&variants.stdout);
    assert!(block.contains("the admin area is denied"), "{variants:?}");
    assert!(
        block.contains("`//`"),
        "names the `//` variant: {variants:?}"
    );
    assert!(block.contains("forward"), "says what it got: {variants:?}");
}

#[test]
fn variants_catch_an_encoded_slash_bypass() {
    let cfg = bypass_config("{ encoded_slash: keep }", "/admin/users");
    let (plain, variants) = run_both(&cfg, SUITE_ADMIN_USERS);
    assert_eq!(plain.code, 0, "the case passes by itself: {plain:?}");

    // `/admin%2Fusers` keeps one segment `admin%2Fusers`, which `/admin/users`
    // does not match and `/` does: forwarded, a real bypass.
    assert_eq!(variants.code, 1, "{variants:?}");
    let block = fail_block(&variants.stdout);
    assert!(block.contains("the user admin is denied"), "{variants:?}");
    assert!(
        block.contains("%2F"),
        "names the `%2F` variant: {variants:?}"
    );
    assert!(block.contains("/admin%2Fusers"), "{variants:?}");
}

#[test]
fn variants_catch_a_path_parameter_bypass() {
    // With `semicolon: keep`, `/admin;x=1/x` has a segment `admin;x=1`: it
    // misses `/admin/` and is forwarded, while Tomcat-like backends strip the
    // parameter and serve `/admin/x`.
    let cfg = bypass_config("{ semicolon: keep }", "/admin/");
    let (plain, variants) = run_both(&cfg, SUITE_ADMIN_X);
    assert_eq!(plain.code, 0, "the case passes by itself: {plain:?}");
    assert_eq!(variants.code, 1, "{variants:?}");
    let block = fail_block(&variants.stdout);
    assert!(block.contains("`;param`"), "{variants:?}");
    assert!(block.contains("`..;/`"), "{variants:?}");
}

#[test]
fn default_normalization_survives_the_variants() {
    // The defaults (merge `//`, reject `%2F`) hold; upper case on a
    // case-sensitive tenant is only a warning.
    let cfg = bypass_config("{}", "/admin/");
    let (plain, variants) = run_both(&cfg, SUITE_ADMIN_X);
    assert_eq!(plain.code, 0, "{plain:?}");
    assert_eq!(variants.code, 0, "{variants:?}");
    assert_eq!(last_line(&variants.stdout), "1 passed, 0 failed");
    assert!(!variants.stdout.contains("FAIL"), "{variants:?}");
    assert!(
        variants.stdout.contains("WARN") && variants.stdout.contains("case: insensitive"),
        "the upper-case variant is a warning with the fix: {variants:?}"
    );

    // With `case: insensitive` even that warning goes away.
    let cfg = bypass_config("{ case: insensitive }", "/admin/");
    let (_, variants) = run_both(&cfg, SUITE_ADMIN_X);
    assert_eq!(variants.code, 0, "{variants:?}");
    assert!(!variants.stdout.contains("WARN"), "{variants:?}");
}

// ---------------------------------------------------------------------------
// explain

const EXPLAIN_KEYS: [&str; 11] = [
    "decision",
    "group",
    "group_zone",
    "listener",
    "normalized_path",
    "reason",
    "route",
    "status",
    "steps",
    "tenant",
    "zone",
];

fn explain(extra: &[&str]) -> Run {
    let mut args = vec!["explain", "-c", EXAMPLE];
    args.extend_from_slice(extra);
    bulkhead(args)
}

#[test]
fn explain_json_has_exactly_the_design_keys() {
    let r = explain(&[
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/admin/users",
        "--source",
        "203.0.113.9",
        "--json",
    ]);
    assert_eq!(r.code, 0, "exit 0 whatever the decision: {r:?}");
    let v = json(&r.stdout);
    assert_eq!(keys(&v), EXPLAIN_KEYS, "{r:?}");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["listener"], "web");
    assert_eq!(v["zone"], "public");
    assert_eq!(v["tenant"], "shop");
    assert_eq!(v["route"], "admin");
    assert_eq!(v["group"], "shop/admin-panel");
    assert_eq!(v["group_zone"], "admin");
    assert_eq!(v["normalized_path"], "/admin/users");
    assert!(v["reason"].as_str().expect("reason").contains("no flow"));
    let steps = v["steps"].as_array().expect("steps");
    assert!(steps.len() >= 5, "{r:?}");
    for s in steps {
        assert_eq!(keys(s), ["detail", "outcome", "step"], "{s}");
        for k in ["detail", "outcome", "step"] {
            assert!(s[k].is_string(), "{s}");
        }
    }
    assert_eq!(steps.last().expect("a step")["outcome"], "fail");
}

#[test]
fn explain_json_gives_absent_facts_as_null() {
    // No Host: 400 before any tenant is known.
    let r = explain(&["--listener", "web", "--path", "/", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    assert_eq!(keys(&v), EXPLAIN_KEYS);
    assert_eq!(v["decision"], "bad_request");
    assert_eq!(v["status"], 400);
    assert_eq!(v["listener"], "web");
    for k in ["tenant", "route", "group", "group_zone", "normalized_path"] {
        assert!(v[k].is_null(), "{k} must be null: {r:?}");
    }

    // A source outside allow_sources: closed at accept, status null.
    let r = explain(&[
        "--listener",
        "ops",
        "--host",
        "ops.shop.test",
        "--path",
        "/admin/",
        "--source",
        "198.51.100.7",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    assert_eq!(keys(&v), EXPLAIN_KEYS);
    assert_eq!(v["decision"], "deny");
    assert!(v["status"].is_null(), "{r:?}");
    assert!(v["route"].is_null(), "{r:?}");

    // A forward: status is the upstream's, so null; every fact present.
    let r = explain(&[
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/products/%34%32",
        "--json",
    ]);
    let v = json(&r.stdout);
    assert_eq!(v["decision"], "forward");
    assert!(v["status"].is_null(), "{r:?}");
    assert_eq!(v["group"], "shop/storefront");
    assert_eq!(v["normalized_path"], "/products/42");
}

#[test]
fn explain_text_mentions_every_step() {
    let base = [
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/admin/users",
    ];
    let mut with_json = base.to_vec();
    with_json.push("--json");
    let v = json(&explain(&with_json).stdout);
    let r = explain(&base);
    assert_eq!(r.code, 0, "{r:?}");
    for s in v["steps"].as_array().expect("steps") {
        let step = s["step"].as_str().expect("step");
        let detail = s["detail"].as_str().expect("detail");
        assert!(
            r.stdout.contains(step) && r.stdout.contains(detail),
            "the text names step `{step}` ({detail}): {r:?}"
        );
    }
    assert!(r.stdout.contains("deny"), "{r:?}");
    assert!(r.stdout.contains("403"), "{r:?}");
    assert!(r.stdout.contains("no flow from public to admin"), "{r:?}");
}

#[test]
fn explain_usage_errors_exit_2() {
    let r = explain(&["--listener", "nope", "--host", "shop.test", "--path", "/"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("nope"), "{r:?}");

    let r = explain(&[
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/",
        "--source",
        "1.2.3",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("1.2.3"), "{r:?}");

    let r = explain(&[
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/",
        "--header",
        "no-colon",
    ]);
    assert_eq!(r.code, 2, "{r:?}");

    // --path is required.
    let r = explain(&["--listener", "web", "--host", "shop.test"]);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn explain_of_a_missing_config_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nope.yaml");
    let r = bulkhead([
        "explain",
        "-c",
        p(&file),
        "--listener",
        "web",
        "--path",
        "/",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(p(&file)), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn explain_agrees_with_the_suite_on_tls_and_identity() {
    // SNI of one tenant, Host of another.
    let r = explain(&[
        "--listener",
        "web-tls",
        "--host",
        "shop.test",
        "--sni",
        "blog.test",
        "--path",
        "/",
        "--json",
    ]);
    let v = json(&r.stdout);
    assert_eq!(v["decision"], "misdirected", "{r:?}");
    assert_eq!(v["status"], 421);

    // The partner, by its certificate's SAN, passes the access list.
    let r = explain(&[
        "--listener",
        "partner",
        "--host",
        "partner.shop.test",
        "--path",
        "/partner/v1/orders",
        "--identity",
        "partner-acme",
        "--json",
    ]);
    let v = json(&r.stdout);
    assert_eq!(v["decision"], "forward", "{r:?}");
    assert_eq!(v["group"], "shop/partner-api");

    // A versioned header picks the split route.
    let r = explain(&[
        "--listener",
        "web",
        "--host",
        "shop.test",
        "--path",
        "/api/items",
        "--header",
        "x-api-version: 2",
        "--json",
    ]);
    let v = json(&r.stdout);
    assert_eq!(v["route"], "api-v2", "{r:?}");
}

// ---------------------------------------------------------------------------
// graph

const EDGE_KEYS: [&str; 8] = [
    "allowed",
    "group",
    "group_zone",
    "listener",
    "reason",
    "route",
    "tenant",
    "zone",
];

fn example_graph() -> Vec<Value> {
    let r = bulkhead(["graph", "-c", EXAMPLE, "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    assert_eq!(keys(&v), ["edges"], "{r:?}");
    v["edges"].as_array().expect("edges").clone()
}

fn edges_where<'a>(edges: &'a [Value], pred: &[(&str, Value)]) -> Vec<&'a Value> {
    edges
        .iter()
        .filter(|e| pred.iter().all(|(k, v)| &e[*k] == v))
        .collect()
}

#[test]
fn graph_json_matches_the_design_shape() {
    let edges = example_graph();
    assert!(!edges.is_empty());
    for e in &edges {
        let k = keys(e);
        for want in EDGE_KEYS {
            assert!(k.contains(&want), "edge lacks `{want}`: {e}");
        }
        for have in &k {
            assert!(
                EDGE_KEYS.contains(have) || ["requires", "auth", "sni"].contains(have),
                "unexpected key `{have}`: {e}"
            );
        }
        for s in [
            "listener",
            "zone",
            "tenant",
            "group",
            "group_zone",
            "reason",
        ] {
            assert!(e[s].is_string(), "`{s}` is a string: {e}");
        }
        assert!(e["route"].is_string() || e["route"].is_null(), "{e}");
        assert!(e["allowed"].is_boolean(), "{e}");
        let group = e["group"].as_str().expect("group");
        let (owner, _) = group.split_once('/').expect("group is tenant/group");
        if e["route"].is_string() {
            assert_eq!(
                owner, e["tenant"],
                "a route forwards to its tenant's groups: {e}"
            );
        }
    }
}

#[test]
fn graph_includes_denied_edges_with_their_reason() {
    let edges = example_graph();
    let found = edges_where(
        &edges,
        &[
            ("listener", "web".into()),
            ("route", "admin".into()),
            ("group", "shop/admin-panel".into()),
        ],
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let e = found[0];
    assert_eq!(e["allowed"], false);
    assert_eq!(e["zone"], "public");
    assert_eq!(e["group_zone"], "admin");
    assert!(
        e["reason"].as_str().expect("reason").contains("no flow"),
        "{e}"
    );

    let ops = edges_where(
        &edges,
        &[("listener", "ops".into()), ("route", "admin".into())],
    );
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["allowed"], true, "{}", ops[0]);

    // No allowed edge breaks a `never` invariant of the example.
    for (from, to) in [
        ("public", "admin"),
        ("public", "internal"),
        ("partner", "internal"),
        ("staging", "public"),
        ("staging", "internal"),
        ("staging", "admin"),
    ] {
        let bad = edges_where(
            &edges,
            &[
                ("zone", from.into()),
                ("group_zone", to.into()),
                ("allowed", true.into()),
            ],
        );
        assert!(bad.is_empty(), "never {from} -> {to}: {bad:?}");
    }
}

#[test]
fn graph_has_one_edge_per_listener_route_group() {
    let edges = example_graph();
    // A weighted split gives one edge per leg.
    let split = edges_where(
        &edges,
        &[("listener", "web".into()), ("route", "api-v2".into())],
    );
    let groups = sorted(
        split
            .iter()
            .map(|e| e["group"].as_str().expect("group"))
            .collect(),
    );
    assert_eq!(groups, ["shop/catalog", "shop/catalog-canary"]);
    // A route limited to one listener has no edge on the others.
    let partner = edges_where(&edges, &[("route", "partner-api".into())]);
    assert_eq!(partner.len(), 1, "{partner:?}");
    assert_eq!(partner[0]["listener"], "partner");
    // No duplicates.
    let mut seen = std::collections::HashSet::new();
    for e in &edges {
        let key = (
            e["listener"].to_string(),
            e["tenant"].to_string(),
            e["route"].to_string(),
            e["group"].to_string(),
        );
        assert!(seen.insert(key), "duplicate edge {e}");
    }
}

#[test]
fn graph_edges_carry_requires_and_auth() {
    let edges = example_graph();
    let access = [
        ("shop/orders", vec!["billing", "reporting"]),
        ("shop/partner-api", vec!["partner-acme"]),
        ("platform/postgres", vec!["billing", "reporting"]),
    ];
    for e in &edges {
        let group = e["group"].as_str().expect("group");
        match access.iter().find(|(g, _)| *g == group) {
            Some((_, svcs)) => {
                let req: Vec<&str> = e["requires"]
                    .as_array()
                    .unwrap_or_else(|| panic!("edge into {group} carries requires: {e}"))
                    .iter()
                    .map(|s| s.as_str().expect("service name"))
                    .collect();
                assert_eq!(sorted(req), *svcs, "{e}");
            }
            None => assert!(
                e.get("requires").is_none_or(Value::is_null),
                "no access list, no requires: {e}"
            ),
        }
        // Only the admin route (profile admin-strict) has auth.
        if e["route"] == "admin" {
            assert_eq!(e["auth"], "mtls", "{e}");
        } else {
            assert!(e.get("auth").is_none_or(Value::is_null), "{e}");
        }
    }
}

#[test]
fn graph_tcp_forward_is_an_edge_without_route() {
    let edges = example_graph();
    let pg = edges_where(&edges, &[("listener", "pg".into())]);
    assert_eq!(pg.len(), 1, "{pg:?}");
    let e = pg[0];
    assert!(e["route"].is_null(), "{e}");
    assert_eq!(e["tenant"], "platform", "the group's owner: {e}");
    assert_eq!(e["group"], "platform/postgres");
    assert_eq!(e["zone"], "internal");
    assert_eq!(e["group_zone"], "internal");
    assert_eq!(e["allowed"], true);
}

const PASSTHROUGH: &str = r#"version: 1
zones:
  public: {}
  internal: {}
flows:
  - { from: public, to: [public] }
  - { from: internal, to: [internal] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  pt:
    bind: "127.0.0.1:8443"
    zone: internal
    protocol: tls-passthrough
    forward_by_sni: { "db.internal": shared/postgres, "*.acme.test": acme/app }
tenants:
  acme:
    hosts: [acme.test, "*.acme.test"]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
"#;

#[test]
fn graph_passthrough_forwards_are_edges_of_their_owner() {
    let dir = dir_with(&[("pt.yaml", PASSTHROUGH)]);
    let r = bulkhead([
        "graph",
        "-c",
        p(&dir.path().join("pt.yaml")),
        "--format",
        "json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    let edges = v["edges"].as_array().expect("edges");
    let pt = edges_where(edges, &[("listener", "pt".into())]);
    assert_eq!(pt.len(), 2, "one edge per SNI forward: {r:?}");
    for e in pt {
        assert!(e["route"].is_null(), "{e}");
        let owner = e["group"]
            .as_str()
            .and_then(|g| g.split_once('/'))
            .expect("tenant/group")
            .0;
        assert_eq!(e["tenant"], owner, "{e}");
        let allowed = e["group_zone"] == "internal";
        assert_eq!(e["allowed"], allowed, "{e}");
    }
}

#[test]
fn graph_counts_agree_with_check() {
    let edges = example_graph();
    let allowed = edges.iter().filter(|e| e["allowed"] == true).count();
    let r = bulkhead(["check", "-c", EXAMPLE]);
    let want = format!("{allowed} of {} graph edges allowed", edges.len());
    assert!(r.stdout.contains(&want), "check says `{want}`: {r:?}");
}

#[test]
fn graph_dot_and_table() {
    let r = bulkhead(["graph", "-c", EXAMPLE, "--format", "dot"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("digraph"), "{r:?}");
    assert!(r.stdout.trim_end().ends_with('}'), "{r:?}");
    let n = example_graph().len();
    assert_eq!(r.stdout.matches(" -> ").count(), n, "one arrow per edge");

    for args in [
        vec!["graph", "-c", EXAMPLE, "--format", "table"],
        vec!["graph", "-c", EXAMPLE],
    ] {
        let r = bulkhead(args);
        assert_eq!(r.code, 0, "{r:?}");
        let header = r.stdout.lines().next().expect("a header line");
        for col in ["LISTENER", "ZONE", "TENANT", "ROUTE", "GROUP", "ALLOWED"] {
            assert!(header.contains(col), "header has {col}: {header}");
        }
        assert!(r.stdout.lines().count() > n, "{r:?}");
    }
}

#[test]
fn graph_of_an_invalid_config_exits_1() {
    let dir = dir_with(&[("c.yaml", BROKEN)]);
    let r = bulkhead(["graph", "-c", p(&dir.path().join("c.yaml"))]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

// ---------------------------------------------------------------------------
// usage

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["check"],
        vec!["check", "-c", EXAMPLE, "--bogus"],
        vec!["graph", "-c", EXAMPLE, "--format", "svg"],
        vec!["test", "-c", EXAMPLE],
    ] {
        let r = bulkhead(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
    }
}

#[test]
fn help_and_version_exit_0() {
    let r = bulkhead(["--help"]);
    assert_eq!(r.code, 0, "{r:?}");
    for cmd in ["check", "explain", "test", "graph"] {
        assert!(r.stdout.contains(cmd), "--help lists {cmd}: {r:?}");
    }
    let r = bulkhead(["--version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{r:?}");
}

// ---------------------------------------------------------------------------
// the DESIGN samples

/// Write a self-signed cert and key for `name` as `dir/stem.{pem,key}`.
fn write_cert(dir: &Path, stem: &str, name: &str) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate cert");
    std::fs::write(dir.join(format!("{stem}.pem")), ck.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .expect("write key");
}

/// The DESIGN §3 sample and §6 cases in a temp dir, with or without `certs/`.
fn design_dir(with_certs: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = dir_with(&[
        ("bulkhead.yaml", DESIGN_SAMPLE),
        ("bulkhead.tests.yaml", DESIGN_SAMPLE_CASES),
    ]);
    if with_certs {
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir certs");
        write_cert(&certs, "acme", "acme.test");
        write_cert(&certs, "ops", "ops.test");
        write_cert(&certs, "ops-ca", "ops-ca.test");
    }
    let cfg = dir.path().join("bulkhead.yaml");
    let cases = dir.path().join("bulkhead.tests.yaml");
    (dir, cfg, cases)
}

/// The first fenced yaml block after `heading` in DESIGN.md, if DESIGN.md is beside the checkout.
fn design_block(after: &str) -> Option<String> {
    let design = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/DESIGN.md");
    let text = std::fs::read_to_string(design).ok()?;
    let body = &text[text.find(after).expect("DESIGN has the section")..];
    let open = body.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let len = body[open..].find("```").expect("the block ends");
    Some(body[open..open + len].to_string())
}

#[test]
fn design_samples_are_verbatim() {
    if let Some(block) = design_block("## 3.") {
        assert_eq!(
            block, DESIGN_SAMPLE,
            "tests/data/design-sample.yaml differs from DESIGN §3"
        );
    }
    if let Some(block) = design_block("Route test cases:") {
        assert_eq!(
            block, DESIGN_SAMPLE_CASES,
            "tests/data/design-sample.tests.yaml differs from DESIGN §6"
        );
    }
}

#[test]
fn design_sample_passes_check_and_its_own_cases() {
    let (_dir, cfg, cases) = design_dir(true);
    let r = bulkhead(["check", "-c", p(&cfg)]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("ok"), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");

    let n = count_cases(DESIGN_SAMPLE_CASES);
    assert_eq!(n, 3);
    let want = format!("{n} passed, 0 failed");
    let r = bulkhead(["test", "-c", p(&cfg), p(&cases)]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(last_line(&r.stdout), want, "{r:?}");

    let r = bulkhead(["test", "-c", p(&cfg), p(&cases), "--variants"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(last_line(&r.stdout), want, "{r:?}");
}

#[test]
fn design_sample_graph_is_consistent() {
    let (_dir, cfg, _) = design_dir(true);
    let r = bulkhead(["graph", "-c", p(&cfg), "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    let edges = v["edges"].as_array().expect("edges");
    // `never: {from: public, to: admin}` holds: the public → admin edges are denied.
    let pa = edges_where(
        edges,
        &[("zone", "public".into()), ("group_zone", "admin".into())],
    );
    assert!(!pa.is_empty());
    assert!(pa.iter().all(|e| e["allowed"] == false), "{pa:?}");
    // The tcp listener forwards to the granted shared group, owned by `shared`.
    let pg = edges_where(edges, &[("listener", "pg".into())]);
    assert_eq!(pg.len(), 1, "{pg:?}");
    assert_eq!(pg[0]["tenant"], "shared");
    assert_eq!(pg[0]["group"], "shared/postgres");
    assert!(pg[0]["route"].is_null());
    let req: Vec<&str> = pg[0]["requires"]
        .as_array()
        .expect("requires")
        .iter()
        .map(|s| s.as_str().expect("name"))
        .collect();
    assert_eq!(sorted(req), ["billing", "reporting"]);
}

#[test]
fn design_sample_without_certs_fails_at_the_cert_lines() {
    let (_dir, cfg, _) = design_dir(false);
    let r = bulkhead(["check", "-c", p(&cfg)]);
    assert_eq!(r.code, 1, "check reads the cert files: {r:?}");
    let ds = diags(&r.stderr, p(&cfg));
    for file in ["certs/acme.pem", "certs/ops.pem", "certs/ops-ca.pem"] {
        let d = diag(&ds, file);
        assert_eq!(d.line, line_of(DESIGN_SAMPLE, file), "{d:?}");
    }

    // Certificates there but their keys missing: the keys are named.
    let (dir, cfg, _) = design_dir(true);
    for key in ["acme.key", "ops.key"] {
        std::fs::remove_file(dir.path().join("certs").join(key)).expect("rm key");
    }
    let r = bulkhead(["check", "-c", p(&cfg)]);
    assert_eq!(r.code, 1, "check reads the key files: {r:?}");
    let ds = diags(&r.stderr, p(&cfg));
    for file in ["certs/acme.key", "certs/ops.key"] {
        let d = diag(&ds, file);
        assert_eq!(d.line, line_of(DESIGN_SAMPLE, file), "{d:?}");
    }
}

// ---------------------------------------------------------------------------
// known gaps

const PG_CASES: &str = r#"cases:
  - name: billing reaches postgres through the tcp listener
    request: { listener: pg, identity: billing, source: 127.0.0.1 }
    expect: { decision: forward, group: platform/postgres }
  - name: an unknown caller does not
    request: { listener: pg, source: 127.0.0.9 }
    expect: { decision: deny, reason: access }
"#;

#[test]
fn tcp_listener_cases_get_the_tcp_decision() {
    let dir = dir_with(&[("t.yaml", PG_CASES)]);
    let r = bulkhead(["test", "-c", EXAMPLE, p(&dir.path().join("t.yaml"))]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(last_line(&r.stdout), "2 passed, 0 failed", "{r:?}");
}
