//! Who may assert an identity (RFC 3325): trusted peers, by address. PBXs
//! and trunks the operator names (`--trusted CIDR`) may send
//! P-Asserted-Identity and its kin, and are sent it; anyone else's are
//! removed before a request or response crosses to the other leg, so a
//! stranger cannot tell a PBX whom it is.
//!
//! Written here rather than taken from a crate: a prefix and a length, and
//! a comparison of leading bits, in the core crate that may not depend on
//! more (docs/architecture.md: core crates).

use std::net::IpAddr;

/// Headers that assert or suggest who a party is (RFC 3325 §9.1, §9.2;
/// the older Remote-Party-ID draft that phones and PBXs still send).
pub const IDENTITY_HEADERS: [&str; 3] = [
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Remote-Party-ID",
];

/// Whether `name` is one of [`IDENTITY_HEADERS`] (case-insensitive).
pub fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `name` is one of [`IDENTITY_HEADERS`] or of the operator's
/// `extra` ones (`--identity-header`: Diversion, P-Charge-Info, …),
/// case-insensitive.
pub fn is_identity(name: &str, extra: &[String]) -> bool {
    is_identity_header(name) || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A header name as RFC 3261 §25.1 allows it (a token): `Ok` or why not.
pub fn check_header_name(name: &str) -> Result<(), String> {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c);
    if !name.is_empty() && name.bytes().all(token) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a header name (letters, digits, -.!%*_+`'~)"
        ))
    }
}

pub use handover_sip::Cidr;

/// The trusted peers: an address is trusted when a prefix contains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(pub Vec<Cidr>);

impl Trusted {
    /// Whether `ip` (when known) belongs to a trusted peer.
    pub fn contains(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.0.iter().any(|c| c.contains(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_what_they_should() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(
            "10.0.0.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!("pbx/8".parse::<Cidr>().is_err());
        assert!(!Trusted::default().contains(Some("127.0.0.1".parse().unwrap())));
        assert!(is_identity_header("p-asserted-identity"));
        assert!(!is_identity_header("P-Charging-Vector"));
        let extra = ["Diversion".to_string()];
        assert!(is_identity("diversion", &extra) && is_identity("Remote-Party-ID", &extra));
        assert!(!is_identity("P-Charging-Vector", &extra));
        assert!(check_header_name("P-Charge-Info").is_ok());
        assert!(check_header_name("Bad Header").is_err() && check_header_name("").is_err());
    }
}
