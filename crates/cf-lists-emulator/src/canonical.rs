//! The emulator's own parsing and canonicalisation of list item IPs
//! (docs/cloudflare-lists.md §6.1, §6.3), the key items are stored and sorted by (an IP network
//! or an AS number, docs/cloudflare-lists.md §13), and the opaque pagination cursor codec
//! (docs/cloudflare-lists.md §2.3).
//!
//! This is written independently of the bouncer's canonicalisation on purpose: if both were
//! the same code, a bug in it could never be caught by the integration tests.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::HostBits;

/// Smallest IPv4 prefix length the API accepts (docs/cloudflare-lists.md §6.1: "/8 to /32").
const IPV4_MIN_PREFIX: u8 = 8;
/// Smallest IPv6 prefix length the API accepts (docs/cloudflare-lists.md §6.1: "/12 to /128", 10035
/// text "/12 to /64").
const IPV6_MIN_PREFIX: u8 = 12;

/// What identifies an item within its list: its canonical network in an `ip` list, its number
/// in an `asn` list (docs/cloudflare-lists.md §13). A list holds keys of one variant only.
///
/// The derived order is the documented item order: for IPs family (v4 first), address, prefix
/// length (docs/cloudflare-lists.md §2.3); for ASNs ascending numbers
/// (docs/cloudflare-lists.md §13.2, inferred).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ItemKey {
    Ip(IpNet),
    Asn(u32),
}

impl ItemKey {
    /// The value's text: the canonical IP (what `search` prefix-matches), or the number in
    /// decimal (what `search` must equal, docs/cloudflare-lists.md §13.2).
    pub(crate) fn text(&self) -> String {
        match self {
            ItemKey::Ip(net) => ip_text(net),
            ItemKey::Asn(asn) => asn.to_string(),
        }
    }

    /// Whether `search` selects this item: a prefix of an IP's text, or exactly an ASN's.
    pub(crate) fn matches(&self, search: &str) -> bool {
        match self {
            ItemKey::Ip(_) => self.text().starts_with(search),
            ItemKey::Asn(_) => self.text() == search,
        }
    }

    /// Whether both keys are of the same kind (a cursor of one list kind means nothing in
    /// another).
    pub(crate) fn same_kind(&self, other: &ItemKey) -> bool {
        matches!(
            (self, other),
            (ItemKey::Ip(_), ItemKey::Ip(_)) | (ItemKey::Asn(_), ItemKey::Asn(_))
        )
    }
}

/// Which item IPs a write accepts; built from [`super::Settings`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpRules {
    /// 128 for the current API, 64 for the pre-2025-07 API (docs/cloudflare-lists.md §6.1).
    pub ipv6_max_prefix: u8,
    pub host_bits: HostBits,
}

/// Why an item IP was refused. All of these become error 10035 (docs/cloudflare-lists.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IpError {
    /// Not an address, not a CIDR.
    Unparsable,
    /// IPv4 prefix outside /8..=/32. The detail text is invented by analogy with the IPv6 one.
    Ipv4Prefix,
    /// IPv6 prefix (or a host, which is a /128) outside /12..=max. Observed text
    /// (docs/cloudflare-lists.md §6.1).
    Ipv6Prefix { max: u8 },
    /// `1.1.1.1/24` while [`HostBits::Reject`] is selected. Text invented
    /// (docs/cloudflare-lists.md §12).
    HostBits,
}

impl IpError {
    /// The message of error 10035 for the item at `position` (0-based, as observed).
    pub(crate) fn message(&self, position: usize) -> String {
        let head = format!("invalid value for ip at position {position}");
        match self {
            IpError::Unparsable => head,
            IpError::Ipv4Prefix => format!(
                "{head}: filters.api.IPv4 CIDRs should have a prefix length from /{IPV4_MIN_PREFIX} to /32 inclusive"
            ),
            IpError::Ipv6Prefix { max } => format!(
                "{head}: filters.api.IPv6 CIDRs should have a prefix length from /{IPV6_MIN_PREFIX} to /{max} inclusive"
            ),
            IpError::HostBits => format!("{head}: filters.api.CIDR has host bits set"),
        }
    }
}

