//! The node's IPv4 address as other machines see it.

use std::ffi::CStr;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The local address the kernel would use to reach the cluster (a UDP "connect" only picks a
/// route; no packet is sent). If that is a loopback address (cluster on the same host) or the
/// cluster cannot be resolved, the first non-loopback IPv4 of an interface that is up.
/// Blocking (name resolution): run it on the blocking pool.
pub(crate) fn node_ipv4(cluster_address: &str, cluster_port: u16) -> Option<Ipv4Addr> {
    let routed = route_source(cluster_address, cluster_port);
    match routed {
        Some(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => first_interface_ipv4().or(routed),
    }
}

/// The local address the kernel would use to reach `cluster_address` (no packet is sent).
pub(crate) fn route_source(cluster_address: &str, cluster_port: u16) -> Option<Ipv4Addr> {
    let target = (cluster_address, cluster_port).to_socket_addrs().ok()?.find(SocketAddr::is_ipv4)?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(target).ok()?;
    match socket.local_addr().ok()? {
        SocketAddr::V4(v4) => Some(*v4.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// First IPv4 address of an interface that is up and not loopback.
pub(crate) fn first_interface_ipv4() -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that is only read below and freed once with
    // freeifaddrs; every pointer is checked for null before it is dereferenced.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cursor = addrs;
        while !cursor.is_null() {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_addr.is_null() || i32::from((*entry.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
            let loopback = entry.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            if !up || loopback {
                continue;
            }
            let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() {
                let name =
                    if entry.ifa_name.is_null() { "" } else { CStr::from_ptr(entry.ifa_name).to_str().unwrap_or("") };
                tracing::trace!(interface = name, %ip, "node address from interface");
                found = Some(ip);
                break;
            }
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_cluster_still_yields_an_address() {
        // On a machine with only a loopback interface the routed loopback address is the answer.
        let ip = node_ipv4("127.0.0.1", 10100).expect("an address");
        if let Some(external) = first_interface_ipv4() {
            assert_eq!(ip, external);
        } else {
            assert!(ip.is_loopback());
        }
    }

    #[test]
    fn unresolvable_cluster_falls_back_to_interfaces() {
        assert_eq!(node_ipv4("", 1), first_interface_ipv4());
    }
}
