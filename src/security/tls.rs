//! The `--tls-*` flags of the cluster's processes, and the rustls settings they make.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::SecurityError;

/// TLS for a process of the cluster: the certificate it serves (and shows the peers it
/// dials), and the CA its peers' certificates must chain to. All three or none.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsFlags {
    /// PEM certificate (chain) this process serves TLS with and shows, as its client
    /// certificate, to the peers it dials.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that the certificates of peers chain to: connections this
    /// process opens trust them, and it checks client certificates signed by them
    /// (required on executors' Flight endpoints; at the scheduler, optional, since
    /// users' clients have none). With `baton sql --scheduler`, the CA the scheduler's
    /// certificate chains to (TLS on, no certificate of its own).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Every client shows one signed by the CA (executors' Flight: only peers call).
    Required,
    /// Those shown are checked, none is needed (the scheduler: users' clients call).
    Optional,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFlags {
    /// Whether TLS is on.
    pub fn is_on(&self) -> bool {
        self.tls_cert.is_some()
    }

    fn files(&self) -> Result<Option<(Identity, Certificate)>, SecurityError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                let identity = Identity::from_pem(
                    read("the TLS certificate", cert)?,
                    read("the TLS key", key)?,
                );
                Ok(Some((
                    identity,
                    Certificate::from_pem(read("the TLS CA", ca)?),
                )))
            }
            _ => Err(SecurityError::Tls(
                "--tls-cert, --tls-key and --tls-ca go together".into(),
            )),
        }
    }

    /// The server side, when TLS is on.
    pub fn server(
        &self,
        client_certificates: ClientCertificates,
    ) -> Result<Option<ServerTlsConfig>, SecurityError> {
        Ok(self.files()?.map(|(identity, ca)| {
            ServerTlsConfig::new()
                .identity(identity)
                .client_ca_root(ca)
                .client_auth_optional(client_certificates == ClientCertificates::Optional)
        }))
    }

    /// The client side (trusting the CA, showing this process's certificate), when TLS
    /// is on.
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, SecurityError> {
        Ok(self
            .files()?
            .map(|(identity, ca)| ClientTlsConfig::new().ca_certificate(ca).identity(identity)))
    }
}

/// The client side for a user's client: TLS trusting the CA certificate(s) at `ca`.
pub fn client_trusting(ca: &Path) -> Result<ClientTlsConfig, SecurityError> {
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("the TLS CA", ca)?)))
}
