//! Every defect DESIGN §3 promises to catch is reported at the right line,
//! with a message that names the problem — and all of them in one run.
//!
//! Each config is an inline raw string whose first line is line 1 (no
//! leading newline); the line numbers in the assertions are counted by hand.

use bulkhead_config::{from_str, Config, ConfigError};
use std::path::Path;
use std::time::{Duration, Instant};

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    from_str(text, "test.yaml", Path::new(".")).map_err(|e| e.0)
}

/// The errors of a config that must be rejected.
fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("config was accepted but must be rejected:\n{text}"),
        Err(errors) => errors,
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The error at `line` whose message contains `needle` (panics otherwise).
fn find<'a>(errors: &'a [ConfigError], line: u32, needle: &str) -> &'a ConfigError {
    errors
        .iter()
        .find(|e| e.pos.line == line && e.message.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no error at line {line} containing {needle:?}; got:\n{}",
                render(errors)
            )
        })
}

/// The config is rejected with exactly one error, at `line`, naming `needle`.
fn only(text: &str, line: u32, needle: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got:\n{}",
        render(&errors)
    );
    find(&errors, line, needle).clone()
}

fn accepted(text: &str) -> Config {
    match load(text) {
        Ok(cfg) => cfg,
        Err(errors) => panic!("config must load, got:\n{}", render(&errors)),
    }
}

#[test]
fn errors_render_as_file_line_col_message_hint() {
    let e = only("version: 1\nworkerz: 2\n", 2, "unknown key `workerz`");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "test.yaml:2:1: unknown key `workerz` in the config — did you mean `workers`?"
        ),
        "{text}"
    );
}

#[test]
fn unknown_key_with_did_you_mean() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefx: / }
        forward: app
"#;
    let e = only(text, 10, "unknown key `path_prefx`");
    assert_eq!(e.pos.col, 18, "the column of the key itself");
    assert!(
        e.hint.contains("did you mean `path_prefix`?"),
        "hint: {}",
        e.hint
    );
}

#[test]
fn unknown_key_deep_in_more_keys_table() {
    // A key from the "More keys" table misspelt inside a listener's limits.
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web:
    bind: "127.0.0.1:8080"
    zone: public
    protocol: http
    limits:
      max_conections: 10
"#;
    let e = only(text, 9, "unknown key `max_conections`");
    assert!(
        e.hint.contains("did you mean `max_connections`?"),
        "{}",
        e.hint
    );
}

#[test]
fn undefined_zone() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web: { bind: "127.0.0.1:8080", zone: pubic, protocol: http }
"#;
    only(text, 4, "zone `pubic` is not defined");
}

#[test]
fn undefined_zone_in_flow_group_and_invariant() {
    let text = r#"version: 1
zones: { public: {}, internal: {} }
flows:
  - { from: public, to: [public, intenral] }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: dmz, targets: ["127.0.0.1:9001"] }
invariants:
  - never: { from: public, to: admin }
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 3, "{}", render(&errors));
    find(&errors, 4, "zone `intenral` is not defined");
    find(&errors, 9, "zone `dmz` is not defined");
    find(&errors, 11, "zone `admin` is not defined");
}

#[test]
fn undefined_target_group() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefix: / }
        forward: ap
"#;
    only(text, 11, "target group `acme/ap` is not defined");
}

#[test]
fn undefined_target_group_of_another_tenant_in_access() {
    let text = r#"version: 1
zones: { internal: {} }
tenants:
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
services:
  billing: { spiffe: "spiffe://corp.test/billing" }
access:
  - { group: shared/postgress, allow: [billing] }
"#;
    only(text, 11, "target group `shared/postgress` is not defined");
}

#[test]
fn undefined_tenant() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefix: / }
        forward: nobody/app
"#;
    only(text, 11, "names unknown tenant `nobody`");
}

#[test]
fn undefined_tenant_in_grant() {
    let text = r#"version: 1
zones: { internal: {} }
tenants:
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
    grants:
      - { tenant: acme, groups: [postgres] }
"#;
    only(text, 9, "grant to unknown tenant `acme`");
}

#[test]
fn undefined_listener() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    listeners: [web, wbe]
"#;
    only(text, 8, "listener `wbe` is not defined");
}

