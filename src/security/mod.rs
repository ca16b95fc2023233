//! Who may call a Baton endpoint, and over what.
//!
//! - [`Users`]: the users file a scheduler names (argon2 password hashes, roles).
//! - [`Authenticator`]: checks every call's `authorization` header (HTTP Basic for a
//!   user, `Bearer` for a token the Flight SQL handshake issued or the cluster secret
//!   executors and scheduler share) and hands the handlers a [`Caller`].
//! - [`Dialer`]: how a process dials its peers: TLS, and the credential every call
//!   carries.
//! - [`TlsFlags`]: the `--tls-*` flags and the certificates they name.
//!
//! With no users file and no cluster secret, authentication is off: every caller is
//! [`Caller::local`], and servers bind only to loopback addresses.

mod authenticator;
mod dial;
mod throwaway;
mod tls;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

pub use authenticator::{AuthError, Authenticate, Authenticator, caller_of};
pub use dial::{Authorize, Connection, DialError, Dialer, strip_scheme};
pub use throwaway::{Throwaway, throwaway};
pub use tls::{ClientCertificates, TlsFlags, client_trusting};

pub use users::{Users, hash_password, user_entry};

/// Errors of setting up authentication or TLS.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The users file is malformed.
    #[error("users file {}: {reason}", path.display())]
    UsersFile {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A password could not be hashed.
    #[error("hashing a password: {0}")]
    Hash(String),
    /// The cluster secret is unusable.
    #[error("cluster secret: {0}")]
    Secret(String),
    /// The TLS settings do not fit together.
    #[error("TLS: {0}")]
    Tls(String),
    /// A server would accept anyone from the network.
    #[error(
        "refusing to listen on {addr} without authentication: give the scheduler --users \
         and every process a cluster secret (BATON_CLUSTER_SECRET or --cluster-secret-file), \
         or bind to a loopback address"
    )]
    OpenToNetwork {
        /// The non-loopback address.
        addr: std::net::SocketAddr,
    },
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Their own queries only.
    User,
    /// Every query.
    Admin,
    /// A process of the cluster (it holds the cluster secret): registers executors,
    /// fetches shuffle data and results, and sees every query.
    Cluster,
}

/// Who is calling, as authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user name (queries are owned by it).
    pub name: Arc<str>,
    /// What they may do.
    pub role: Role,
}

impl Caller {
    /// Every caller when authentication is off: a process on this host, allowed all.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            role: Role::Cluster,
        }
    }

    /// A process holding the cluster secret.
    pub fn cluster() -> Self {
        Self {
            name: "cluster".into(),
            role: Role::Cluster,
        }
    }

    /// Whether this caller may see, fetch or cancel a query `owner` submitted.
    pub fn may_access(&self, owner: &str) -> bool {
        self.role != Role::User || &*self.name == owner
    }

    /// Whether this caller is a process of the cluster.
    pub fn is_cluster(&self) -> bool {
        self.role == Role::Cluster
    }
}

/// How a process of the cluster proves itself to the others: the secret they share and
/// TLS. The scheduler requires the secret of executors; an executor sends it to the
/// scheduler and to peers it fetches from, and requires it of whoever fetches from it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// File holding the secret the cluster's processes share (the BATON_CLUSTER_SECRET
    /// variable wins). Without one (and without users at a scheduler), a process
    /// listens only on loopback.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself, for an in-process cluster (no flag).
    #[arg(skip)]
    pub cluster_secret: Option<String>,
    /// TLS of the process's listeners and of the connections it opens.
    #[command(flatten)]
    pub tls: TlsFlags,
}

impl ClusterFlags {
    /// The cluster secret: set in-process, else from the environment or the file.
    pub fn secret(&self) -> Result<Option<String>, SecurityError> {
        cluster_secret(
            self.cluster_secret.as_deref(),
            self.cluster_secret_file.as_deref(),
        )
    }

    /// How this process dials its peers: with its TLS, and `secret` as bearer token.
    pub fn dialer(&self, secret: Option<&str>) -> Result<Dialer, SecurityError> {
        let dialer = Dialer::plain().with_tls(self.tls.client()?);
        match secret {
            Some(secret) => dialer.with_bearer(secret),
            None => Ok(dialer),
        }
    }
}

/// The cluster secret: `inline` (an in-process cluster's), else the
/// `BATON_CLUSTER_SECRET` variable, else the file `path` names; None when none is given.
fn cluster_secret(
    inline: Option<&str>,
    path: Option<&std::path::Path>,
) -> Result<Option<String>, SecurityError> {
    let secret = match (inline, std::env::var("BATON_CLUSTER_SECRET"), path) {
        (Some(secret), _, _) => secret.to_string(),
        (None, Ok(secret), _) => secret,
        (None, Err(_), Some(path)) => {
            std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
                what: "the cluster secret",
                path: path.to_path_buf(),
                source,
            })?
        }
        (None, Err(_), None) => return Ok(None),
    };
    let secret = secret.trim().to_string();
    if secret.len() < 16 {
        return Err(SecurityError::Secret(
            "it must have at least 16 characters".into(),
        ));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SecurityError::Secret(
            "it must be printable ASCII without spaces".into(),
        ));
    }
    Ok(Some(secret))
}

/// A fresh random secret or token: 64 hex digits (256 bits).
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Refuses a non-loopback `addr` for a server without authentication.
pub fn check_exposure(
    addr: std::net::SocketAddr,
    authenticated: bool,
) -> Result<(), SecurityError> {
    if authenticated || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(SecurityError::OpenToNetwork { addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_see_only_their_own_queries_and_admins_all() {
        let alice = Caller {
            name: "alice".into(),
            role: Role::User,
        };
        let admin = Caller {
            name: "root".into(),
            role: Role::Admin,
        };
        assert!(alice.may_access("alice"));
        assert!(!alice.may_access("bob"));
        assert!(admin.may_access("bob"));
        assert!(Caller::local().may_access("bob"));
    }

    #[test]
    fn only_loopback_is_open_without_authentication() {
        let public: std::net::SocketAddr = "0.0.0.0:50050".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:50050".parse().unwrap();
        assert!(check_exposure(public, false).is_err());
        assert!(check_exposure(public, true).is_ok());
        assert!(check_exposure(local, false).is_ok());
    }
}
