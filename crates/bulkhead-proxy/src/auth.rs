//! Request authentication for routes whose `auth` is `jwt` or `basic`
//! (DESIGN §2 step 6b, §3 profiles).
//!
//! A [`Verifiers`] is built with each generation: every distinct `jwt`
//! config (its JWKS file read once: RSA and P-256 EC public keys, `oct`
//! HMAC secrets) and every distinct `basic` users file of the snapshot.
//!
//! Per request, before `decide()`, a `Bearer` token is checked against
//! every `jwt` config ([`Verifiers::credentials`]; cheap, and route
//! matching needs the claims) and the result added to the connection's
//! credentials: which configs accepted it ([`Credentials::verified`], keyed
//! by [`bulkhead_core::auth_key`]), its claims and `sub`. The core then
//! asks, for the matched route, whether *its* config is among those that
//! accepted — so a token good for one route's issuer does not open another.
//!
//! Passwords are slow to check on purpose, so `Basic` credentials are only
//! checked when the decided route's auth is `basic` and it answered 401
//! ([`Verifiers::basic`]), against that route's users file alone; the
//! request is then decided again with the user added. Routes without
//! `basic` auth never pay for a password hash.
//!
//! `mtls` and `ip_allow` need nothing here: the connection's verified
//! certificate and the peer address already are the facts.
//!
//! Failures never say why to the client (the route answers 401
//! `unauthorized`); the reason is logged at debug level, without the token
//! or password. The `Authorization` header is forwarded upstream unchanged.

use bulkhead_config::{Auth, JwtAuth};
use bulkhead_core::{auth_key, Credentials, Decision, DecisionKind, Snapshot};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a successful password check is remembered.
const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(60);
/// How many successful password checks are remembered at most.
const PASSWORD_CACHE_MAX: usize = 4096;
/// The largest bcrypt cost accepted in a users file (2^16 rounds, seconds per check).
const BCRYPT_MAX_COST: u32 = 16;
/// The largest argon2 memory cost accepted in a users file, in KiB (256 MiB).
const ARGON2_MAX_M_COST: u32 = 256 * 1024;
/// The largest JWT leeway honoured (larger values are clamped).
const MAX_LEEWAY_SECS: u64 = 24 * 3600;

/// Why a JWKS or users file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The JWKS file of a `jwt` config.
    #[error("auth jwt: jwks `{}`: {why}", path.display())]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The users file of a `basic` config.
    #[error("auth basic: users_file `{}`: {why}", path.display())]
    Users {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Everything that verifies `Authorization` headers for one generation.
pub struct Verifiers {
    jwt: Vec<JwtVerifier>,
    basic: Vec<UsersFile>,
    cache: Mutex<PasswordCache>,
    /// Bounds the password hashes computed at once (bcrypt and argon2 are
    /// slow on purpose): at most one per core.
    hashing: Arc<Semaphore>,
    /// Salts the password cache's keys.
    salt: [u8; 16],
}

impl Default for Verifiers {
    fn default() -> Self {
        Verifiers::new(Vec::new(), Vec::new())
    }
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifiers")
            .field("jwt", &self.jwt.len())
            .field("basic", &self.basic.len())
            .finish()
    }
}

impl Verifiers {
    fn new(jwt: Vec<JwtVerifier>, basic: Vec<UsersFile>) -> Verifiers {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Verifiers {
            jwt,
            basic,
            cache: Mutex::new(PasswordCache::default()),
            hashing: Arc::new(Semaphore::new(cores.max(1))),
            salt: rand::random(),
        }
    }

    /// Load every distinct `jwt` and `basic` config `snapshot` uses (routes,
    /// listener and tenant default profiles). Every unreadable file is an error.
    pub fn build(snapshot: &Snapshot) -> Result<Verifiers, Vec<AuthError>> {
        let routes = snapshot
            .tenants
            .iter()
            .flat_map(|t| t.routes.iter().map(|r| &*r.policy));
        let listeners = snapshot.listeners.iter().map(|l| &l.policy);
        Verifiers::from_auths(routes.chain(listeners).filter_map(|p| p.auth.as_ref()))
    }

