//! End-to-end tests of route `auth` (DESIGN §2 step 6b, §3 profiles), in
//! process: a real `Proxy` on 127.0.0.1, echo backends, keys and JWKS made
//! at test time (RSA and EC P-256 by rcgen, HS256 `oct` secrets), bcrypt
//! users files. Covered: JWT accept/reject (expiry and nbf with leeway,
//! audience, issuer, signature, kid, `alg: none`, a token of another
//! route's config), claims as route-match facts, `jwt_subject` services on
//! an access list (403), basic auth (good and bad passwords, unknown users,
//! users of another file), `ip_allow` (403), mTLS with a certificate from
//! another CA, and that no failure tells the client why.

#[allow(dead_code)]
mod common;

use base64::Engine;
use bulkhead::pki::Ca;
use common::routing::*;
use common::{sec_backend, SecBackend};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const ISSUER_A: &str = "https://a.issuer.test";
const ISSUER_B: &str = "https://b.issuer.test";
const SECRET_A: &[u8] = b"secret of issuer A, 32 bytes long!!";
const SECRET_B: &[u8] = b"secret of issuer B, 32 bytes long!!";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh key pair: (signing key, public JWK with `kid`).
fn key_pair(alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
    let pair = match alg {
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        _ => rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
    }
    .expect("key pair");
    let pem = pair.serialize_pem();
    let enc = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("signing key");
    let mut jwk = Jwk::from_encoding_key(&enc, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.into());
    (enc, serde_json::to_value(jwk).expect("JWK json"))
}

fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
    json!({ "kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(secret) })
}

/// Signing keys of issuer A's JWKS (RS256, ES256, HS256), and an
/// attacker's RSA key that is in no JWKS.
struct Keys {
    rsa: EncodingKey,
    ec: EncodingKey,
    stranger: EncodingKey,
}

/// Write `a.jwks` (issuer A: RSA `rsa-1`, EC `ec-1`, oct `hs-a`) and
/// `b.jwks` (issuer B: oct `hs-b`) into `dir`.
fn write_jwks(dir: &Path) -> Keys {
    let (rsa, rsa_jwk) = key_pair(Algorithm::RS256, "rsa-1");
    let (ec, ec_jwk) = key_pair(Algorithm::ES256, "ec-1");
    let (stranger, _) = key_pair(Algorithm::RS256, "rsa-1");
    let a = json!({ "keys": [rsa_jwk, ec_jwk, oct_jwk("hs-a", SECRET_A)] });
    let b = json!({ "keys": [oct_jwk("hs-b", SECRET_B)] });
    std::fs::write(dir.join("a.jwks"), a.to_string()).expect("write a.jwks");
    std::fs::write(dir.join("b.jwks"), b.to_string()).expect("write b.jwks");
    Keys { rsa, ec, stranger }
}

fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// `a.users` (alice, carol) and `b.users` (bob).
fn write_users(dir: &Path) {
    let a = format!(
        "# users of route basic-a\nalice:{}\n\ncarol:{}\n",
        bcrypt_hash("wonderland"),
        bcrypt_hash("singer").replacen("$2b$", "$2y$", 1)
    );
    let b = format!("bob:{}\n", bcrypt_hash("builder"));
    std::fs::write(dir.join("a.users"), a).expect("write a.users");
    std::fs::write(dir.join("b.users"), b).expect("write b.users");
}

/// Claims of a token from issuer A for audience `api`, valid for 5 minutes,
/// with `extra` merged in (a `null` removes a claim).
fn claims(iss: &str, extra: Value) -> Value {
    let now = get_current_timestamp();
    let mut c = json!({ "sub": "alice", "iss": iss, "aud": "api", "exp": now + 300, "iat": now });
    if let (Some(map), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    encode(&h, claims, key).expect("sign a token")
}

fn rs(keys: &Keys, claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), claims, &keys.rsa)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn yaml(app: SocketAddr, admin: SocketAddr) -> String {
    fill(
        r#"version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
services:
  alice: { jwt_subject: alice }
access:
  - { group: acme/private, allow: [alice] }
profiles:
  jwt-a:
    auth: { jwt: { jwks: a.jwks, issuer: "${iss_a}", audience: api, algorithms: [RS256, ES256, HS256], leeway: 30s } }
  jwt-b:
    auth: { jwt: { jwks: b.jwks, issuer: "${iss_b}", audience: api, algorithms: [HS256] } }
  basic-a: { auth: { basic: { users_file: a.users } } }
  basic-b: { auth: { basic: { users_file: b.users } } }
  lan-only: { auth: { ip_allow: ["10.0.0.0/8"] } }
  loopback: { auth: { ip_allow: ["127.0.0.0/8"] } }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
      admin: { zone: edge, targets: ["${admin}"] }
      private: { zone: edge, targets: ["${app}"], identity_header: X-Caller }
    routes:
      - { name: panel-admin, match: { path_prefix: /panel/, claims: { role: admin } }, forward: admin, profile: jwt-a }
      - { name: panel, match: { path_prefix: /panel/ }, forward: app, profile: jwt-a }
      - { name: a, match: { path_prefix: /a/ }, forward: app, profile: jwt-a }
      - { name: b, match: { path_prefix: /b/ }, forward: app, profile: jwt-b }
      - { name: private, match: { path_prefix: /private/ }, forward: private, profile: jwt-a }
      - { name: basic-a, match: { path_prefix: /basic-a/ }, forward: app, profile: basic-a }
      - { name: basic-b, match: { path_prefix: /basic-b/ }, forward: app, profile: basic-b }
      - { name: lan, match: { path_prefix: /lan/ }, forward: app, profile: lan-only }
      - { name: loop, match: { path_prefix: /loop/ }, forward: app, profile: loopback }
      - { name: open, match: { path_prefix: / }, forward: app }
"#,
        &[
            ("iss_a", ISSUER_A.to_string()),
            ("iss_b", ISSUER_B.to_string()),
            ("app", app.to_string()),
            ("admin", admin.to_string()),
        ],
    )
}

struct Setup {
    h: Harness,
    keys: Keys,
    app: SecBackend,
    admin: SecBackend,
}

async fn setup() -> Setup {
    let app = sec_backend("app", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let dir = tempdir();
    let keys = write_jwks(dir.path());
    write_users(dir.path());
    let h = Harness::start(dir, &yaml(app.addr, admin.addr)).await;
    Setup {
        h,
        keys,
        app,
        admin,
    }
}

impl Setup {
    async fn get(&self, path: &str, authorization: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        get(self.h.addr("web"), "acme.test", path, &headers).await
    }

    /// `GET path` must be refused with `status` and the bare error body.
    async fn refused(&self, what: &str, path: &str, authorization: Option<&str>, status: u16) {
        let r = self.get(path, authorization).await;
        let kind = if status == 401 {
            "unauthorized"
        } else {
            "deny"
        };
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert_eq!(
            r.body,
            format!("{{\"error\":\"{kind}\"}}"),
            "{what}: the body says no more"
        );
        assert!(
            r.header("www-authenticate").is_none(),
            "{what}: no challenge details"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_are_checked_for_signature_time_issuer_and_audience() {
    let s = setup().await;
    let now = get_current_timestamp();
    let good = claims(ISSUER_A, json!({}));

    // Valid with each algorithm of issuer A's JWKS.
    for (alg, token) in [
        ("RS256", rs(&s.keys, &good)),
        (
            "ES256",
            sign(Algorithm::ES256, Some("ec-1"), &good, &s.keys.ec),
        ),
        (
            "HS256",
            sign(
                Algorithm::HS256,
                Some("hs-a"),
                &good,
                &EncodingKey::from_secret(SECRET_A),
            ),
        ),
        (
            "ES256 without kid",
            sign(Algorithm::ES256, None, &good, &s.keys.ec),
        ),
    ] {
        let auth = bearer(&token);
        let r = s.get("/a/x", Some(&auth)).await;
        assert_eq!(r.status, 200, "{alg}: {r:?}");
        assert_eq!(r.backend(), "app");
        // Forwarded as the client sent it: backends may need it.
        assert_eq!(r.echoed("authorization"), Some(auth.as_str()), "{alg}");
    }
    // Expired, but within the 30 s leeway: still good.
    let r = s
        .get(
            "/a/x",
            Some(&bearer(&rs(
                &s.keys,
                &claims(ISSUER_A, json!({ "exp": now - 10 })),
            ))),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    let cases = [
        ("no token", None),
        (
            "expired beyond the leeway",
            Some(rs(&s.keys, &claims(ISSUER_A, json!({ "exp": now - 120 })))),
        ),
        (
            "not yet valid",
            Some(rs(&s.keys, &claims(ISSUER_A, json!({ "nbf": now + 600 })))),
        ),
        (
            "wrong audience",
            Some(rs(&s.keys, &claims(ISSUER_A, json!({ "aud": "other" })))),
        ),
        (
            "no audience",
            Some(rs(&s.keys, &claims(ISSUER_A, json!({ "aud": null })))),
        ),
        (
            "wrong issuer",
            Some(rs(&s.keys, &claims(ISSUER_B, json!({})))),
        ),
        (
            "no expiry",
            Some(rs(&s.keys, &claims(ISSUER_A, json!({ "exp": null })))),
        ),
        (
            "signed by a key in no JWKS, under a known kid",
            Some(sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &good,
                &s.keys.stranger,
            )),
        ),
        (
            "unknown kid",
            Some(sign(Algorithm::RS256, Some("rsa-9"), &good, &s.keys.rsa)),
        ),
        (
            "HS256 with the wrong secret",
            Some(sign(
                Algorithm::HS256,
                Some("hs-a"),
                &good,
                &EncodingKey::from_secret(SECRET_B),
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                b64url(good.to_string().as_bytes())
            )),
        ),
        (
            "a tampered payload",
            Some({
                let t = rs(&s.keys, &good);
                let parts: Vec<&str> = t.split('.').collect();
                let evil = claims(ISSUER_A, json!({ "sub": "root" }));
                format!(
                    "{}.{}.{}",
                    parts[0],
                    b64url(evil.to_string().as_bytes()),
                    parts[2]
                )
            }),
        ),
        ("garbage", Some("not-a-jwt".to_string())),
    ];
    for (what, token) in &cases {
        let auth = token.as_deref().map(bearer);
        s.refused(what, "/a/x", auth.as_deref(), 401).await;
    }
    // A token sent as basic credentials, or basic credentials on a jwt route.
    s.refused(
        "wrong scheme",
        "/a/x",
        Some(&basic("alice", "wonderland")),
        401,
    )
    .await;
    assert_eq!(s.admin.heads(), 0);
    let line =
        s.h.wait_log("for a refused token", |l| {
            field(l, "decision") == "unauthorized"
        })
        .await;
    assert_eq!(line["status"], 401, "{line}");
    assert_eq!(field(&line, "route"), "a", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_one_routes_config_does_not_open_another() {
    let s = setup().await;
    let a = rs(&s.keys, &claims(ISSUER_A, json!({})));
    let b = sign(
        Algorithm::HS256,
        Some("hs-b"),
        &claims(ISSUER_B, json!({})),
        &EncodingKey::from_secret(SECRET_B),
    );
    assert_eq!(s.get("/a/x", Some(&bearer(&a))).await.status, 200);
    assert_eq!(s.get("/b/x", Some(&bearer(&b))).await.status, 200);
    s.refused(
        "issuer A's token on B's route",
        "/b/x",
        Some(&bearer(&a)),
        401,
    )
    .await;
    s.refused(
        "issuer B's token on A's route",
        "/a/x",
        Some(&bearer(&b)),
        401,
    )
    .await;
    // B's secret signing a token that claims issuer A: A's JWKS has no such key.
    let forged = sign(
        Algorithm::HS256,
        Some("hs-a"),
        &claims(ISSUER_A, json!({})),
        &EncodingKey::from_secret(SECRET_B),
    );
    s.refused(
        "forged with B's secret",
        "/a/x",
        Some(&bearer(&forged)),
        401,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_choose_the_route_and_jwt_subject_passes_the_access_list() {
    let s = setup().await;
    let admin = rs(
        &s.keys,
        &claims(ISSUER_A, json!({ "role": ["admin", "ops"] })),
    );
    let user = rs(&s.keys, &claims(ISSUER_A, json!({ "role": "user" })));
    let r = s.get("/panel/x", Some(&bearer(&admin))).await;
    assert_eq!((r.status, r.backend()), (200, "admin"), "{r:?}");
    let r = s.get("/panel/x", Some(&bearer(&user))).await;
    assert_eq!((r.status, r.backend()), (200, "app"), "{r:?}");
    // Claims of an invalid token are no facts: the route does not match,
    // and the next one wants a valid token.
    let expired_admin = rs(
        &s.keys,
        &claims(
            ISSUER_A,
            json!({ "role": "admin", "exp": get_current_timestamp() - 600 }),
        ),
    );
    s.refused(
        "expired admin token",
        "/panel/x",
        Some(&bearer(&expired_admin)),
        401,
    )
    .await;
    // Claims of issuer B's valid token make the claims route match, but its
    // auth (issuer A) refuses: a matched route does not fall through.
    let b_admin = sign(
        Algorithm::HS256,
        Some("hs-b"),
        &claims(ISSUER_B, json!({ "role": "admin" })),
        &EncodingKey::from_secret(SECRET_B),
    );
    s.refused(
        "issuer B's admin token",
        "/panel/x",
        Some(&bearer(&b_admin)),
        401,
    )
    .await;
    assert_eq!(s.admin.heads(), 1);
    let line =
        s.h.wait_log("for issuer B's admin", |l| {
            field(l, "decision") == "unauthorized" && field(l, "route") == "panel-admin"
        })
        .await;
    assert_eq!(line["status"], 401);

    // The private group admits service `alice` (jwt_subject: alice) only.
    let alice = rs(&s.keys, &claims(ISSUER_A, json!({})));
    let r = s.get("/private/x", Some(&bearer(&alice))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed("x-caller"),
        Some("alice"),
        "identity_header: {r:?}"
    );
    let bob = rs(&s.keys, &claims(ISSUER_A, json!({ "sub": "bob" })));
    s.refused(
        "valid token of another subject",
        "/private/x",
        Some(&bearer(&bob)),
        403,
    )
    .await;
    s.refused("no token", "/private/x", None, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_users_are_checked_against_their_routes_file() {
    let s = setup().await;
    for (path, user, password) in [
        ("/basic-a/x", "alice", "wonderland"),
        ("/basic-a/x", "carol", "singer"),
        ("/basic-b/x", "bob", "builder"),
    ] {
        let auth = basic(user, password);
        let r = s.get(path, Some(&auth)).await;
        assert_eq!(r.status, 200, "{user}: {r:?}");
        assert_eq!(r.echoed("authorization"), Some(auth.as_str()));
    }
    // Again: from the cache of good checks, same answer.
    let r = s
        .get("/basic-a/x", Some(&basic("alice", "wonderland")))
        .await;
    assert_eq!(r.status, 200);
    for (what, path, auth) in [
        ("no credentials", "/basic-a/x", None),
        (
            "bad password",
            "/basic-a/x",
            Some(basic("alice", "wonderlant")),
        ),
        ("empty password", "/basic-a/x", Some(basic("alice", ""))),
        (
            "unknown user",
            "/basic-a/x",
            Some(basic("mallory", "wonderland")),
        ),
        (
            "a user of the other file",
            "/basic-a/x",
            Some(basic("bob", "builder")),
        ),
        (
            "a user of the other file",
            "/basic-b/x",
            Some(basic("alice", "wonderland")),
        ),
        (
            "the hash as password",
            "/basic-b/x",
            Some(basic("bob", &bcrypt_hash("builder"))),
        ),
        ("not base64", "/basic-a/x", Some("Basic ***".to_string())),
        (
            "a bearer token",
            "/basic-a/x",
            Some(bearer(&rs(&s.keys, &claims(ISSUER_A, json!({}))))),
        ),
    ] {
        s.refused(what, path, auth.as_deref(), 401).await;
    }
    // Routes without auth ignore the header (and forward it).
    let auth = basic("nobody", "x");
    let r = s.get("/open", Some(&auth)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("authorization"), Some(auth.as_str()));
    assert_eq!(s.app.heads(), 5, "3 users, 1 cached check, 1 open route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_key_and_users_files_stop_the_start() {
    let dir = tempdir();
    std::fs::write(dir.path().join("a.users"), "alice:hunter2\n").expect("write a.users");
    std::fs::write(dir.path().join("a.jwks"), "{}").expect("write a.jwks");
    let app = any_port();
    let yaml = yaml(app, app);
    let config = bulkhead_config::from_str(&yaml, "t.yaml", dir.path()).expect("config");
    let snap = bulkhead_core::Snapshot::compile(config).expect("compile");
    let err = bulkhead_proxy::Proxy::start_with_logger(
        std::sync::Arc::new(snap),
        bulkhead_proxy::access_log::AccessLogger::off(),
    )
    .await
    .err()
    .expect("the start fails")
    .to_string();
    for want in ["a.jwks", "b.jwks", "a.users", "line 1", "b.users"] {
        assert!(err.contains(want), "{want} in: {err}");
    }
    assert!(
        !err.contains("hunter2"),
        "the password is not repeated: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_admits_only_its_sources() {
    let s = setup().await;
    assert_eq!(s.get("/loop/x", None).await.status, 200);
    s.refused("127.0.0.1 is not in 10.0.0.0/8", "/lan/x", None, 403)
        .await;
    // Credentials do not help.
    let token = rs(&s.keys, &claims(ISSUER_A, json!({})));
    s.refused("with a valid token", "/lan/x", Some(&bearer(&token)), 403)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_a_certificate_from_another_ca() {
    let app = sec_backend("app", Duration::ZERO).await;
    let ca = Ca::new("auth test CA").expect("CA");
    let dir = tempdir();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write CA");
    write_pem(
        dir.path(),
        "svc",
        &ca.server(&["svc.test"]).expect("server cert"),
    );
    let yaml = fill(
        r#"version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
listeners:
  mtls:
    bind: "127.0.0.1:0"
    zone: edge
    protocol: https
    tls:
      certificates: [{ cert: svc.pem, key: svc.key }]
      client_auth: { ca: ca.pem, required: false }
tenants:
  svc:
    hosts: [svc.test]
    target_groups:
      api: { zone: edge, targets: ["${app}"] }
    routes:
      - { name: api, match: { path_prefix: / }, forward: api, auth: { mtls: required } }
"#,
        &[("app", app.addr.to_string())],
    );
    let h = Harness::start(dir, &yaml).await;
    let addr = h.addr("mtls");
    let trust = ca.cert_pem();
    let good = ca
        .client("billing", None, &["billing.internal"])
        .expect("client");
    let stranger = Ca::new("another CA")
        .expect("CA")
        .client("billing", None, &["billing.internal"])
        .expect("client");
    let config = tls_client(&trust, Some(&good), &["http/1.1"]);
    let r = tls_get(addr, "svc.test", "svc.test", "/x", &[], config)
        .await
        .expect("request with a client certificate");
    assert_eq!(r.status, 200, "{r:?}");
    // Optional client auth: no certificate reaches the route, which wants one.
    let config = tls_client(&trust, None, &["http/1.1"]);
    let r = tls_get(addr, "svc.test", "svc.test", "/x", &[], config)
        .await
        .expect("request without a certificate");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, r#"{"error":"unauthorized"}"#);
    // Another CA's certificate fails the handshake (or the first request,
    // with TLS 1.3).
    let config = tls_client(&trust, Some(&stranger), &["http/1.1"]);
    let got = tls_get(addr, "svc.test", "svc.test", "/x", &[], config).await;
    assert!(got.is_err(), "{got:?}");
    assert_eq!(app.heads(), 1);
}
