//! The users file: who may log in, with which password (stored as an argon2 hash), and
//! whether they administer the cluster.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # `baton user add alice`
//! role = "admin"                                       # or "user", the default
//! ```

use std::collections::HashMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;

use super::{Role, SecurityError};

/// What a user may do beyond their own queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileRole {
    /// Their own queries only.
    #[default]
    User,
    /// Every query.
    Admin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
    #[serde(default)]
    role: FileRole,
}

/// The users of a scheduler, by name: their password hash (PHC string) and role.
#[derive(Debug, Clone)]
pub struct Users {
    users: HashMap<String, (String, Role)>,
}

impl Users {
    /// Reads the users file at `path`.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            what: "the users file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SecurityError::UsersFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses a users file; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = HashMap::new();
        for entry in file.users {
            if entry.name.is_empty() || entry.name.contains(':') {
                return Err(format!(
                    "user name {:?} must be non-empty and without ':'",
                    entry.name
                ));
            }
            PasswordHash::new(&entry.password_hash).map_err(|e| {
                format!(
                    "user {}: password_hash is no argon2 PHC string ({e}); make one with `baton user add`",
                    entry.name
                )
            })?;
            let role = match entry.role {
                FileRole::User => Role::User,
                FileRole::Admin => Role::Admin,
            };
            if users
                .insert(entry.name.clone(), (entry.password_hash, role))
                .is_some()
            {
                return Err(format!("user {} is listed twice", entry.name));
            }
        }
        if users.is_empty() {
            return Err("it lists no [[user]]".into());
        }
        Ok(Self { users })
    }

    /// The role of `name` when `password` is theirs.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let (hash, role) = self.users.get(name)?;
        let hash = PasswordHash::new(hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()
            .map(|()| *role)
    }
}

/// An argon2id hash of `password` with a fresh random salt, as a PHC string for the
/// users file.
pub fn hash_password(password: &str) -> Result<String, SecurityError> {
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| SecurityError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SecurityError::Hash(e.to_string()))
}

/// A users file entry for `name` with `password`.
pub fn user_entry(name: &str, password: &str, admin: bool) -> Result<String, SecurityError> {
    let role = if admin { "admin" } else { "user" };
    Ok(format!(
        "[[user]]\nname = {name:?}\npassword_hash = {:?}\nrole = \"{role}\"\n",
        hash_password(password)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_logs_in_with_their_password_only() {
        let text = format!(
            "{}{}",
            user_entry("alice", "wonderland", true).unwrap(),
            user_entry("bob", "builder", false).unwrap()
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.verify("alice", "wonderland"), Some(Role::Admin));
        assert_eq!(users.verify("bob", "builder"), Some(Role::User));
        assert_eq!(users.verify("bob", "wonderland"), None);
        assert_eq!(users.verify("carol", "builder"), None);
    }

    #[test]
    fn the_compose_clusters_users_file_logs_its_demo_admin_in() {
        let users = Users::parse(include_str!("../../deploy/users.toml")).unwrap();
        assert_eq!(users.verify("demo", "baton-demo"), Some(Role::Admin));
    }

    #[test]
    fn a_bad_users_file_says_what_is_wrong() {
        let plain = "[[user]]\nname = \"alice\"\npassword_hash = \"secret\"\n";
        assert!(Users::parse(plain).unwrap_err().contains("argon2"));
        assert!(Users::parse("").unwrap_err().contains("no [[user]]"));
        let twice = user_entry("a", "p", false).unwrap().repeat(2);
        assert!(Users::parse(&twice).unwrap_err().contains("twice"));
        let role = "[[user]]\nname = \"a\"\npassword_hash = \"x\"\nrole = \"root\"\n";
        assert!(Users::parse(role).is_err());
    }
}
