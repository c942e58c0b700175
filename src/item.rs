//! The canonical Cloudflare list item a decision maps to.
//!
//! Cloudflare stores IP list items in one canonical text form (docs/cloudflare-lists.md §6.3):
//! host bits masked, `/32` and `/128` dropped, IPv6 lowercase and compressed (RFC 5952).
//! Both sides of every diff go through [`Item`], so a list read and a decision compare
//! equal exactly when Cloudflare would store them as the same item.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Narrowest IPv4 prefix Cloudflare accepts in an IP list (`/8`).
pub const MIN_IPV4_PREFIX: u8 = 8;
/// Narrowest IPv6 prefix Cloudflare accepts in an IP list (`/12`).
pub const MIN_IPV6_PREFIX: u8 = 12;

/// One entry of a Cloudflare IP list, in canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item(IpNet);

/// Why a decision value cannot become a list item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("not an IP address or CIDR")]
    Invalid,
    #[error("range wider than Cloudflare accepts (IPv4 /8, IPv6 /12)")]
    TooBroad,
}

impl Item {
    /// Maps a decision value (`Ip` or `Range` scope) to its list item.
    ///
    /// IPv4-mapped IPv6 addresses become IPv4. IPv6 networks narrower than
    /// `ipv6_prefix` are widened to it (a `/128` host becomes its `/64` by default).
    ///
    /// # Errors
    /// [`ItemError::Invalid`] if the value does not parse, [`ItemError::TooBroad`]
    /// if Cloudflare would refuse the prefix.
    pub fn from_decision(value: &str, ipv6_prefix: u8) -> Result<Item, ItemError> {
        let net = parse_net(value.trim()).ok_or(ItemError::Invalid)?;
        Item::from_net(net, ipv6_prefix)
    }

    /// As [`Item::from_decision`], for a value already parsed.
    ///
    /// # Errors
    /// [`ItemError::TooBroad`] if Cloudflare would refuse the prefix.
    pub fn from_net(net: IpNet, ipv6_prefix: u8) -> Result<Item, ItemError> {
        let net = match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => IpNet::V4(
                    Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| ItemError::Invalid)?,
                ),
                _ if v6.prefix_len() > ipv6_prefix => {
                    IpNet::V6(Ipv6Net::new(v6.addr(), ipv6_prefix).map_err(|_| ItemError::Invalid)?)
                }
                _ => IpNet::V6(v6),
            },
            v4 => v4,
        };
        Item::checked(net)
    }

    /// Reads an item as a Cloudflare list returns it. Tolerates forms Cloudflare
    /// should not return (`1.2.3.4/32`, host bits set) by canonicalising them.
    pub fn from_cloudflare(text: &str) -> Option<Item> {
        parse_net(text.trim()).map(|net| Item(net.trunc()))
    }

    /// Whether this is an IPv6 item (for metrics and logs).
    pub fn is_ipv6(&self) -> bool {
        matches!(self.0, IpNet::V6(_))
    }

    /// The network this item covers.
    pub fn net(&self) -> IpNet {
        self.0
    }

    fn checked(net: IpNet) -> Result<Item, ItemError> {
        let min = match net {
            IpNet::V4(_) => MIN_IPV4_PREFIX,
            IpNet::V6(_) => MIN_IPV6_PREFIX,
        };
        if net.prefix_len() < min {
            return Err(ItemError::TooBroad);
        }
        Ok(Item(net.trunc()))
    }
}

/// Parses `addr` or `addr/len`.
fn parse_net(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        IpNet::from_str(text).ok()
    } else {
        IpAddr::from_str(text).ok().map(IpNet::from)
    }
}

impl fmt::Display for Item {
    /// The exact text Cloudflare stores for this item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpNet::V4(net) if net.prefix_len() == 32 => write!(f, "{}", net.addr()),
            IpNet::V6(net) if net.prefix_len() == 128 => write!(f, "{}", net.addr()),
            net => write!(f, "{}/{}", net.addr(), net.prefix_len()),
        }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Item({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(value: &str, ipv6_prefix: u8) -> Result<String, ItemError> {
        Item::from_decision(value, ipv6_prefix).map(|item| item.to_string())
    }

    #[test]
    fn canonical_forms_match_what_cloudflare_stores() {
        let cases = [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4/32", "1.2.3.4"),
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("10.1.2.3/24", "10.1.2.0/24"),
            (" 10.0.0.1 ", "10.0.0.1"),
            ("2001:db8::1", "2001:db8::/64"),
            ("2001:DB8:0:0:1::1", "2001:db8::/64"),
            ("2001:db8:1::/48", "2001:db8:1::/48"),
            ("2001:db8:1:2:3::/80", "2001:db8:1:2::/64"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("::ffff:10.0.0.0/120", "10.0.0.0/24"),
        ];
        for (value, want) in cases {
            assert_eq!(canon(value, 64).as_deref(), Ok(want), "{value}");
        }
    }

    #[test]
    fn ipv6_prefix_128_keeps_hosts() {
        assert_eq!(canon("2001:DB8::1", 128).as_deref(), Ok("2001:db8::1"));
        assert_eq!(canon("2001:db8::1/128", 128).as_deref(), Ok("2001:db8::1"));
        assert_eq!(canon("2001:db8::1/64", 128).as_deref(), Ok("2001:db8::/64"));
        assert_eq!(canon("0f::", 128).as_deref(), Ok("f::"));
    }

    #[test]
    fn two_hosts_in_one_slash_64_share_an_item() {
        let a = Item::from_decision("2001:db8::1", 64);
        let b = Item::from_decision("2001:db8::ffff:2", 64);
        assert_eq!(a, b);
        assert_ne!(a, Item::from_decision("2001:db8:0:1::1", 64));
    }

    #[test]
    fn refuses_garbage_and_too_broad() {
        assert_eq!(canon("not-an-ip", 64), Err(ItemError::Invalid));
        assert_eq!(canon("1.2.3.4/33", 64), Err(ItemError::Invalid));
        assert_eq!(canon("", 64), Err(ItemError::Invalid));
        assert_eq!(canon("FR", 64), Err(ItemError::Invalid));
        assert_eq!(canon("0.0.0.0/0", 64), Err(ItemError::TooBroad));
        assert_eq!(canon("10.0.0.0/7", 64), Err(ItemError::TooBroad));
        assert_eq!(canon("2000::/11", 64), Err(ItemError::TooBroad));
        assert_eq!(canon("10.0.0.0/8", 64).as_deref(), Ok("10.0.0.0/8"));
    }

    #[test]
    fn reads_cloudflare_forms() {
        let read = |text| Item::from_cloudflare(text).map(|item| item.to_string());
        assert_eq!(read("192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(read("10.0.0.1/32").as_deref(), Some("10.0.0.1"));
        assert_eq!(read("2001:db8::/64").as_deref(), Some("2001:db8::/64"));
        assert_eq!(read("2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(read("garbage"), None);
        assert_eq!(
            Item::from_cloudflare("2001:db8::/64"),
            Item::from_decision("2001:db8::5", 64).ok()
        );
    }
}
