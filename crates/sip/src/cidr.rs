//! Address prefixes (`10.0.0.0/8`, `2001:db8::/32`, one address): who is
//! trusted to assert an identity (the workers), or to speak the PROXY
//! protocol (the edge).

use std::net::IpAddr;

/// An address prefix: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl core::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}`: `{ip}` is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            len.parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?
        };
        Ok(Self { net, len })
    }
}

/// As parsed: `NET/LEN` (`10.0.0.0/8`), a lone address with its full
/// length (`192.0.2.7/32`).
impl core::fmt::Display for Cidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl Cidr {
    /// Whether `ip` is inside this prefix (an IPv4 address is never inside
    /// an IPv6 prefix, nor the other way round).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.len,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.len),
            _ => return false,
        };
        let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
        a & mask == b & mask
    }
}
