//! The address an executor gives the scheduler for its Flight endpoint: what other
//! executors and the scheduler dial to fetch its shuffle output. Bound to all interfaces
//! (`0.0.0.0`), an executor must be told which address its peers reach it at.

use std::net::SocketAddr;

/// Why an advertised address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// Bound to all interfaces with nothing to advertise.
    #[error(
        "the Flight endpoint is bound to {bound}, which peers cannot dial: give --advertise \
         with the host name or address they reach this executor at"
    )]
    Unspecified {
        /// The bound address.
        bound: SocketAddr,
    },
    /// The advertised host does not resolve, or only to an unspecified address.
    #[error("--advertise {address}: {reason}")]
    Unusable {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The address to register for an endpoint bound at `bound`: `advertise` (a host name or
/// IP, with or without a port; the bound port when without), which must resolve to an
/// address peers can dial, or else `bound` itself unless that is an unspecified address.
pub async fn advertised_address(
    advertise: Option<&str>,
    bound: SocketAddr,
) -> Result<String, AdvertiseError> {
    let Some(advertise) = advertise else {
        if bound.ip().is_unspecified() {
            return Err(AdvertiseError::Unspecified { bound });
        }
        return Ok(bound.to_string());
    };
    let unusable = |reason: String| AdvertiseError::Unusable {
        address: advertise.to_string(),
        reason,
    };
    let with_port = if has_port(advertise) {
        advertise.to_string()
    } else if advertise.contains(':') {
        // A bare IPv6 address.
        format!("[{advertise}]:{}", bound.port())
    } else {
        format!("{advertise}:{}", bound.port())
    };
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| unusable(format!("does not resolve: {e}")))?
        .collect();
    if resolved.is_empty() {
        return Err(unusable("resolves to no address".into()));
    }
    if resolved.iter().all(|a| a.ip().is_unspecified()) {
        return Err(unusable(
            "is an unspecified address, which peers cannot dial".into(),
        ));
    }
    Ok(with_port)
}

/// True when `address` ends in a port: `host:port` or `[v6]:port`.
fn has_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_specific_bound_address_is_its_own_advertisement() {
        let address = advertised_address(None, bound("127.0.0.1:5000")).await;
        assert_eq!(address.unwrap(), "127.0.0.1:5000");
    }

    #[tokio::test]
    async fn all_interfaces_need_an_address_to_advertise() {
        let error = advertised_address(None, bound("0.0.0.0:5000"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("--advertise"), "{error}");
        let error = advertised_address(Some("0.0.0.0"), bound("0.0.0.0:5000"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("unspecified"), "{error}");
    }

    #[tokio::test]
    async fn an_advertised_host_takes_the_bound_port_unless_it_has_one() {
        let at = bound("0.0.0.0:5000");
        assert_eq!(
            advertised_address(Some("localhost"), at).await.unwrap(),
            "localhost:5000"
        );
        assert_eq!(
            advertised_address(Some("10.1.2.3:6000"), at).await.unwrap(),
            "10.1.2.3:6000"
        );
        assert_eq!(
            advertised_address(Some("::1"), at).await.unwrap(),
            "[::1]:5000"
        );
        assert_eq!(
            advertised_address(Some("[::1]:7000"), at).await.unwrap(),
            "[::1]:7000"
        );
        let error = advertised_address(Some("no-such-host.invalid"), at)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("does not resolve"), "{error}");
    }
}
