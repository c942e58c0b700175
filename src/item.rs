//! The canonical Cloudflare list item a decision maps to.
//!
//! Cloudflare stores IP list items in one canonical text form (docs/cloudflare-lists.md §6.3):
//! host bits masked, `/32` and `/128` dropped, IPv6 lowercase and compressed (RFC 5952).
//! Both sides of every diff go through [`Item`], so a list read and a decision compare
//! equal exactly when Cloudflare would store them as the same item. ASN lists hold AS
//! numbers (docs/cloudflare-lists.md §13); an item is either.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Narrowest IPv4 prefix Cloudflare accepts in an IP list (`/8`).
pub const MIN_IPV4_PREFIX: u8 = 8;
/// Narrowest IPv6 prefix Cloudflare accepts in an IP list (`/12`).
pub const MIN_IPV6_PREFIX: u8 = 12;

/// One entry of a Cloudflare list, in canonical form: an IP network (lists of kind `ip`)
/// or an AS number (lists of kind `asn`), and the lane (the list of the account) it is on.
///
/// Eighteen bytes, alignment 1, as the network alone was: a tag (kind in bits 0–1, lane in
/// bits 2–7) and the address and prefix, or the AS number. Ordered by lane, then kind
/// (IPv4, IPv6, AS), then value. Items from a decision or a read are on lane 0 until
/// [`Item::on`] puts them on theirs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    tag: u8,
    data: [u8; 17],
}

/// `Item::tag`'s kinds.
const V4: u8 = 0;
const V6: u8 = 1;
const ASN: u8 = 2;
const KIND: u8 = 0b11;

/// Most lanes an account may have (the tag's six lane bits).
pub const MAX_LANES: usize = 64;