    /// [`Verifiers::build`] from a list of auth configs (duplicates and
    /// `mtls` / `ip_allow` are skipped).
    pub fn from_auths<'a>(
        auths: impl IntoIterator<Item = &'a Auth>,
    ) -> Result<Verifiers, Vec<AuthError>> {
        let (mut jwt, mut basic, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = Vec::new();
        for auth in auths {
            let Some(key) = auth_key(auth) else { continue };
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            match auth {
                Auth::Jwt(config) => match JwtVerifier::load(key, config) {
                    Ok(v) => jwt.push(v),
                    Err(e) => errors.push(e),
                },
                Auth::Basic { users_file } => match UsersFile::load(key, users_file) {
                    Ok(u) => basic.push(u),
                    Err(e) => errors.push(e),
                },
                Auth::Mtls { .. } | Auth::IpAllow(_) => {}
            }
        }
        if errors.is_empty() {
            Ok(Verifiers::new(jwt, basic))
        } else {
            Err(errors)
        }
    }

    /// True when no route needs a JWT or a password.
    pub fn is_empty(&self) -> bool {
        self.jwt.is_empty() && self.basic.is_empty()
    }

    /// The credentials of one request before `decide()`: `base` (the
    /// connection's) plus what a `Bearer` token proves against every `jwt`
    /// config. `None` when there is no token to check (no `jwt` config, no
    /// or another `Authorization` scheme, more than one `Authorization`
    /// header): `base` stands as it is. A token no config accepts gives
    /// `Some` with an empty `verified` list and no claims.
    pub fn credentials(
        &self,
        headers: &http::HeaderMap,
        base: &Credentials,
    ) -> Option<Credentials> {
        if self.jwt.is_empty() {
            return None;
        }
        let token = authorization(headers, "bearer")?;
        let mut out = base.clone();
        let mut verified = Vec::new();
        for v in &self.jwt {
            match v.verify(token) {
                Ok(claims) => {
                    if out.jwt_claims.is_none() {
                        out.jwt_subject = claims.get("sub").and_then(Value::as_str).map(Into::into);
                        out.jwt_claims = Some(flatten_claims(&claims));
                    }
                    verified.push(v.key.clone());
                }
                Err(why) => tracing::debug!(why, "bearer token rejected by a jwt config"),
            }
        }
        out.verified = Some(verified);
        Some(out)
    }

    /// After `decide()`: when `decision` is a 401 of a route whose auth is
    /// `basic`, check the request's `Basic` credentials against that
    /// route's users file, and give the credentials to decide again with
    /// (`creds` plus the user, verified by that file). `None` leaves the
    /// 401 as it is.
    pub async fn basic(
        &self,
        snapshot: &Snapshot,
        decision: &Decision<'_>,
        headers: &http::HeaderMap,
        creds: &Credentials,
    ) -> Option<Credentials> {
        if self.basic.is_empty() || decision.kind != DecisionKind::Unauthorized {
            return None;
        }
        let (l, t, r) = (decision.listener?, decision.tenant?, decision.route?);
        let route = snapshot.tenants.get(t as usize)?.routes.get(r as usize)?;
        let listener = snapshot.listeners.get(l as usize)?;
        // The auth `decide()` checked: the route's, else the listener's.
        let auth = route
            .policy
            .auth
            .as_ref()
            .or(listener.policy.auth.as_ref())?;
        if !matches!(auth, Auth::Basic { .. }) {
            return None;
        }
        let key = auth_key(auth)?;
        let user = self.check_users_file(&key, headers).await?;
        let mut out = creds.clone();
        out.basic_user = Some(user);
        out.verified.get_or_insert_with(Vec::new).push(key);
        Some(out)
    }

    /// The user whose `Basic` credentials in `headers` are right for the
    /// users file of auth key `key`.
    async fn check_users_file(&self, key: &str, headers: &http::HeaderMap) -> Option<String> {
        let file = self.basic.iter().find(|f| f.key == key)?;
        let Some((user, password)) = authorization(headers, "basic").and_then(decode_basic) else {
            tracing::debug!("no or malformed basic credentials");
            return None;
        };
        let ok = match file.users.get(&user) {
            Some(hash) => self.check_password(&file.key, &user, &password, hash).await,
            None => {
                // Unknown users cost one hash too: timing does not tell who exists.
                if let Some(hash) = file.users.values().next() {
                    let _ = self.hash_matches(hash.clone(), password).await;
                }
                false
            }
        };
        if !ok {
            tracing::debug!(file = %file.path.display(), "basic credentials rejected");
            return None;
        }
        Some(user)
    }

    async fn check_password(
        &self,
        file_key: &str,
        user: &str,
        password: &[u8],
        hash: &PasswordHash,
    ) -> bool {
        let cache_key = self.cache_key(file_key, user, password);
        if self.lock_cache().hit(&cache_key) {
            return true;
        }
        let ok = self.hash_matches(hash.clone(), password.to_vec()).await;
        if ok {
            self.lock_cache().insert(cache_key);
        }
        ok
    }

    /// Verify on the blocking pool, at most one hash per core at a time.
    async fn hash_matches(&self, hash: PasswordHash, password: Vec<u8>) -> bool {
        let Ok(permit) = self.hashing.clone().acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the request went away.
            let _permit = permit;
            hash.matches(&password)
        })
        .await
        .unwrap_or(false)
    }

    fn cache_key(&self, file_key: &str, user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        for part in [file_key.as_bytes(), user.as_bytes(), password] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, PasswordCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------
// JWT

/// One usable key of a JWKS.
struct JwkEntry {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// One `jwt` config: its keys and what a token must say.
struct JwtVerifier {
    key: String,
    keys: Vec<JwkEntry>,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl JwtVerifier {
    fn load(key: String, config: &JwtAuth) -> Result<JwtVerifier, AuthError> {
        let err = |why: String| AuthError::Jwks {
            path: config.jwks.clone(),
            why,
        };
        let mut algorithms = Vec::new();
        for a in &config.algorithms {
            match Algorithm::from_str(a) {
                Ok(alg @ (Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256)) => {
                    algorithms.push(alg)
                }
                _ => return Err(err(format!("algorithm `{a}` is not supported"))),
            }
        }
        let text = std::fs::read_to_string(&config.jwks).map_err(|e| err(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a JWKS (`{{\"keys\": [...]}}`): {e}")))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = match &jwk.common.key_algorithm {
                None => None,
                // An algorithm this proxy does not verify (RS512, RSA-OAEP…): not for us.
                Some(ka) => match Algorithm::try_from(*ka) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    AlgorithmFamily::Ec
                }
                AlgorithmParameters::OctetKey(_) => AlgorithmFamily::Hmac,
                // Other curves, Ed25519, unknown key types: not verifiable here.
                _ => continue,
            };
            if !algorithms.iter().any(|a| a.family() == family) {
                continue;
            }
            let decoding = DecodingKey::from_jwk(jwk)
                .map_err(|e| err(format!("key {} (index {i}): {e}", kid_text(jwk))))?;
            keys.push(JwkEntry {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key: decoding,
            });
        }
        if keys.is_empty() {
            let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
            return Err(err(format!(
                "no key in it can verify {} tokens (RSA, EC P-256 or oct keys with `use: sig`)",
                names.join("/")
            )));
        }
        Ok(JwtVerifier {
            key,
            keys,
            algorithms,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs().min(MAX_LEEWAY_SECS),
        })
    }

    /// The claims of `token` when it is valid for this config; else why not
    /// (for debug logs only).
    fn verify(&self, token: &str) -> Result<Map<String, Value>, &'static str> {
        // `alg: none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token header")?;
        if !self.algorithms.contains(&header.alg) {
            return Err("token algorithm not allowed");
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        // A token naming a `kid` is tried against the keys with that kid
        // (and keys without one); a token without is tried against all.
        let candidates = self.keys.iter().filter(|k| {
            k.family == header.alg.family()
                && k.alg.is_none_or(|a| a == header.alg)
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = "no key for the token's kid and algorithm";
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = reason(e.kind()),
            }
        }
        Err(last)
    }
}

fn kid_text(jwk: &jsonwebtoken::jwk::Jwk) -> String {
    jwk.common
        .key_id
        .as_deref()
        .map_or("without kid".into(), |k| format!("`{k}`"))
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "bad signature",
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not yet valid (nbf)",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::MissingRequiredClaim(_) => "a required claim (exp, iss or aud) is missing",
        K::InvalidAlgorithm => "algorithm does not fit the key",
        _ => "invalid token",
    }
}

/// Claims as route-match facts: strings as they are, numbers and booleans
/// as text, each scalar of an array as its own value (so `role: admin`
/// matches `"role": ["admin", "dev"]`), objects as compact JSON, nulls dropped.
fn flatten_claims(claims: &Map<String, Value>) -> Vec<(String, String)> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Array(_) | Value::Object(_) => Some(v.to_string()),
        }
    }
    let mut out = Vec::new();
    for (name, value) in claims {
        match value {
            Value::Array(items) => {
                out.extend(items.iter().filter_map(scalar).map(|v| (name.clone(), v)))
            }
            v => out.extend(scalar(v).map(|v| (name.clone(), v))),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// basic

/// A password hash from a users file.
#[derive(Clone)]
enum PasswordHash {
    Bcrypt(Arc<str>),
    Argon2(Arc<str>),
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The scheme only: hashes stay out of logs and panics.
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "bcrypt(..)",
            PasswordHash::Argon2(_) => "argon2id(..)",
        })
    }
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            let cost = text
                .get(4..6)
                .and_then(|c| c.parse::<u32>().ok())
                .filter(|_| text.as_bytes().get(6) == Some(&b'$'));
            let body_ok = text.len() == 60
                && text[7..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
            return match cost {
                Some(c) if body_ok && (4..=BCRYPT_MAX_COST).contains(&c) => {
                    Ok(PasswordHash::Bcrypt(text.into()))
                }
                Some(c) if body_ok && c > BCRYPT_MAX_COST => Err(format!(
                    "bcrypt cost {c} is over {BCRYPT_MAX_COST} (each check would take too long)"
                )),
                _ => Err("malformed bcrypt hash".into()),
            };
        }
        if text.starts_with("$argon2id$") {
            let parsed = argon2::PasswordHash::new(text)
                .map_err(|_| "malformed argon2id hash".to_string())?;
            let params = argon2::Params::try_from(&parsed)
                .map_err(|_| "malformed argon2id parameters".to_string())?;
            if params.m_cost() > ARGON2_MAX_M_COST {
                return Err(format!(
                    "argon2id memory cost {} KiB is over {ARGON2_MAX_M_COST} KiB",
                    params.m_cost()
                ));
            }
            return Ok(PasswordHash::Argon2(text.into()));
        }
        Err("not a bcrypt ($2b$/$2y$) or argon2id ($argon2id$) hash; plaintext passwords are never accepted".into())
    }

    /// Slow: run on the blocking pool.
    fn matches(&self, password: &[u8]) -> bool {
        use argon2::PasswordVerifier;
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Argon2(h) => argon2::Argon2::default()
                .verify_password(password, &**h)
                .is_ok(),
        }
    }
}

