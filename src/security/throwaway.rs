//! Credentials made for one run of a cluster on this host (`baton bench tpch
//! --secure`, the tests): a CA and a certificate it signed for `localhost` and
//! `127.0.0.1`, a users file with one admin, and a cluster secret.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

use super::{SecurityError, TlsFlags, random_secret, user_entry};

/// Credentials for one run; their files live in the directory they were made in.
#[derive(Debug, Clone)]
pub struct Throwaway {
    /// Certificate, key and CA, for every process.
    pub tls: TlsFlags,
    /// The users file, listing [`Throwaway::user`].
    pub users: PathBuf,
    /// An admin's name.
    pub user: String,
    /// Their password.
    pub password: String,
    /// The cluster secret.
    pub secret: String,
}

fn tls_error(e: rcgen::Error) -> SecurityError {
    SecurityError::Tls(format!("making a certificate: {e}"))
}

/// Makes credentials, writing their files into `dir` (which must exist).
pub fn throwaway(dir: &Path) -> Result<Throwaway, SecurityError> {
    let ca_key = KeyPair::generate().map_err(tls_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(tls_error)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(tls_error)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(tls_error)?;
    // The same certificate serves TLS and identifies its process to its peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| SecurityError::Read {
            what: "a throwaway credential",
            path: path.clone(),
            source,
        })?;
        Ok::<_, SecurityError>(path)
    };
    let user = "admin".to_string();
    let password = random_secret();
    Ok(Throwaway {
        tls: TlsFlags {
            tls_cert: Some(write("cert.pem", cert.pem())?),
            tls_key: Some(write("key.pem", key.serialize_pem())?),
            tls_ca: Some(write("ca.pem", ca.pem())?),
        },
        users: write("users.toml", user_entry(&user, &password, true)?)?,
        user,
        password,
        secret: random_secret(),
    })
}