#[test]
fn undefined_profile() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefix: / }
        forward: app
        profile: fast
"#;
    only(text, 12, "profile `fast` is not defined");
}

#[test]
fn undefined_service() {
    let text = r#"version: 1
zones: { internal: {} }
tenants:
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
services:
  reporting: { sources: ["127.0.0.2/32"] }
access:
  - { group: shared/postgres, allow: [reporting, billing] }
"#;
    only(text, 11, "service `billing` is not defined");
}

#[test]
fn host_claimed_by_two_tenants() {
    // The second spelling differs only in case and a trailing dot.
    let text = r#"version: 1
tenants:
  acme:
    hosts: [acme.test]
  other:
    hosts: [www.other.test, ACME.test.]
"#;
    only(
        text,
        6,
        "host `acme.test` is claimed by tenants `acme` and `other`",
    );
}

#[test]
fn same_wildcard_in_two_tenants() {
    let text = r#"version: 1
tenants:
  acme:
    hosts: [acme.test, "*.acme.test"]
  other:
    hosts:
      - other.test
      - "*.acme.test"
"#;
    only(
        text,
        8,
        "wildcard `*.acme.test` is claimed by tenants `acme` and `other`",
    );
}

const CROSS_TENANT: &str = r#"version: 1
zones: { public: {}, internal: {} }
tenants:
  acme:
    hosts: [acme.test]
    routes:
      - name: db
        match: { path_prefix: /db/ }
        forward: shared/postgres
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
"#;

#[test]
fn cross_tenant_forward_needs_a_grant() {
    let e = only(CROSS_TENANT, 9, "another tenant's group, without a grant");
    assert!(e.message.contains("route `db` of tenant `acme`"), "{e}");
    assert!(
        e.hint
            .contains("grants: [{ tenant: acme, groups: [postgres] }]"),
        "{e}"
    );
}

#[test]
fn cross_tenant_forward_with_a_grant_loads() {
    let text =
        format!("{CROSS_TENANT}    grants:\n      - {{ tenant: acme, groups: [postgres] }}\n");
    let cfg = accepted(&text);
    assert_eq!(cfg.tenants[1].grants.len(), 1);
    let target = cfg
        .resolve_group(Some(0), "shared/postgres")
        .expect("resolves");
    assert!(cfg.may_use(0, target));
}

#[test]
fn grant_naming_a_missing_group() {
    // Lines 14–15 follow CROSS_TENANT's 13 lines.
    let text = format!(
        "{CROSS_TENANT}    grants:\n      - {{ tenant: acme, groups: [postgres, redis] }}\n"
    );
    only(
        &text,
        15,
        "grant names group `redis`, which tenant `shared` does not have",
    );
}

#[test]
fn duplicate_route_names() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefix: /a/ }
        forward: app
      - name: site
        match: { path_prefix: / }
        forward: app
"#;
    let e = only(text, 12, "route name `site` is used twice in tenant `acme`");
    assert!(e.message.contains("first at line 9"), "{e}");
}

#[test]
fn same_route_name_in_two_tenants_is_fine() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
  other:
    hosts: [other.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9002"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
"#;
    accepted(text);
}

#[test]
fn duplicate_listener_binds() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  web2: { bind: "127.0.0.1:8080", zone: public, protocol: http }
"#;
    only(text, 5, "listener `web2` binds 127.0.0.1:8080 like `web`");
}

#[test]
fn listener_may_not_share_the_admin_socket() {
    let text = r#"version: 1
admin:
  bind: 127.0.0.1:9901
zones: { public: {} }
listeners:
  web: { bind: "127.0.0.1:9901", zone: public, protocol: http }
"#;
    only(text, 6, "listener `web` binds 127.0.0.1:9901 like `admin`");
}

#[test]
fn https_listener_without_certificates() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web-tls:
    bind: "127.0.0.1:8443"
    zone: public
    protocol: https
"#;
    only(
        text,
        4,
        "listener `web-tls` is https but has no certificates",
    );
}

#[test]
fn bad_cidr() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web:
    bind: "127.0.0.1:8080"
    zone: public
    protocol: http
    allow_sources: ["10.0.0.0/8", "10.0.0.0/33"]
