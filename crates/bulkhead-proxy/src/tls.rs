//! TLS termination for https listeners (rustls): the certificate is chosen
//! by SNI among the listener's certificates (exact names, then one-label
//! wildcards, then `default_certificate`; otherwise the handshake fails),
//! ALPN offers h2 and http/1.1, and client certificates are verified against
//! `client_auth.ca` when it is set.

use bulkhead_config::{CertPair, Listener, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::sync::Arc;

/// The crypto provider bulkhead uses everywhere (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).cloned().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).cloned()
            })
        });
        by_name.or_else(|| self.default.clone())
    }
}

fn certified_key(pair: &CertPair, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let loaded = pair
        .loaded
        .as_ref()
        .ok_or_else(|| format!("certificate `{}` was not loaded", pair.cert.value.display()))?;
    let chain: Vec<CertificateDer<'static>> = loaded
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::try_from(loaded.key.clone()).or_else(|_| {
        Ok::<_, String>(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            loaded.key.clone(),
        )))
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key `{}`: {e}", pair.key.value.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Build the rustls config of an https listener.
pub fn server_config(l: &Listener) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let mut resolver = SniResolver::default();
    let tls = l.tls.as_ref();
    for pair in tls.iter().flat_map(|t| t.certificates.iter()) {
        let key = certified_key(pair, &provider)?;
        for name in pair.loaded.iter().flat_map(|c| c.names.iter()) {
            match name.strip_prefix("*.") {
                Some(parent) => resolver
                    .wildcard
                    .entry(parent.to_string())
                    .or_insert_with(|| key.clone()),
                None => resolver
                    .exact
                    .entry(name.clone())
                    .or_insert_with(|| key.clone()),
            };
        }
    }
    if let Some(pair) = &l.default_certificate {
        resolver.default = Some(certified_key(pair, &provider)?);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.map(|t| t.min_version) {
        Some(TlsVersion::V1_3) => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match tls.and_then(|t| t.client_auth.as_ref()) {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for der in &auth.ca_der {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| format!("client_auth.ca `{}`: {e}", auth.ca.value.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
