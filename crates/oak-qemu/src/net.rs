//! The guest's place on the overlay. The worker wires each instance a network namespace with a
//! veth (`eth0`) holding the instance's namespace address and a default route to the bridge.
//! For a VM, [`hand_over`] moves that address to the guest: inside the namespace a tap
//! ([`TAP`]) and `eth0` are joined by a bridge ([`BRIDGE`]) and `eth0` gives up its address,
//! which the guest takes through the `netdev.*` kernel arguments. Everything lives in the
//! instance's namespace, so it goes when the worker removes the namespace.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::command::GuestNet;

pub const TAP: &str = "oaktap0";
pub const BRIDGE: &str = "oakvmbr0";
const IF: &str = "eth0";

/// `ip args…` inside the namespace at `netns` (entered between fork and exec).
async fn ip_in(netns: &Path, args: &[&str]) -> Result<String, String> {
    let ns =
        std::fs::File::open(netns).map_err(|e| format!("cannot open network namespace {}: {e}", netns.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    {
        use std::os::fd::AsRawFd;
        let fd = ns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; `ns` stays open until the child was spawned.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().await.map_err(|e| format!("cannot run ip: {e} (is iproute2 installed?)"))?;
    drop(ns);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Address, prefix length and gateway from `ip -o -4 addr show dev eth0` and
/// `ip route show default` output.
pub fn parse_wiring(addrs: &str, routes: &str) -> Option<(Ipv4Addr, u8, Ipv4Addr)> {
    let cidr = addrs.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    let (addr, prefix) = cidr.split_once('/')?;
    let gateway = routes.split_whitespace().skip_while(|w| *w != "via").nth(1)?;
    Some((addr.parse().ok()?, prefix.parse().ok().filter(|p| *p <= 32)?, gateway.parse().ok()?))
}

pub fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// A locally administered MAC derived from the address (unique among the node's instances).
pub fn mac_for(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Moves the namespace's address to a tap for the guest; returns the guest's settings.
pub async fn hand_over(netns: &Path) -> Result<GuestNet, String> {
    let addrs = ip_in(netns, &["-o", "-4", "addr", "show", "dev", IF]).await?;
    let routes = ip_in(netns, &["route", "show", "default"]).await?;
    let (addr, prefix, gateway) = parse_wiring(&addrs, &routes)
        .ok_or_else(|| format!("the instance's namespace has no address and default route on {IF}"))?;
    let mtu = ip_in(netns, &["-o", "link", "show", "dev", IF])
        .await?
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or("1500")
        .to_string();
    let steps: Vec<Vec<String>> = vec![
        vec!["tuntap".into(), "add".into(), "dev".into(), TAP.into(), "mode".into(), "tap".into()],
        vec!["link".into(), "set".into(), "dev".into(), TAP.into(), "mtu".into(), mtu],
        vec!["link".into(), "add".into(), BRIDGE.into(), "type".into(), "bridge".into()],
        vec!["addr".into(), "del".into(), format!("{addr}/{prefix}"), "dev".into(), IF.into()],
        vec!["link".into(), "set".into(), "dev".into(), IF.into(), "master".into(), BRIDGE.into()],
        vec!["link".into(), "set".into(), "dev".into(), TAP.into(), "master".into(), BRIDGE.into(), "up".into()],
        vec!["link".into(), "set".into(), "dev".into(), BRIDGE.into(), "up".into()],
    ];
    for step in &steps {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        ip_in(netns, &args).await?;
    }
    Ok(GuestNet {
        tap: TAP.into(),
        mac: mac_for(addr),
        addr: addr.to_string(),
        gateway: gateway.to_string(),
        mask: mask(prefix).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wiring_is_read_from_ip_output() {
        let addrs = "2: eth0    inet 10.18.0.5/26 brd 10.18.0.63 scope global eth0\\       valid_lft forever\n";
        let routes = "default via 10.18.0.1 dev eth0 \n";
        assert_eq!(parse_wiring(addrs, routes), Some(("10.18.0.5".parse().unwrap(), 26, "10.18.0.1".parse().unwrap())));
        assert_eq!(parse_wiring("", routes), None);
        assert_eq!(parse_wiring(addrs, ""), None);
        assert_eq!(mask(26).to_string(), "255.255.255.192");
        assert_eq!(mask(0).to_string(), "0.0.0.0");
        assert_eq!(mask(32).to_string(), "255.255.255.255");
        assert_eq!(mac_for("10.18.0.5".parse().unwrap()), "52:54:0a:12:00:05");
    }
}