/// Parses an item IP as the API would and returns its canonical network.
///
/// A host is a /32 or /128; host bits of a CIDR are masked or refused per `rules.host_bits`.
/// No whitespace trimming: the API is not known to trim, so the emulator refuses.
pub(crate) fn parse_item_ip(raw: &str, rules: IpRules) -> Result<IpNet, IpError> {
    let (addr_text, prefix) = match raw.split_once('/') {
        Some((addr, prefix)) => (addr, Some(parse_prefix(prefix)?)),
        None => (raw, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| IpError::Unparsable)?;
    let net = match addr {
        IpAddr::V4(v4) => {
            let len = prefix.unwrap_or(32);
            if !(IPV4_MIN_PREFIX..=32).contains(&len) {
                return Err(IpError::Ipv4Prefix);
            }
            IpNet::V4(Ipv4Net::new(v4, len).map_err(|_| IpError::Ipv4Prefix)?)
        }
        IpAddr::V6(v6) => {
            let len = prefix.unwrap_or(128);
            let max = rules.ipv6_max_prefix.clamp(IPV6_MIN_PREFIX, 128);
            if !(IPV6_MIN_PREFIX..=max).contains(&len) {
                return Err(IpError::Ipv6Prefix { max });
            }
            IpNet::V6(Ipv6Net::new(v6, len).map_err(|_| IpError::Ipv6Prefix { max })?)
        }
    };
    let masked = net.trunc();
    if masked != net && rules.host_bits == HostBits::Reject {
        return Err(IpError::HostBits);
    }
    Ok(masked)
}

/// Digits only: `u8::from_str` would also accept a leading `+`.
fn parse_prefix(text: &str) -> Result<u8, IpError> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IpError::Unparsable);
    }
    text.parse().map_err(|_| IpError::Unparsable)
}

/// The stored text of a canonical network (docs/cloudflare-lists.md §6.3): /32 and /128 are written
/// as plain addresses, everything else as `network/len`. IPv6 uses std's RFC 5952 lowercase form.
pub(crate) fn ip_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        format!("{}/{}", net.network(), net.prefix_len())
    }
}

/// Direction of a cursor: the page after or before the encoded item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    After,
    Before,
}

/// The family byte of an ASN position in a cursor; IP positions use 4 and 6.
const ASN_FAMILY: u8 = 0xa5;

/// Encodes a position as an opaque cursor: direction letter + hex of (family, value, prefix).
/// An IP is (4 or 6, address, prefix length), an ASN is ([`ASN_FAMILY`], number, 0).
pub(crate) fn encode_cursor(direction: Direction, key: &ItemKey) -> String {
    let (family, value, prefix) = match key {
        ItemKey::Ip(IpNet::V4(v4)) => (4u8, u128::from(u32::from(v4.addr())), v4.prefix_len()),
        ItemKey::Ip(IpNet::V6(v6)) => (6u8, u128::from(v6.addr()), v6.prefix_len()),
        ItemKey::Asn(asn) => (ASN_FAMILY, u128::from(*asn), 0),
    };
    let letter = match direction {
        Direction::After => 'a',
        Direction::Before => 'b',
    };
    format!("{letter}{family:02x}{value:032x}{prefix:02x}")
}