services:
  reporting:
    sources:
      - 127.0.0.2
      - not-an-ip
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    find(&errors, 8, "`10.0.0.0/33` is not a CIDR");
    find(&errors, 13, "`not-an-ip` is not a CIDR");
}

#[test]
fn cidr_with_host_bits_set() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web:
    bind: "127.0.0.1:8080"
    zone: public
    protocol: http
    allow_sources: ["10.1.2.3/8"]
"#;
    let e = only(text, 8, "`10.1.2.3/8` has host bits set");
    assert!(e.hint.contains("10.0.0.0/8"), "{e}");
}

#[test]
fn weight_zero_and_negative() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: [{ address: "127.0.0.1:9001", weight: 0 }] }
      canary: { zone: public, targets: ["127.0.0.1:9002"] }
    routes:
      - name: split
        match: { path_prefix: / }
        forward: [{ group: app, weight: 90 }, { group: canary, weight: -1 }]
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    let zero = find(&errors, 7, "weight 0 must be at least 1");
    assert!(zero.hint.contains("drain"), "{zero}");
    find(&errors, 12, "weight -1 must be at least 1");
}

#[test]
fn weight_above_1000() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app:
        zone: public
        targets:
          - { address: "127.0.0.1:9001", weight: 1001 }
"#;
    only(text, 10, "weight must be an integer from 1 to 1000");
}

const ROUTE_HEAD: &str = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
    routes:
"#;

#[test]
fn route_with_two_actions() {
    // Lines 9–12 follow ROUTE_HEAD's 8 lines.
    let text = format!(
        "{ROUTE_HEAD}      - name: both\n        match: {{ path_prefix: / }}\n        forward: app\n        deny: {{ status: 403 }}\n"
    );
    only(
        &text,
        9,
        "route `both` must have exactly one action, found forward and deny",
    );
}

#[test]
fn route_with_no_action() {
    let text = format!("{ROUTE_HEAD}      - name: nothing\n        match: {{ path_prefix: / }}\n");
    only(
        &text,
        9,
        "route `nothing` must have exactly one action, found none",
    );
}

#[test]
fn unsupported_version() {
    let text = r#"version: 2
zones: { public: {} }
"#;
    only(text, 1, "unsupported config version `2`");
}

#[test]
fn missing_version() {
    let text = r#"zones: { public: {} }
log: { access: stderr }
"#;
    let e = only(text, 1, "missing `version`");
    assert!(e.hint.contains("version: 1"), "{e}");
}

#[test]
fn bad_duration() {
    let text = r#"version: 1
drain_timeout: 2x
"#;
    only(text, 2, "drain_timeout `2x` is not a duration");
}

#[test]
fn bad_duration_in_a_health_check() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app:
        zone: public
        targets: ["127.0.0.1:9001"]
        health: { path: /healthz, interval: 2x }
"#;
    only(text, 10, "health.interval `2x` is not a duration");
}

#[test]
fn bad_size() {
    let text = r#"version: 1
zones: { public: {} }
profiles:
  big-cache:
    cache: { ttl: 60s, max_bytes: 64MB }
  bad-cache:
    cache: { ttl: 60s, max_bytes: 64MiBs }
"#;
    only(text, 7, "cache.max_bytes `64MiBs` is not a size");
}

#[test]
fn max_header_bytes_below_minimum() {
    let text = r#"version: 1
zones: { public: {} }
listeners:
  web:
    bind: "127.0.0.1:8080"
    zone: public
    protocol: http
    limits: { max_header_bytes: 8KiB }
  web2:
    bind: "127.0.0.1:8081"
    zone: public
    protocol: http
    limits:
      max_header_bytes: 4KiB
"#;
    let e = only(text, 14, "max_header_bytes is below its minimum of 8KiB");
    assert!(e.hint.contains("8KiB"), "{e}");
}

#[test]
fn admin_on_non_loopback_needs_token_env() {
    let text = r#"version: 1
admin:
  bind: 0.0.0.0:9901
"#;
    only(text, 3, "is not a loopback address but no token is set");

    let with_token = r#"version: 1
admin:
  bind: 0.0.0.0:9901
  token_env: BULKHEAD_ADMIN_TOKEN
"#;
    let cfg = accepted(with_token);
    let admin = cfg.admin.expect("admin section");
    assert_eq!(admin.token_env.as_deref(), Some("BULKHEAD_ADMIN_TOKEN"));
}