/// Why a decision value cannot become a list item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("not an IP address or CIDR")]
    Invalid,
    #[error("range wider than Cloudflare accepts (IPv4 /8, IPv6 /12)")]
    TooBroad,
    #[error("not an AS number (a number from 1 to 4294967294, or AS13335)")]
    NotAsn,
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

    /// Maps an `AS` decision's value (`13335`, or `AS13335`) to its item. AS 0 and
    /// 4294967295 are reserved (RFC 7607, RFC 7300): never an origin to block.
    ///
    /// # Errors
    /// [`ItemError::NotAsn`] if the value is no AS number.
    pub fn from_asn_decision(value: &str) -> Result<Item, ItemError> {
        let value = value.trim();
        let digits = match value.get(..2) {
            Some(prefix) if prefix.eq_ignore_ascii_case("as") => &value[2..],
            _ => value,
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ItemError::NotAsn);
        }
        match digits.parse::<u32>() {
            Ok(asn) if asn != 0 && asn != u32::MAX => Ok(Item::from_asn(asn)),
            _ => Err(ItemError::NotAsn),
        }
    }

    /// The item of AS number `asn` (as an ASN list holds it).
    pub fn from_asn(asn: u32) -> Item {
        let mut data = [0; 17];
        data[..4].copy_from_slice(&asn.to_be_bytes());
        Item { tag: ASN, data }
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
        parse_net(text.trim()).map(|net| Item::of_net(net.trunc()))
    }

    /// Whether this is an IPv6 item (for metrics and logs).
    pub fn is_ipv6(&self) -> bool {
        self.tag & KIND == V6
    }

    /// Whether this is an AS number (an item of an `asn` list).
    pub fn is_asn(&self) -> bool {
        self.tag & KIND == ASN
    }

    /// The network this item covers; `None` for an AS number.
    pub fn net(&self) -> Option<IpNet> {
        match self.tag & KIND {
            V4 => {
                let addr = Ipv4Addr::new(self.data[0], self.data[1], self.data[2], self.data[3]);
                Ipv4Net::new(addr, self.data[4]).ok().map(IpNet::V4)
            }
            V6 => {
                let mut octets = [0; 16];
                octets.copy_from_slice(&self.data[..16]);
                Ipv6Net::new(Ipv6Addr::from(octets), self.data[16])
                    .ok()
                    .map(IpNet::V6)
            }
            _ => None,
        }
    }

    /// The AS number; `None` for an IP network.
    pub fn asn(&self) -> Option<u32> {
        self.is_asn()
            .then(|| u32::from_be_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]))
    }

    /// The lane (the account's list) this item is on.
    pub fn lane(&self) -> usize {
        usize::from(self.tag >> 2)
    }

    /// This item on lane `lane` (below [`MAX_LANES`]; higher lanes wrap, and the
    /// configuration refuses that many lists).
    #[must_use]
    pub fn on(self, lane: usize) -> Item {
        let lane = (lane % MAX_LANES) as u8;
        Item {
            tag: (self.tag & KIND) | (lane << 2),
            data: self.data,
        }
    }

    /// This item without its lane (on lane 0): the value a decision maps to.
    #[must_use]
    pub fn bare(self) -> Item {
        self.on(0)
    }

    fn of_net(net: IpNet) -> Item {
        let mut data = [0; 17];
        match net {
            IpNet::V4(v4) => {
                data[..4].copy_from_slice(&v4.addr().octets());
                data[4] = v4.prefix_len();
                Item { tag: V4, data }
            }
            IpNet::V6(v6) => {
                data[..16].copy_from_slice(&v6.addr().octets());
                data[16] = v6.prefix_len();
                Item { tag: V6, data }
            }
        }
    }

    fn checked(net: IpNet) -> Result<Item, ItemError> {
        let min = match net {
            IpNet::V4(_) => MIN_IPV4_PREFIX,
            IpNet::V6(_) => MIN_IPV6_PREFIX,
        };
        if net.prefix_len() < min {
            return Err(ItemError::TooBroad);
        }
        Ok(Item::of_net(net.trunc()))
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
    /// The exact text Cloudflare stores for an IP item; `AS13335` for an AS number (an
    /// ASN list stores the number itself).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net(), self.asn()) {
            (Some(IpNet::V4(net)), _) if net.prefix_len() == 32 => write!(f, "{}", net.addr()),
            (Some(IpNet::V6(net)), _) if net.prefix_len() == 128 => write!(f, "{}", net.addr()),
            (Some(net), _) => write!(f, "{}/{}", net.addr(), net.prefix_len()),
            (None, asn) => write!(f, "AS{}", asn.unwrap_or_default()),
        }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lane() {
            0 => write!(f, "Item({self})"),
            lane => write!(f, "Item({self} on lane {lane})"),
        }
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
    fn items_stay_eighteen_bytes() {
        assert_eq!(std::mem::size_of::<Item>(), 18);
        assert_eq!(std::mem::align_of::<Item>(), 1);
    }

    #[test]
    fn as_numbers_parse_with_or_without_their_prefix() {
        let asn = |v| Item::from_asn_decision(v).map(|i| (i.asn(), i.to_string()));
        assert_eq!(asn("13335"), Ok((Some(13335), "AS13335".into())));
        assert_eq!(asn(" AS13335 "), Ok((Some(13335), "AS13335".into())));
        assert_eq!(asn("as64496"), Ok((Some(64496), "AS64496".into())));
        for bad in [
            "",
            "AS",
            "0",
            "4294967295",
            "4294967296",
            "-1",
            "1.2.3.4",
            "AS 1",
            "+5",
        ] {
            assert_eq!(asn(bad), Err(ItemError::NotAsn), "{bad:?}");
        }
        let item = Item::from_asn(13335);
        assert!(item.is_asn() && !item.is_ipv6() && item.net().is_none());
        assert_ne!(item, Item::from_decision("0.0.52.23", 64).unwrap());
    }

    #[test]
    fn lanes_keep_the_value_and_order_first() {
        let ip = Item::from_decision("10.0.0.0/24", 64).unwrap();
        let on = ip.on(3);
        assert_eq!(
            (on.lane(), on.to_string(), on.bare()),
            (3, ip.to_string(), ip)
        );
        assert_ne!(on, ip);
        assert!(ip < on && Item::from_asn(1) < on);
        let v6 = Item::from_decision("2001:db8::1", 64).unwrap();
        assert_eq!(v6.on(5).net(), v6.net());
        assert!(v6.on(5).is_ipv6());
        assert_eq!(Item::from_asn(7).on(2).asn(), Some(7));
    }

    #[test]
    fn order_matches_the_networks() {
        let texts = [
            "10.0.0.1",
            "2001:db8::/64",
            "9.0.0.0/8",
            "10.0.0.0/24",
            "10.0.0.0/16",
        ];
        let mut items: Vec<Item> = texts
            .iter()
            .map(|t| Item::from_decision(t, 64).unwrap())
            .collect();
        items.sort();
        let mut nets: Vec<IpNet> = texts.iter().map(|t| parse_net(t).unwrap()).collect();
        nets.sort();
        assert_eq!(
            items.iter().map(|i| i.net().unwrap()).collect::<Vec<_>>(),
            nets
        );
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