/// Decodes a cursor made by [`encode_cursor`]; `None` for anything else.
pub(crate) fn decode_cursor(cursor: &str) -> Option<(Direction, ItemKey)> {
    let direction = match cursor.get(..1)? {
        "a" => Direction::After,
        "b" => Direction::Before,
        _ => return None,
    };
    let rest = cursor.get(1..)?;
    if rest.len() != 36 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let family = u8::from_str_radix(rest.get(..2)?, 16).ok()?;
    let value = u128::from_str_radix(rest.get(2..34)?, 16).ok()?;
    let prefix = u8::from_str_radix(rest.get(34..)?, 16).ok()?;
    let key = match family {
        4 => ItemKey::Ip(IpNet::V4(
            Ipv4Net::new(u32::try_from(value).ok()?.into(), prefix).ok()?,
        )),
        6 => ItemKey::Ip(IpNet::V6(Ipv6Net::new(value.into(), prefix).ok()?)),
        ASN_FAMILY if prefix == 0 => ItemKey::Asn(u32::try_from(value).ok()?),
        _ => return None,
    };
    Some((direction, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: IpRules = IpRules {
        ipv6_max_prefix: 128,
        host_bits: HostBits::Mask,
    };

    fn check(raw: &str, rules: IpRules, expected: Result<&str, IpError>) {
        let got = parse_item_ip(raw, rules).map(|net| ip_text(&net));
        assert_eq!(got, expected.map(str::to_owned), "input {raw:?}");
    }

    #[test]
    fn canonical_forms_follow_docs_6_3() {
        check("1.2.3.4", CURRENT, Ok("1.2.3.4"));
        check("1.2.3.4/32", CURRENT, Ok("1.2.3.4"));
        check("10.1.2.3/24", CURRENT, Ok("10.1.2.0/24"));
        check("2001:DB8::1/128", CURRENT, Ok("2001:db8::1"));
        check("0f::", CURRENT, Ok("f::"));
        check("f::1/64", CURRENT, Ok("f::/64"));
        check("2001:db8:0:0:0:0:0:1", CURRENT, Ok("2001:db8::1"));
        check("::ffff:1.2.3.4", CURRENT, Ok("::ffff:1.2.3.4"));
    }

    #[test]
    fn out_of_range_and_garbage_are_refused() {
        check("1.2.3.4/7", CURRENT, Err(IpError::Ipv4Prefix));
        check("1.2.3.4/33", CURRENT, Err(IpError::Ipv4Prefix));
        check(
            "2001:db8::/11",
            CURRENT,
            Err(IpError::Ipv6Prefix { max: 128 }),
        );
        check("1.2.3.4/+8", CURRENT, Err(IpError::Unparsable));
        check("1.2.3.4/", CURRENT, Err(IpError::Unparsable));
        check(" 1.2.3.4", CURRENT, Err(IpError::Unparsable));
        check("01.2.3.4", CURRENT, Err(IpError::Unparsable));
        check("example.com", CURRENT, Err(IpError::Unparsable));
    }

    #[test]
    fn legacy_ipv6_max_64_and_host_bit_rejection() {
        let legacy = IpRules {
            ipv6_max_prefix: 64,
            host_bits: HostBits::Mask,
        };
        check("2001:db8::1", legacy, Err(IpError::Ipv6Prefix { max: 64 }));
        check(
            "2001:db8::/65",
            legacy,
            Err(IpError::Ipv6Prefix { max: 64 }),
        );
        check("2001:db8::/64", legacy, Ok("2001:db8::/64"));
        let strict = IpRules {
            ipv6_max_prefix: 128,
            host_bits: HostBits::Reject,
        };
        check("10.1.2.3/24", strict, Err(IpError::HostBits));
        check("10.1.2.0/24", strict, Ok("10.1.2.0/24"));
    }

    #[test]
    fn cursor_round_trips() {
        let ips = ["1.2.3.4", "10.0.0.0/8", "2001:db8::/32", "::"]
            .map(|raw| ItemKey::Ip(parse_item_ip(raw, CURRENT).unwrap()));
        let asns = [0, 13335, u32::MAX].map(ItemKey::Asn);
        for key in ips.into_iter().chain(asns) {
            for direction in [Direction::After, Direction::Before] {
                let cursor = encode_cursor(direction, &key);
                assert_eq!(decode_cursor(&cursor), Some((direction, key)));
            }
        }
        // An ASN position wider than 32 bits, or with a prefix, is no cursor of ours.
        let too_wide = format!("aa5{:032x}00", 1u128 << 32);
        assert_eq!(decode_cursor(&too_wide), None);
        let with_prefix = format!("aa5{:032x}01", 13335);
        assert_eq!(decode_cursor(&with_prefix), None);
        let valid = format!("aa5{:032x}00", 13335);
        assert_eq!(
            decode_cursor(&valid),
            Some((Direction::After, ItemKey::Asn(13335)))
        );
        assert_eq!(decode_cursor("zzz"), None);
        assert_eq!(decode_cursor(""), None);
        assert_eq!(
            decode_cursor("a07000000000000000000000000000000000020"),
            None
        );
    }
}
