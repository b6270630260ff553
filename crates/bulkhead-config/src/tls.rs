//! Reading certificate and key files named by the config (`check` reads them
//! too, DESIGN §3): PEM parsing with `rustls-pki-types`, the names a
//! certificate serves (for SNI) with `x509-parser`.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate chain and key, read and parsed.
#[derive(Clone)]
pub struct LoadedCert {
    /// DNS names of the leaf certificate (lowercase; `*.x` wildcards kept).
    pub names: Vec<String>,
    /// The chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The private key (DER). Secret: never printed.
    pub key: Vec<u8>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Read a PEM certificate chain and its PEM private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedCert, String> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", key.display()))?;
    let names = cert_names(&chain[0])
        .map_err(|e| format!("cannot parse certificate `{}`: {e}", cert.display()))?;
    Ok(LoadedCert {
        names,
        chain,
        key: key_der.secret_der().to_vec(),
    })
}

/// Read every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let der = item.map_err(|e| format!("bad PEM in `{}`: {e}", path.display()))?;
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(format!("no certificate found in `{}`", path.display()));
    }
    Ok(certs)
}

/// The DNS names a certificate serves: its DNS SANs, else its CN.
pub fn cert_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The identities a verified client certificate carries: its URI SANs
/// (SPIFFE ids) and its DNS SANs (lowercase).
pub fn peer_identities(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok((_, cert)) = X509Certificate::from_der(der) {
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
    }
    (uris, dns)
}