/// One `basic` users file: `user:hash` per line.
struct UsersFile {
    key: String,
    path: PathBuf,
    users: HashMap<String, PasswordHash>,
}

impl UsersFile {
    fn load(key: String, path: &Path) -> Result<UsersFile, AuthError> {
        let err = |why: String| AuthError::Users {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let users = parse_users(&text).map_err(err)?;
        if users.is_empty() {
            return Err(err("no users in it".into()));
        }
        Ok(UsersFile {
            key,
            path: path.to_path_buf(),
            users,
        })
    }
}

/// Parse a users file: one `user:hash` per line; blank lines and lines
/// starting with `#` are skipped. Errors name the line, never the hash.
fn parse_users(text: &str) -> Result<HashMap<String, PasswordHash>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {n}: expected `user:hash`"));
        };
        let user = user.trim();
        if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("line {n}: empty user name or one with spaces"));
        }
        let hash = PasswordHash::parse(hash.trim()).map_err(|e| format!("line {n}: {e}"))?;
        if users.insert(user.to_string(), hash).is_some() {
            return Err(format!("line {n}: user `{user}` is listed twice"));
        }
    }
    Ok(users)
}

/// The credentials of the request's one `Authorization` header when its
/// scheme is `scheme` (lowercase; compared case-insensitively).
fn authorization<'h>(headers: &'h http::HeaderMap, scheme: &str) -> Option<&'h str> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let (given, rest) = value.to_str().ok()?.trim().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// `base64(user:password)` → (user, password bytes).
fn decode_basic(encoded: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&raw[..colon]).ok()?.to_string();
    if user.is_empty() {
        return None;
    }
    Some((user, raw[colon + 1..].to_vec()))
}

