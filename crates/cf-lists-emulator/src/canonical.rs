//! The emulator's own parsing and canonicalisation of list item IPs
//! (docs/cloudflare-lists.md §6.1, §6.3), and the opaque pagination cursor codec
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

/// Encodes a position as an opaque cursor: direction letter + hex of (family, address, prefix).
///
/// Items are keyed by [`IpNet`], whose derived `Ord` is family (v4 first), then address, then
/// prefix length: exactly the documented sort order (docs/cloudflare-lists.md §2.3).
pub(crate) fn encode_cursor(direction: Direction, net: &IpNet) -> String {
    let (family, addr) = match net {
        IpNet::V4(v4) => (4u8, u128::from(u32::from(v4.addr()))),
        IpNet::V6(v6) => (6u8, u128::from(v6.addr())),
    };
    let letter = match direction {
        Direction::After => 'a',
        Direction::Before => 'b',
    };
    format!("{letter}{family:02x}{addr:032x}{:02x}", net.prefix_len())
}

/// Decodes a cursor made by [`encode_cursor`]; `None` for anything else.
pub(crate) fn decode_cursor(cursor: &str) -> Option<(Direction, IpNet)> {
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
    let addr = u128::from_str_radix(rest.get(2..34)?, 16).ok()?;
    let prefix = u8::from_str_radix(rest.get(34..)?, 16).ok()?;
    let net = match family {
        4 => IpNet::V4(Ipv4Net::new(u32::try_from(addr).ok()?.into(), prefix).ok()?),
        6 => IpNet::V6(Ipv6Net::new(addr.into(), prefix).ok()?),
        _ => return None,
    };
    Some((direction, net))
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
        for raw in ["1.2.3.4", "10.0.0.0/8", "2001:db8::/32", "::"] {
            let net = parse_item_ip(raw, CURRENT).unwrap();
            for direction in [Direction::After, Direction::Before] {
                let cursor = encode_cursor(direction, &net);
                assert_eq!(decode_cursor(&cursor), Some((direction, net)));
            }
        }
        assert_eq!(decode_cursor("zzz"), None);
        assert_eq!(decode_cursor(""), None);
        assert_eq!(
            decode_cursor("a07000000000000000000000000000000000020"),
            None
        );
    }
}
