//! The attacker's spellings of a request (`bulkhead test --variants`, DESIGN
//! §6). Each variant must reach the same outcome as the original request, or
//! be rejected (400 / 404 / 421 / `tls_rejected`): a variant that reaches a
//! *different* route or group is a way around the rules.

/// Which trick a variant plays (decides how a mismatch is judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trick {
    /// A path spelling that must normalize to the same path or be rejected.
    Path,
    /// Upper-cased path: only a warning on case-sensitive tenants.
    UpperCase,
    /// A Host / SNI / request-target spelling.
    Host,
}

/// One spelling of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// What the variant does, for reports.
    pub label: &'static str,
    /// The trick class.
    pub trick: Trick,
    /// The request-target to send.
    pub target: String,
    /// Host header values (two = duplicate Host; none = missing).
    pub hosts: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
}

/// Every variant of a request with `path` (origin-form, may hold `?query`),
/// `host` and `sni`. `https` says whether the listener terminates TLS;
/// `other_host` is a host of another tenant (for SNI ≠ Host), if any.
pub fn variants(
    path_and_query: &str,
    host: Option<&str>,
    sni: Option<&str>,
    https: bool,
    other_host: Option<&str>,
) -> Vec<Variant> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (path_and_query, String::new()),
    };
    let hosts: Vec<String> = host.map(|h| vec![h.to_string()]).unwrap_or_default();
    let sni_owned = sni.map(str::to_string);
    let mut out = Vec::new();
    let mut push_path = |label: &'static str, trick: Trick, p: String| {
        out.push(Variant {
            label,
            trick,
            target: format!("{p}{query}"),
            hosts: hosts.clone(),
            sni: sni_owned.clone(),
        });
    };
    if !path.starts_with('/') {
        return Vec::new();
    }
    let rest = &path[1..];
    push_path("`..` segment", Trick::Path, format!("/zz/../{rest}"));
    push_path(
        "`%2e%2e` segment",
        Trick::Path,
        format!("/zz/%2e%2e/{rest}"),
    );
    push_path(
        "`%2E%2E` segment",
        Trick::Path,
        format!("/zz/%2E%2E/{rest}"),
    );
    push_path("`.%2e` segment", Trick::Path, format!("/zz/.%2e/{rest}"));
    push_path("`..` at the root", Trick::Path, format!("/../{rest}"));
    push_path(
        "`%2e%2e` at the root",
        Trick::Path,
        format!("/%2e%2e/{rest}"),
    );
    push_path("`.` segment", Trick::Path, format!("/./{rest}"));
    push_path("`//` separators", Trick::Path, path.replace('/', "//"));
    push_path("leading `//`", Trick::Path, format!("//{rest}"));
    push_path(
        "`%2F` for `/`",
        Trick::Path,
        replace_last_slash(path, "%2F"),
    );
    push_path(
        "`%2f` for `/`",
        Trick::Path,
        replace_last_slash(path, "%2f"),
    );
    push_path(
        "`%5C` for `/`",
        Trick::Path,
        replace_last_slash(path, "%5C"),
    );
    push_path("`\\` for `/`", Trick::Path, replace_last_slash(path, "\\"));
    push_path("`..%2F` traversal", Trick::Path, format!("/zz/..%2F{rest}"));
    push_path("`;param` on a segment", Trick::Path, semicolon_param(path));
    push_path("`..;/` traversal", Trick::Path, format!("/zz/..;/{rest}"));
    push_path("`#fragment`", Trick::Path, format!("{path}#frag"));
    push_path(
        "overlong UTF-8 `..`",
        Trick::Path,
        format!("/zz/%c0%ae%c0%ae/{rest}"),
    );
    push_path("encoded NUL", Trick::Path, format!("{path}%00"));
    if let Some(enc) = encode_unreserved(path) {
        push_path("percent-encoded letters", Trick::Path, enc);
    }
    if path.bytes().any(|b| b.is_ascii_lowercase()) {
        push_path("upper case", Trick::UpperCase, path.to_ascii_uppercase());
    }
    if let Some(h) = host {
        let mut host_variant =
            |label: &'static str, target: String, hosts: Vec<String>, sni: Option<String>| {
                out.push(Variant {
                    label,
                    trick: Trick::Host,
                    target,
                    hosts,
                    sni,
                });
            };
        let target = format!("{path}{query}");
        host_variant(
            "trailing dot on the host",
            target.clone(),
            vec![format!("{h}.")],
            sni_owned.clone(),
        );
        host_variant(
            "upper-case host",
            target.clone(),
            vec![h.to_ascii_uppercase()],
            sni_owned.clone(),
        );
        host_variant(
            "host with a port",
            target.clone(),
            vec![format!("{h}:80")],
            sni_owned.clone(),
        );
        let scheme = if https { "https" } else { "http" };
        host_variant(
            "absolute-form target, decoy Host",
            format!("{scheme}://{h}{path}{query}"),
            vec!["decoy.invalid".into()],
            sni_owned.clone(),
        );
        host_variant(
            "absolute-form target naming a decoy host",
            format!("{scheme}://decoy.invalid{path}{query}"),
            vec![h.to_string()],
            sni_owned.clone(),
        );
        host_variant(
            "duplicate Host",
            target.clone(),
            vec![h.to_string(), h.to_string()],
            sni_owned.clone(),
        );
        host_variant(
            "duplicate Host, second a decoy",
            target.clone(),
            vec![
                h.to_string(),
                other_host.unwrap_or("decoy.invalid").to_string(),
            ],
            sni_owned.clone(),
        );
        if https {
            host_variant(
                "SNI naming another tenant",
                target.clone(),
                vec![h.to_string()],
                Some(other_host.unwrap_or("decoy.invalid").to_string()),
            );
            if let Some(other) = other_host {
                host_variant(
                    "Host naming another tenant than SNI",
                    target,
                    vec![other.to_string()],
                    sni_owned,
                );
            }
        }
    }
    out
}

fn replace_last_slash(path: &str, with: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => format!("{path}{with}x"),
        Some(i) => format!("{}{with}{}", &path[..i], &path[i + 1..]),
    }
}

fn semicolon_param(path: &str) -> String {
    let rest = &path[1..];
    match rest.find('/') {
        Some(i) => format!("/{};x=1{}", &rest[..i], &rest[i..]),
        None => format!("{path};x=1"),
    }
}

/// Percent-encode the letters and digits of the path (`/admin` → `/%61%64%6D%69%6E`).
fn encode_unreserved(path: &str) -> Option<String> {
    if !path.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut out = String::with_capacity(path.len() * 3);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let v = variants(
            "/admin/users?x=1",
            Some("acme.test"),
            Some("acme.test"),
            true,
            Some("other.test"),
        );
        let find = |label: &str| {
            v.iter()
                .find(|v| v.label == label)
                .expect(label)
                .target
                .clone()
        };
        assert_eq!(find("`%2e%2e` segment"), "/zz/%2e%2e/admin/users?x=1");
        assert_eq!(find("`%2F` for `/`"), "/admin%2Fusers?x=1");
        assert_eq!(find("`;param` on a segment"), "/admin;x=1/users?x=1");
        assert_eq!(
            find("percent-encoded letters"),
            "/%61%64%6D%69%6E/%75%73%65%72%73?x=1"
        );
        assert_eq!(
            find("absolute-form target, decoy Host"),
            "https://acme.test/admin/users?x=1"
        );
        assert!(v.iter().any(|v| v.hosts.len() == 2));
        assert!(v.iter().any(|v| v.sni.as_deref() == Some("other.test")));
        assert!(v.len() > 25);
    }
}