/// Successful password checks, remembered for [`PASSWORD_CACHE_TTL`] so
/// that a busy client does not cost a bcrypt per request. Keys are salted
/// hashes of (file, user, password); failures are never remembered.
#[derive(Default)]
struct PasswordCache {
    entries: HashMap<[u8; 32], Instant>,
}

impl PasswordCache {
    fn hit(&mut self, key: &[u8; 32]) -> bool {
        match self.entries.get(key) {
            Some(at) if at.elapsed() < PASSWORD_CACHE_TTL => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, key: [u8; 32]) {
        if self.entries.len() >= PASSWORD_CACHE_MAX {
            self.entries
                .retain(|_, at| at.elapsed() < PASSWORD_CACHE_TTL);
            if self.entries.len() >= PASSWORD_CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(key, Instant::now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a shared secret of at least 32 bytes!!";

    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
        json!({ "kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(secret) })
    }

    /// A fresh key pair for `alg` (ES256 or RS256): (signing key, public JWK).
    fn key_pair(alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
        let (sig, enc): (_, fn(&[u8]) -> _) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            _ => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
        };
        let pair = rcgen::KeyPair::generate_for(sig).unwrap();
        let enc = enc(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        (enc, serde_json::to_value(jwk).unwrap())
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        fn jwt(&self, name: &str, keys: &[Value], algs: &[&str]) -> Auth {
            let jwks = self.file(name, &json!({ "keys": keys }).to_string());
            Auth::Jwt(JwtAuth {
                jwks,
                issuer: Some("https://issuer.test".into()),
                audience: Some("bulkhead".into()),
                algorithms: algs.iter().map(|a| a.to_string()).collect(),
                leeway: Duration::from_secs(30),
            })
        }
    }

    fn claims(extra: Value) -> Value {
        let now = get_current_timestamp();
        let mut c = json!({
            "sub": "alice", "iss": "https://issuer.test", "aud": "bulkhead",
            "exp": now + 300, "iat": now,
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn token(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(Into::into);
        encode(&h, claims, key).unwrap()
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    fn basic(user: &str, password: &str) -> http::HeaderMap {
        use base64::Engine;
        let mut h = http::HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    async fn accepted_by(v: &Verifiers, headers: &http::HeaderMap) -> Vec<String> {
        v.credentials(headers, &Credentials::default())
            .and_then(|c| c.verified)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn hs256_es256_rs256_tokens_verify_and_give_claims() {
        let fx = Fixture::new();
        let (es, es_jwk) = key_pair(Algorithm::ES256, "ec1");
        let (rs, rs_jwk) = key_pair(Algorithm::RS256, "rsa1");
        let auth = fx.jwt(
            "jwks.json",
            &[oct_jwk("h1", SECRET), es_jwk, rs_jwk],
            &["HS256", "ES256", "RS256"],
        );
        let v = Verifiers::from_auths([&auth]).unwrap();
        let key = auth_key(&auth).unwrap();
        let c = claims(json!({ "role": ["admin", "dev"], "level": 3, "staff": true }));
        for t in [
            token(
                Algorithm::HS256,
                Some("h1"),
                &c,
                &EncodingKey::from_secret(SECRET),
            ),
            token(Algorithm::ES256, Some("ec1"), &c, &es),
            token(Algorithm::RS256, Some("rsa1"), &c, &rs),
            // No kid: every key of the right family is tried.
            token(Algorithm::ES256, None, &c, &es),
        ] {
            let creds = v.credentials(&bearer(&t), &Credentials::default()).unwrap();
            assert_eq!(creds.verified, Some(vec![key.clone()]));
            assert_eq!(creds.jwt_subject.as_deref(), Some("alice"));
            let facts = creds.jwt_claims.unwrap();
            for pair in [
                ("role", "admin"),
                ("role", "dev"),
                ("level", "3"),
                ("staff", "true"),
            ] {
                assert!(
                    facts.contains(&(pair.0.into(), pair.1.into())),
                    "{pair:?} in {facts:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn bad_tokens_verify_nowhere() {
        let fx = Fixture::new();
        let (es, es_jwk) = key_pair(Algorithm::ES256, "ec1");
        let (other_es, _) = key_pair(Algorithm::ES256, "ec1");
        let auth = fx.jwt("jwks.json", &[es_jwk], &["ES256"]);
        let v = Verifiers::from_auths([&auth]).unwrap();
        let now = get_current_timestamp();
        let rejected = [
            ("expired beyond leeway", claims(json!({ "exp": now - 120 }))),
            ("not yet valid", claims(json!({ "nbf": now + 600 }))),
            ("wrong audience", claims(json!({ "aud": "someone-else" }))),
            (
                "wrong issuer",
                claims(json!({ "iss": "https://evil.test" })),
            ),
            ("no exp", {
                let mut c = claims(json!({}));
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            ("no iss", {
                let mut c = claims(json!({}));
                c.as_object_mut().unwrap().remove("iss");
                c
            }),
            ("no aud", {
                let mut c = claims(json!({}));
                c.as_object_mut().unwrap().remove("aud");
                c
            }),
        ];
        for (what, c) in &rejected {
            let t = token(Algorithm::ES256, Some("ec1"), c, &es);
            assert!(accepted_by(&v, &bearer(&t)).await.is_empty(), "{what}");
        }
        // Within the leeway: accepted.
        let t = token(
            Algorithm::ES256,
            Some("ec1"),
            &claims(json!({ "exp": now - 10 })),
            &es,
        );
        assert_eq!(accepted_by(&v, &bearer(&t)).await.len(), 1);
        // Another key under the same kid; an unknown kid.
        let c = claims(json!({}));
        let t = token(Algorithm::ES256, Some("ec1"), &c, &other_es);
        assert!(
            accepted_by(&v, &bearer(&t)).await.is_empty(),
            "wrong signature"
        );
        let t = token(Algorithm::ES256, Some("nope"), &c, &es);
        assert!(accepted_by(&v, &bearer(&t)).await.is_empty(), "unknown kid");
        // An algorithm the config does not allow, with a key it does not have.
        let t = token(
            Algorithm::HS256,
            None,
            &c,
            &EncodingKey::from_secret(SECRET),
        );
        assert!(
            accepted_by(&v, &bearer(&t)).await.is_empty(),
            "HS256 not allowed"
        );
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(c.to_string().as_bytes())
        );
        assert!(accepted_by(&v, &bearer(&none)).await.is_empty(), "alg none");
        // Garbage.
        assert!(accepted_by(&v, &bearer("not.a.token")).await.is_empty());
        assert!(accepted_by(&v, &bearer("")).await.is_empty());
    }

    #[tokio::test]
    async fn a_public_key_is_no_hmac_secret() {
        // Algorithm confusion: HS256 signed with the RSA public key's bytes,
        // against a config that allows both families.
        let fx = Fixture::new();
        let (_, rs_jwk) = key_pair(Algorithm::RS256, "k");
        let n = rs_jwk["n"].as_str().unwrap().to_string();
        let auth = fx.jwt("jwks.json", &[rs_jwk], &["RS256", "HS256"]);
        let v = Verifiers::from_auths([&auth]).unwrap();
        let t = token(
            Algorithm::HS256,
            Some("k"),
            &claims(json!({})),
            &EncodingKey::from_secret(n.as_bytes()),
        );
        assert!(accepted_by(&v, &bearer(&t)).await.is_empty());
    }

    #[tokio::test]
    async fn a_token_is_accepted_only_by_the_configs_it_fits() {
        let fx = Fixture::new();
        let a = fx.jwt("a.json", &[oct_jwk("h1", SECRET)], &["HS256"]);
        let mut b = fx.jwt("b.json", &[oct_jwk("h1", SECRET)], &["HS256"]);
        if let Auth::Jwt(j) = &mut b {
            j.audience = Some("other-api".into());
        }
        let v = Verifiers::from_auths([&a, &b, &a]).unwrap();
        assert_eq!(v.jwt.len(), 2, "duplicates load once");
        let t = token(
            Algorithm::HS256,
            Some("h1"),
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET),
        );
        assert_eq!(
            accepted_by(&v, &bearer(&t)).await,
            vec![auth_key(&a).unwrap()]
        );
    }

    #[test]
    fn jwks_errors_are_reported() {
        let fx = Fixture::new();
        let missing = Auth::Jwt(JwtAuth {
            jwks: fx.dir.path().join("missing.json"),
            issuer: None,
            audience: None,
            algorithms: vec!["RS256".into()],
            leeway: Duration::from_secs(30),
        });
        let not_json = fx.jwt("x.json", &[], &["RS256"]);
        if let Auth::Jwt(j) = &not_json {
            std::fs::write(&j.jwks, "{").unwrap();
        }
        // Only an HMAC key, but the config wants RS256.
        let unusable = fx.jwt("y.json", &[oct_jwk("h", SECRET)], &["RS256"]);
        let errors = Verifiers::from_auths([&missing, &not_json, &unusable]).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[2].to_string().contains("no key in it"),
            "{}",
            errors[2]
        );
        // Keys for other purposes or curves are skipped, not errors.
        let (_, es_jwk) = key_pair(Algorithm::ES256, "ec");
        let enc = json!({ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" });
        let okp = json!({ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" });
        let weird = json!({ "kty": "XYZ" });
        let ok = fx.jwt("z.json", &[enc, okp, weird, es_jwk], &["ES256"]);
        let v = Verifiers::from_auths([&ok]).unwrap();
        assert_eq!(v.jwt[0].keys.len(), 1);
    }

    fn bcrypt_hash(password: &str) -> String {
        bcrypt::hash_with_salt(password, 4, [7; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB)
    }

    fn argon2_hash(password: &str) -> String {
        use argon2::PasswordHasher;
        let params = argon2::Params::new(8 * 1024, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password_with_salt(password.as_bytes(), b"saltsaltsaltsalt")
            .unwrap()
            .to_string()
    }

    #[test]
    fn users_files_parse_strictly() {
        let good = format!(
            "# users\n\nalice:{}\n  bob : {}  \ncarol:{}\n",
            bcrypt_hash("a"),
            argon2_hash("b"),
            bcrypt_hash("c").replacen("$2b$", "$2y$", 1)
        );
        let users = parse_users(&good).unwrap();
        assert_eq!(users.len(), 3);
        assert!(users.get("alice").unwrap().matches(b"a"));
        assert!(!users.get("alice").unwrap().matches(b"b"));
        assert!(users.get("bob").unwrap().matches(b"b"));
        assert!(users.get("carol").unwrap().matches(b"c"));
        for (text, what) in [
            ("alice:secret\n", "plaintext"),
            ("alice:{SHA}abc\n", "other scheme"),
            ("alice\n", "no colon"),
            (
                ":$2b$04$xxxxxxxxxxxxxxxxxxxxxuAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
                "no user",
            ),
            ("alice:$2b$04$short\n", "short bcrypt"),
            ("alice:$argon2id$garbage\n", "bad argon2"),
            (
                "alice:$argon2i$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
                "argon2i",
            ),
        ] {
            let e = parse_users(text).unwrap_err();
            assert!(e.starts_with("line "), "{what}: {e}");
            assert!(
                !e.contains("secret"),
                "{what}: the error repeats the line: {e}"
            );
        }
        let twice = format!("a:{h}\na:{h}\n", h = bcrypt_hash("x"));
        assert!(parse_users(&twice).unwrap_err().contains("twice"));
        let costly = bcrypt_hash("x").replacen("$04$", "$20$", 1);
        assert!(parse_users(&format!("a:{costly}"))
            .unwrap_err()
            .contains("cost"));
    }

    #[tokio::test]
    async fn basic_users_verify_against_their_own_file() {
        let fx = Fixture::new();
        let a = Auth::Basic {
            users_file: fx.file("a.users", &format!("alice:{}\n", bcrypt_hash("wonderland"))),
        };
        let b = Auth::Basic {
            users_file: fx.file("b.users", &format!("bob:{}\n", argon2_hash("builder"))),
        };
        let v = Verifiers::from_auths([&a, &b]).unwrap();
        let (ka, kb) = (auth_key(&a).unwrap(), auth_key(&b).unwrap());
        let user = |k: &str, h: http::HeaderMap| {
            let (v, k) = (&v, k.to_string());
            async move { v.check_users_file(&k, &h).await }
        };
        assert_eq!(
            user(&ka, basic("alice", "wonderland")).await.as_deref(),
            Some("alice")
        );
        assert_eq!(
            user(&kb, basic("bob", "builder")).await.as_deref(),
            Some("bob")
        );
        assert_eq!(user(&ka, basic("alice", "wrong")).await, None);
        assert_eq!(user(&ka, basic("alice", "")).await, None);
        assert_eq!(user(&ka, basic("mallory", "x")).await, None);
        assert_eq!(
            user(&kb, basic("alice", "wonderland")).await,
            None,
            "another file"
        );
        assert_eq!(
            user(&ka, basic("bob", "builder")).await,
            None,
            "another file"
        );
        assert_eq!(user("basic:nope", basic("alice", "wonderland")).await, None);
        // Good checks are remembered, bad ones are not.
        assert_eq!(v.lock_cache().entries.len(), 2);
        assert_eq!(
            user(&ka, basic("alice", "wonderland")).await.as_deref(),
            Some("alice")
        );
        assert_eq!(v.lock_cache().entries.len(), 2);
    }

    #[tokio::test]
    async fn headers_that_prove_nothing() {
        let fx = Fixture::new();
        let a = Auth::Basic {
            users_file: fx.file("a.users", &format!("alice:{}\n", bcrypt_hash("pw"))),
        };
        let jwt = fx.jwt("jwks.json", &[oct_jwk("h1", SECRET)], &["HS256"]);
        let v = Verifiers::from_auths([&a, &jwt]).unwrap();
        let ka = auth_key(&a).unwrap();
        let base = Credentials {
            mtls: true,
            cert_dns: vec!["client.test".into()],
            ..Credentials::default()
        };
        // No header, or basic credentials: nothing for the token check.
        assert!(v.credentials(&http::HeaderMap::new(), &base).is_none());
        assert!(v.credentials(&basic("alice", "pw"), &base).is_none());
        // Two headers: ambiguous, nothing checked.
        let t = token(
            Algorithm::HS256,
            Some("h1"),
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET),
        );
        let mut two = bearer(&t);
        two.append(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        assert!(v.credentials(&two, &base).is_none());
        let mut two = basic("alice", "pw");
        two.append(http::header::AUTHORIZATION, "Basic eA==".parse().unwrap());
        assert_eq!(v.check_users_file(&ka, &two).await, None);
        // A bad token: verified nowhere, the connection's facts kept.
        let c = v.credentials(&bearer("x.y.z"), &base).unwrap();
        assert_eq!(c.verified, Some(vec![]));
        assert!(c.mtls && c.cert_dns == base.cert_dns && c.jwt_claims.is_none());
        // Malformed basic credentials.
        for value in [
            "Digest x",
            "Basic !!!",
            "Basic",
            "Basic bm9jb2xvbg==",
            "Basic OnB3",
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(v.check_users_file(&ka, &h).await, None, "{value}");
        }
        // No verifiers: nothing to do, whatever the header.
        assert!(Verifiers::default()
            .credentials(&bearer(&t), &base)
            .is_none());
    }

    #[test]
    fn password_cache_is_bounded_and_expires() {
        let mut cache = PasswordCache::default();
        for i in 0..(PASSWORD_CACHE_MAX + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(k);
        }
        assert!(cache.entries.len() <= PASSWORD_CACHE_MAX);
        let k = [9u8; 32];
        cache.entries.insert(k, Instant::now() - PASSWORD_CACHE_TTL);
        assert!(!cache.hit(&k));
        assert!(!cache.entries.contains_key(&k));
    }
}
