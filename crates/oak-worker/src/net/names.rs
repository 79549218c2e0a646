//! Names of everything the overlay creates on a host. All start with `oak` (links) or `OAK-`
//! (iptables chains), and an instance's network namespace carries a prefix of the node id, so a
//! restarted worker can tell its own leftovers from other workers' (several workers may share
//! one host's `/run/netns`, e.g. in tests).

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// The bridge every local instance's veth is attached to.
pub const BRIDGE: &str = "oakbr0";
/// The TUN device the service range is routed into.
pub const TUN: &str = "oaktun0";
/// Prefix of the host side of an instance's veth.
pub const VETH_PREFIX: &str = "oakv";
/// The interface name inside an instance's namespace.
pub const INSTANCE_IF: &str = "eth0";
/// filter-table chain jumped to from `FORWARD`.
pub const CHAIN_FORWARD: &str = "OAK-FWD";
/// nat-table chain jumped to from `POSTROUTING` (masquerade).
pub const CHAIN_POSTROUTING: &str = "OAK-POST";
/// nat-table chain jumped to from `PREROUTING` and `OUTPUT` (port mappings).
pub const CHAIN_PORTS: &str = "OAK-PORTS";
/// ebtables chain (bridge `filter` table, jumped to from INPUT and FORWARD) holding each
/// instance's source rules.
pub const CHAIN_GUARD: &str = "OAK-GUARD";
/// The service range routed into the TUN.
pub const SERVICE_RANGE: &str = "10.30.0.0/16";
/// MTU of bridge, veths and TUN: 1500 minus the tunnel's outer IPv4 and UDP headers (28) and
/// the encryption's constant 32 bytes, with room (WireGuard's 1420).
pub const MTU: u32 = 1420;
/// Largest offloaded packet an instance's veth hands on (`gso_max_size`): the segments of one
/// sealed for the tunnel fit a single UDP GSO send (64 KiB), so each such packet costs the
/// packet threads one send and the receiver one coalesced run instead of two.
pub const INSTANCE_GSO_MAX: u32 = 60_000;

/// Where named network namespaces are bind-mounted (`ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of this node's instance namespaces: `oak-<8 hex of the node id>-`.
pub fn netns_prefix(node_id: &str) -> String {
    format!("oak-{}-", &hex_digest(node_id)[..8])
}

/// Network namespace of the instance with address `nsip` on one node. Named by the address,
/// not the instance, so a namespace can be wired before it is known which instance gets it.
pub fn netns(node_id: &str, nsip: Ipv4Addr) -> String {
    format!("{}{}", netns_prefix(node_id), u32::from(nsip))
}

/// Host side of the veth of address `nsip` (at most 15 bytes, the kernel's limit).
pub fn veth(node_id: &str, nsip: Ipv4Addr) -> String {
    format!("{VETH_PREFIX}{}", &hex_digest(&format!("{node_id}/{nsip}"))[..10])
}

fn hex_digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A worker's /26: network address and the addresses in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
}

impl Subnet {
    pub const PREFIX: u8 = 26;
    /// Addresses instances get: `.2` to `.62` of the block (`.1` is the bridge, `.63` broadcast).
    pub const HOSTS: std::ops::RangeInclusive<u32> = 2..=62;

    /// Parses `10.18.0.64/26` (the prefix must be 26 and the address a block start).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(|| format!("subnet {text:?} has no /prefix"))?;
        let network: Ipv4Addr =
            addr.parse().map_err(|_| format!("subnet {text:?}: {addr:?} is not an IPv4 address"))?;
        if prefix != "26" {
            return Err(format!("subnet {text:?} is not a /26"));
        }
        if u32::from(network) % 64 != 0 {
            return Err(format!("subnet {text:?} does not start a /26 block"));
        }
        Ok(Self { network })
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The bridge's MAC: locally administered and made of its address, so it stays the same
    /// across restarts and, unlike a bridge's default (the lowest MAC of its ports), does not
    /// change as instances come and go.
    pub fn bridge_mac(&self) -> String {
        let [a, b, c, d] = self.bridge_ip().octets();
        format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    pub fn host(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }

    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(ip).checked_sub(u32::from(self.network))?;
        (offset < 64).then_some(offset)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, Self::PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_per_node() {
        let ip = |d: u8| Ipv4Addr::new(10, 18, 0, d);
        let a = veth("node-a", ip(2));
        assert!(a.len() <= 15 && a.starts_with("oakv"), "{a}");
        assert_ne!(a, veth("node-b", ip(2)));
        assert_ne!(a, veth("node-a", ip(3)));
        let ns = netns("node-a", ip(3));
        assert_ne!(ns, netns("node-a", ip(4)));
        assert!(ns.starts_with(&netns_prefix("node-a")));
        assert!(!ns.starts_with(&netns_prefix("node-b")));
    }

    #[test]
    fn subnet_parsing_and_hosts() {
        let s = Subnet::parse("10.18.0.64/26").unwrap();
        assert_eq!(s.bridge_ip(), Ipv4Addr::new(10, 18, 0, 65));
        assert_eq!(s.host(62), Ipv4Addr::new(10, 18, 0, 126));
        assert_eq!(s.offset_of(Ipv4Addr::new(10, 18, 0, 70)), Some(6));
        assert_eq!(s.offset_of(Ipv4Addr::new(10, 18, 0, 128)), None);
        assert_eq!(s.to_string(), "10.18.0.64/26");
        assert_eq!(s.bridge_mac(), "02:00:0a:12:00:41", "locally administered, unicast, from 10.18.0.65");
        for bad in ["10.18.0.64", "10.18.0.64/24", "10.18.0.65/26", "ten/26"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }
}
