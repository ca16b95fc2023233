//! Checking who calls: the `authorization` header of every gRPC, Flight and HTTP call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::{Caller, Users};

/// How long a token from the Flight SQL handshake stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Verified `Basic` headers remembered, so a client sending its password with every
/// call does not pay an argon2 hash each time; the memo is cleared when full.
const MAX_REMEMBERED_LOGINS: usize = 1024;

/// Base64 of `Basic` credentials, with or without padding (Go's Flight client, under
/// ADBC, sends them unpadded).
const PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error("credentials are required: log in (HTTP Basic) or send a bearer token")]
    Missing,
    /// Credentials of a form not understood.
    #[error("the authorization header must be `Basic <base64 user:password>` or `Bearer <token>`")]
    Malformed,
    /// A wrong user name or password.
    #[error("unknown user or wrong password")]
    WrongPassword,
    /// A token that was never issued or has expired.
    #[error("unknown or expired token; log in again")]
    UnknownToken,
}

/// Checks credentials against the users and the cluster secret, and issues tokens.
#[derive(Debug, Default)]
pub struct Authenticator {
    users: Option<Users>,
    secret: Option<String>,
    tokens: Mutex<HashMap<String, (Caller, Instant)>>,
    logins: Mutex<HashMap<String, Caller>>,
}

impl Authenticator {
    /// Authentication off: every caller is [`Caller::local`].
    pub fn open() -> Self {
        Self::default()
    }

    /// Logins of `users` and the cluster processes that hold `secret`; off when both
    /// are None.
    pub fn new(users: Option<Users>, secret: Option<String>) -> Self {
        Self {
            users,
            secret,
            ..Self::default()
        }
    }

    /// Whether callers must prove who they are.
    pub fn is_on(&self) -> bool {
        self.users.is_some() || self.secret.is_some()
    }

    /// Who sent `authorization` (the header's value; None when absent).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if !self.is_on() {
            return Ok(Caller::local());
        }
        let header = authorization.ok_or(AuthError::Missing)?.trim();
        if let Some(encoded) = strip_scheme(header, "basic") {
            return self.login(encoded);
        }
        let token = strip_scheme(header, "bearer").ok_or(AuthError::Malformed)?;
        if let Some(secret) = &self.secret
            && constant_time_eq(token.as_bytes(), secret.as_bytes())
        {
            return Ok(Caller::cluster());
        }
        let mut tokens = self.tokens.lock().expect("tokens lock");
        match tokens.get(token) {
            Some((caller, expires)) if *expires > Instant::now() => Ok(caller.clone()),
            Some(_) => {
                tokens.remove(token);
                Err(AuthError::UnknownToken)
            }
            None => Err(AuthError::UnknownToken),
        }
    }

    /// A `Basic` login (`encoded` is base64 of `user:password`).
    fn login(&self, encoded: &str) -> Result<Caller, AuthError> {
        if let Some(caller) = self.logins.lock().expect("logins lock").get(encoded) {
            return Ok(caller.clone());
        }
        let decoded = PADDING_OPTIONAL
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(AuthError::Malformed)?;
        let (name, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
        let role = self
            .users
            .as_ref()
            .and_then(|users| users.verify(name, password))
            .ok_or(AuthError::WrongPassword)?;
        let caller = Caller {
            name: name.into(),
            role,
        };
        let mut logins = self.logins.lock().expect("logins lock");
        if logins.len() >= MAX_REMEMBERED_LOGINS {
            logins.clear();
        }
        logins.insert(encoded.to_string(), caller.clone());
        Ok(caller)
    }

    /// A new bearer token for `caller`, valid for 12 hours; expired ones are dropped.
    pub fn issue_token(&self, caller: &Caller) -> String {
        let token = super::random_secret();
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (caller.clone(), now + TOKEN_TTL));
        token
    }
}

/// The rest of `header` after `scheme` (any case) and a space.
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = header.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server side of authentication for tonic services: refuses calls without valid
/// credentials (`Unauthenticated`) and puts the [`Caller`] into the request's
/// extensions, where [`caller_of`] finds it.
#[derive(Debug, Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = match request.metadata().get("authorization") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Status::unauthenticated(AuthError::Malformed.to_string()))?,
            ),
            None => None,
        };
        let caller = self
            .0
            .authenticate(header)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller [`Authenticate`] found for `request`.
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{Role, user_entry};

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn authenticator() -> Authenticator {
        let users = Users::parse(&user_entry("alice", "wonderland", false).unwrap()).unwrap();
        Authenticator::new(Some(users), Some("s".repeat(32)))
    }

    #[test]
    fn callers_prove_who_they_are_by_password_token_or_secret() {
        let auth = authenticator();
        let alice = auth
            .authenticate(Some(&basic("alice", "wonderland")))
            .unwrap();
        assert_eq!((&*alice.name, alice.role), ("alice", Role::User));
        // Unpadded base64 (Go's Flight client sends it so).
        let unpadded = basic("alice", "wonderland")
            .trim_end_matches('=')
            .to_string();
        assert_ne!(unpadded, basic("alice", "wonderland"));
        assert_eq!(auth.authenticate(Some(&unpadded)), Ok(alice.clone()));
        // The memo answers the same header the same way.
        assert_eq!(
            auth.authenticate(Some(&basic("alice", "wonderland"))),
            Ok(alice.clone())
        );
        let token = auth.issue_token(&alice);
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {token}"))),
            Ok(alice)
        );
        let secret = format!("bearer {}", "s".repeat(32));
        assert_eq!(auth.authenticate(Some(&secret)), Ok(Caller::cluster()));
    }

    #[test]
    fn wrong_or_missing_credentials_are_refused() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some(&basic("alice", "oz"))),
            Err(AuthError::WrongPassword)
        );
        assert_eq!(
            auth.authenticate(Some("Bearer 1234")),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth.authenticate(Some("Digest x")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some("Basic !!!")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            Authenticator::open().authenticate(None),
            Ok(Caller::local())
        );
    }
}
