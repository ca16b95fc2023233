//! Logging in from the command line: the password from `BATON_PASSWORD` or a prompt,
//! and `baton user add`, which makes a users file entry.

use std::io::IsTerminal;
use std::path::Path;

use super::CliError;
use crate::client::Login;
use crate::security::{SecurityError, client_trusting, user_entry};

/// The variable a password is read from before a prompt asks for it.
pub const PASSWORD_VARIABLE: &str = "BATON_PASSWORD";

/// `user`'s password: `BATON_PASSWORD`, else asked for on the terminal.
fn password_for(user: &str) -> Result<String, CliError> {
    if let Ok(password) = std::env::var(PASSWORD_VARIABLE) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Shell(format!(
            "no password for {user}: set {PASSWORD_VARIABLE} or run on a terminal"
        )));
    }
    rpassword::prompt_password(format!("password for {user}: "))
        .map_err(|e| CliError::Shell(format!("reading the password: {e}")))
}

/// How a command-line client logs in: as `user` when given (password from
/// [`password_for`]), over TLS trusting `tls_ca` when given.
pub fn login(user: Option<&str>, tls_ca: Option<&Path>) -> Result<Login, CliError> {
    let tls = tls_ca.map(client_trusting).transpose().map_err(security)?;
    match user {
        Some(user) => {
            let password = password_for(user)?;
            let mut login = Login::password(user, &password, None).map_err(security)?;
            login.tls = tls;
            Ok(login)
        }
        None => Ok(Login {
            tls,
            ..Login::default()
        }),
    }
}

fn security(e: SecurityError) -> CliError {
    CliError::Client(e.into())
}

/// `baton user add`: prints a users file entry for `name` with the password from
/// `BATON_PASSWORD` or typed twice.
pub fn run_user_add(name: &str, admin: bool) -> Result<(), CliError> {
    let password = match std::env::var(PASSWORD_VARIABLE) {
        Ok(password) => password,
        Err(_) => {
            let first = password_for(name)?;
            let again = rpassword::prompt_password("again: ")
                .map_err(|e| CliError::Shell(format!("reading the password: {e}")))?;
            if first != again {
                return Err(CliError::Shell("the passwords differ".into()));
            }
            first
        }
    };
    if password.len() < 8 {
        return Err(CliError::Shell(
            "a password needs at least 8 characters".into(),
        ));
    }
    print!("{}", user_entry(name, &password, admin).map_err(security)?);
    Ok(())
}