#[test]
fn tcp_listener_without_forward() {
    let text = r#"version: 1
zones: { internal: {} }
listeners:
  pg: { bind: "127.0.0.1:15432", zone: internal, protocol: tcp }
"#;
    only(text, 4, "listener `pg` is tcp but has no `forward`");
}

#[test]
fn four_errors_in_one_run_sorted_by_line() {
    // Found in this order: duration (2), CIDR (9), unknown key (17) while
    // parsing, then the undefined zone (14) while validating — so the output
    // being in line order proves the sort.
    let text = r#"version: 1
drain_timeout: 2x
zones: { public: {} }
listeners:
  web:
    bind: "127.0.0.1:8080"
    zone: public
    protocol: http
    allow_sources: ["10.0.0.0/33"]
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: pubilc, targets: ["127.0.0.1:9001"] }
    routes:
      - name: site
        match: { path_prefx: / }
        forward: app
"#;
    let errors = errors(text);
    let lines: Vec<u32> = errors.iter().map(|e| e.pos.line).collect();
    assert_eq!(lines, vec![2, 9, 14, 17], "{}", render(&errors));
    find(&errors, 2, "drain_timeout `2x` is not a duration");
    find(&errors, 9, "`10.0.0.0/33` is not a CIDR");
    find(&errors, 14, "zone `pubilc` is not defined");
    find(&errors, 17, "unknown key `path_prefx`");
}

#[test]
fn duplicate_yaml_keys() {
    let text = r#"version: 1
zones:
  public: {}
  internal: {}
  public: { trusted: true }
"#;
    let e = only(text, 5, "duplicate key `public`");
    assert!(e.message.contains("first at line 3"), "{e}");
}

#[test]
fn invalid_yaml_syntax_reports_a_line() {
    let text = r#"version: 1
zones:
  public: {}
 internal: {}
"#;
    let e = only(text, 4, "invalid YAML");
    assert_eq!(e.file, "test.yaml");
}

#[test]
fn unclosed_flow_mapping_reports_a_line() {
    let text = r#"version: 1
log: { access: off
zones: { public: {} }
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert!(errors[0].message.contains("invalid YAML"), "{}", errors[0]);
    assert!(
        (2..=3).contains(&errors[0].pos.line),
        "the error points near the open brace: {}",
        errors[0]
    );
}

#[test]
fn alias_bomb_is_rejected_quickly() {
    // "Billion laughs": 10 levels of 10 aliases each would expand to 10^10 nodes.
    let mut text =
        String::from("version: 1\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = format!("*x{}", i - 1);
        let items = [p.as_str(); 10].join(", ");
        text.push_str(&format!("x{i}: &x{i} [{items}]\n"));
    }
    let start = Instant::now();
    let errors = errors(&text);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert!(
        errors[0].message.contains("too many nodes"),
        "{}",
        errors[0]
    );
}

#[test]
fn deep_nesting_is_rejected() {
    let depth = 200;
    let text = format!(
        "version: 1\nx: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let errors = errors(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("nesting is too deep")),
        "{}",
        render(&errors)
    );
}

#[test]
fn empty_redirect_or_respond_is_an_error_not_a_dropped_route() {
    // Regression: `redirect:` / `respond:` with no value used to drop the
    // route silently, so the config loaded with the route missing.
    let text = format!("{ROUTE_HEAD}      - name: moved\n        match: {{ path_exact: /old }}\n        redirect:\n");
    only(&text, 11, "redirect is missing `location`");
    let text = format!(
        "{ROUTE_HEAD}      - name: canned\n        match: {{ path_exact: /x }}\n        respond:\n"
    );
    only(&text, 11, "respond is missing `status`");
}

#[test]
fn bad_values_are_reported_at_the_value_not_the_mapping() {
    let text = r#"version: 1
zones: { public: {} }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app:
        zone: public
        targets: ["127.0.0.1:9001"]
        health:
          interval: 2s
          path: healthz
services:
  billing:
    sources: ["127.0.0.2"]
    spiffe: corp.test/billing
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    find(&errors, 12, "health.path `healthz` must start with `/`");
    find(
        &errors,
        16,
        "spiffe id `corp.test/billing` must start with spiffe://",
    );
}
