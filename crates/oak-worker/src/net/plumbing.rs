//! Host plumbing of the overlay. What is set up once per worker (bridge, TUN route, iptables
//! chains) and the port mappings are done with `ip` and `iptables`: iproute2 and iptables are
//! what every edge distribution ships, and their semantics are what operators debug with. An
//! instance's namespace, veth, address and route, made and removed at every deploy, are done
//! in-process (`netns`, `netlink`): an `ip` process per step cost several milliseconds a deploy.
//! Every operation is idempotent ("ensure"/"remove if present"), so set-up after a crash and
//! reconciliation are the same code path.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use netlink_packet_route::link::InfoKind;
use tokio::process::Command;

use super::names::{self, Subnet};
use super::netlink::{describe, Rtnl, Veth};
use super::netns;

/// A port mapping as iptables needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub host: u16,
    pub container: u16,
    /// `tcp` or `udp`.
    pub udp: bool,
}

impl Mapping {
    fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

/// Runs a command, failing with its stderr.
async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e} (is it installed?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

async fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args).await
}

/// `program args…` with `input` on its standard input (several rules, one process).
async fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (is it installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether the link exists in this process's network namespace. Asks the kernel (an ioctl),
/// not `/sys/class/net`: that shows the namespace sysfs was mounted in, which differs for a
/// worker started with `nsenter --net` (and for many containerised workers).
pub fn link_exists(name: &str) -> bool {
    link_index(name).is_some()
}

/// The link's index in this thread's network namespace (see [`link_exists`]).
fn link_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

async fn iptables(args: &[&str]) -> Result<String, String> {
    // -w: wait for the xtables lock instead of failing when another tool holds it.
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all).await
}

/// Whether a rule exists (`iptables -C`).
async fn rule_exists(table: &str, chain: &str, rule: &[&str]) -> bool {
    let mut args = vec!["-t", table, "-C", chain];
    args.extend_from_slice(rule);
    iptables(&args).await.is_ok()
}

async fn ensure_rule(table: &str, chain: &str, rule: &[&str], insert: bool) -> Result<(), String> {
    if rule_exists(table, chain, rule).await {
        return Ok(());
    }
    let mut args = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    args.extend_from_slice(rule);
    iptables(&args).await.map(drop)
}

async fn delete_rule(table: &str, chain: &str, rule: &[&str]) {
    // A rule added twice (by hand, or an old version) is deleted until none is left.
    for _ in 0..8 {
        if !rule_exists(table, chain, rule).await {
            return;
        }
        let mut args = vec!["-t", table, "-D", chain];
        args.extend_from_slice(rule);
        if iptables(&args).await.is_err() {
            return;
        }
    }
}

/// Creates `chain` in `table` if missing and empties it.
async fn fresh_chain(table: &str, chain: &str) -> Result<(), String> {
    if iptables(&["-t", table, "-N", chain]).await.is_err() {
        iptables(&["-t", table, "-F", chain]).await?;
    }
    Ok(())
}

async fn remove_chain(table: &str, chain: &str) {
    let _ = iptables(&["-t", table, "-F", chain]).await;
    let _ = iptables(&["-t", table, "-X", chain]).await;
}

/// The jumps from built-in chains into ours.
const JUMPS: &[(&str, &str, &[&str])] = &[
    ("filter", "FORWARD", &["-j", names::CHAIN_FORWARD]),
    ("nat", "POSTROUTING", &["-j", names::CHAIN_POSTROUTING]),
    // Port mappings match only traffic addressed to this node (the original matched any
    // destination, rewriting containers' connections to remote hosts on a mapped port).
    ("nat", "PREROUTING", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", names::CHAIN_PORTS]),
    ("nat", "OUTPUT", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", names::CHAIN_PORTS]),
];

fn write_sysctl(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot set {path} to {value}: {e}"))
}

/// Bridge with the subnet's first address, forwarding and rp_filter, our chains with their
/// rules and jumps. Port-mapping rules of existing instances are added back by their attach.
pub async fn setup_host(subnet: Subnet) -> Result<(), String> {
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    // Replies to service IPs come back through the TUN with addresses the reverse path check
    // would not expect on it.
    write_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter", "0")?;

    if ip(&["link", "show", "dev", names::BRIDGE]).await.is_err() {
        ip(&["link", "add", names::BRIDGE, "type", "bridge"]).await?;
    }
    let mtu = names::MTU.to_string();
    let mac = subnet.bridge_mac();
    ip(&["link", "set", "dev", names::BRIDGE, "address", &mac, "mtu", &mtu, "up"]).await?;
    let bridge_addr = format!("{}/{}", subnet.bridge_ip(), Subnet::PREFIX);
    // Another subnet's address from an earlier identity must not linger.
    ip(&["addr", "flush", "dev", names::BRIDGE]).await?;
    ip(&["addr", "add", &bridge_addr, "dev", names::BRIDGE]).await?;
    let _ = write_sysctl(&format!("/proc/sys/net/ipv4/conf/{}/rp_filter", names::BRIDGE), "0");
    // `curl localhost:<mapped port>` on the node: the DNAT'd packet keeps its loopback source on
    // the bridge (allowed by route_localnet) and is masqueraded below so the instance can answer.
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{}/route_localnet", names::BRIDGE), "1")?;

    // Instances' source guards: added back by their attach (or re-attach after a restart).
    if run("ebtables", &["-N", names::CHAIN_GUARD, "-P", "RETURN"]).await.is_err() {
        run("ebtables", &["-F", names::CHAIN_GUARD]).await?;
    }
    for hook in ["INPUT", "FORWARD"] {
        let listed = run("ebtables", &["-L", hook]).await?;
        if !listed.lines().any(|l| l.trim() == format!("-j {}", names::CHAIN_GUARD)) {
            run("ebtables", &["-A", hook, "-j", names::CHAIN_GUARD]).await?;
        }
    }
    fresh_chain("filter", names::CHAIN_FORWARD).await?;
    for dir in ["-i", "-o"] {
        for dev in [names::BRIDGE, names::TUN] {
            iptables(&["-t", "filter", "-A", names::CHAIN_FORWARD, dir, dev, "-j", "ACCEPT"]).await?;
        }
    }
    fresh_chain("nat", names::CHAIN_POSTROUTING).await?;
    let src = subnet.to_string();
    // Overlay traffic keeps its addresses; everything else leaving the node is masqueraded so
    // instances reach the outside world.
    iptables(&["-t", "nat", "-A", names::CHAIN_POSTROUTING, "-s", &src, "-o", names::TUN, "-j", "RETURN"]).await?;
    iptables(&["-t", "nat", "-A", names::CHAIN_POSTROUTING, "-s", &src, "!", "-o", names::BRIDGE, "-j", "MASQUERADE"])
        .await?;
    iptables(&[
        "-t",
        "nat",
        "-A",
        names::CHAIN_POSTROUTING,
        "-s",
        "127.0.0.0/8",
        "-o",
        names::BRIDGE,
        "-j",
        "MASQUERADE",
    ])
    .await?;
    if iptables(&["-t", "nat", "-N", names::CHAIN_PORTS]).await.is_err() {
        // Existing port rules belong to instances that are re-attached right after.
        iptables(&["-t", "nat", "-F", names::CHAIN_PORTS]).await?;
    }
    for (table, chain, rule) in JUMPS {
        ensure_rule(table, chain, rule, true).await?;
    }
    Ok(())
}

/// Makes the TUN carry the service range (the device itself is opened by the data path).
pub async fn setup_tun() -> Result<(), String> {
    let mtu = names::MTU.to_string();
    ip(&["link", "set", "dev", names::TUN, "mtu", &mtu, "up"]).await?;
    ip(&["route", "replace", names::SERVICE_RANGE, "dev", names::TUN]).await?;
    let _ = write_sysctl(&format!("/proc/sys/net/ipv4/conf/{}/rp_filter", names::TUN), "0");
    Ok(())
}

/// Removes everything [`setup_host`] made (the TUN and its route go with the device).
pub async fn teardown_host() {
    for (table, chain, rule) in JUMPS {
        delete_rule(table, chain, rule).await;
    }
    remove_chain("filter", names::CHAIN_FORWARD).await;
    for hook in ["INPUT", "FORWARD"] {
        let _ = run("ebtables", &["-D", hook, "-j", names::CHAIN_GUARD]).await;
    }
    let _ = run("ebtables", &["-X", names::CHAIN_GUARD]).await;
    remove_chain("nat", names::CHAIN_POSTROUTING).await;
    remove_chain("nat", names::CHAIN_PORTS).await;
    let _ = ip(&["link", "del", "dev", names::BRIDGE]).await;
    let _ = ip(&["route", "del", names::SERVICE_RANGE, "dev", names::TUN]).await;
}

/// What an instance's attachment consists of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wiring {
    pub netns: String,
    pub veth: String,
    pub nsip: Ipv4Addr,
    pub ports: Vec<Mapping>,
}

impl Wiring {
    pub fn netns_path(&self) -> String {
        format!("{}/{}", names::NETNS_DIR, self.netns)
    }
}

fn port_rule(nsip: Ipv4Addr, m: &Mapping) -> Vec<String> {
    [
        "-p",
        m.proto(),
        "--dport",
        &m.host.to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{nsip}:{}", m.container),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Namespace, veth into it with the instance's address and default route via the bridge, and
/// the port mappings. Whatever existed under the same names before is replaced; a failure
/// removes what was made.
pub async fn attach(w: &Wiring, subnet: Subnet) -> Result<(), String> {
    if Path::new(&w.netns_path()).exists() || link_exists(&w.veth) {
        detach(w).await;
    }
    let start = Instant::now();
    let result = async {
        let (wiring, gateway) = (w.clone(), subnet.bridge_ip());
        netns::on_own_thread("wiring an instance", move || wire(&wiring, gateway)).await??;
        tracing::debug!(netns = %w.netns, micros = start.elapsed().as_micros() as u64, "instance namespace wired");
        add_rules(w).await
    }
    .await;
    if result.is_err() {
        detach(w).await;
    }
    result
}

/// The bridge rules that let only the instance's own address in from its veth: IPv4 whose
/// source is its address and ARP whose sender is; IPv6 not at all (the overlay has none).
/// Otherwise an instance with a raw socket (containers keep `CAP_NET_RAW`), or a VM, which owns
/// its NIC, could send as another instance of this worker, of another tenant: the proxy would
/// carry it under that instance's service IP, and a forged ARP answer would draw that
/// instance's traffic. The host end of the veth is out of the instance's reach.
fn guard_rules(w: &Wiring) -> [String; 3] {
    let (chain, veth, ip) = (names::CHAIN_GUARD, &w.veth, w.nsip);
    [
        format!("{chain} -i {veth} -p IPv4 --ip-src ! {ip} -j DROP"),
        format!("{chain} -i {veth} -p ARP --arp-ip-src ! {ip} -j DROP"),
        format!("{chain} -i {veth} -p IPv6 -j DROP"),
    ]
}

/// Adds (`-A`) or deletes (`-D`) the instance's [`guard_rules`], in one `ebtables-restore`.
async fn guard(w: &Wiring, op: &str) -> Result<(), String> {
    let rules: String = guard_rules(w).iter().map(|r| format!("{op} {r}\n")).collect();
    run_with_input("ebtables-restore", &["--noflush"], &format!("*filter\n{rules}COMMIT\n"))
        .await
        .map_err(|e| format!("cannot limit {} to the source {}: {e}", w.veth, w.nsip))
}

/// Adds the rules every wired instance has besides its wiring: its source guard and its port
/// mappings (at attach, and again after a restart emptied the chains).
pub async fn add_rules(w: &Wiring) -> Result<(), String> {
    guard(w, "-A").await?;
    add_ports(w).await
}

/// Makes the namespace, the veth pair into it and, inside, loopback, address and default route.
/// Only on a thread of its own: it enters the new namespace.
fn wire(w: &Wiring, gateway: Ipv4Addr) -> Result<(), String> {
    let (veth, ns, eth) = (&w.veth, &w.netns, names::INSTANCE_IF);
    // Opened before the thread leaves the worker's namespace, so it stays there.
    let mut host = Rtnl::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let bridge = link_index(names::BRIDGE).ok_or_else(|| format!("bridge {} does not exist", names::BRIDGE))?;
    netns::create_and_enter(ns)?;
    let inside_ns = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open network namespace {ns}: {}", describe(&e)))?;
    let pair = Veth {
        name: veth,
        peer: eth,
        mtu: names::MTU,
        gso_max_size: names::INSTANCE_GSO_MAX,
        master: bridge,
        peer_netns: inside_ns.as_fd(),
    };
    host.add_veth(&pair).map_err(|e| format!("cannot add veth {veth} with peer {eth} in namespace {ns}: {e}"))?;
    // The address may have been an earlier instance's: the worker's ARP entry for it would
    // still name that instance's MAC, and packets would go nowhere until it aged out.
    host.delete_neighbour(bridge, w.nsip)
        .map_err(|e| format!("cannot forget the neighbour entry of {} on {}: {e}", w.nsip, names::BRIDGE))?;
    let mut inside = Rtnl::open().map_err(|e| format!("cannot open a netlink socket in namespace {ns}: {e}"))?;
    inside.set_up("lo").map_err(|e| format!("cannot set lo up in namespace {ns}: {e}"))?;
    let addr = format!("{}/{}", w.nsip, Subnet::PREFIX);
    let index = inside.link_index(eth).map_err(|e| format!("cannot find {eth} in namespace {ns}: {e}"))?;
    inside
        .add_address(index, w.nsip, Subnet::PREFIX)
        .map_err(|e| format!("cannot add address {addr} in namespace {ns}: {e}"))?;
    inside.set_up(eth).map_err(|e| format!("cannot set {eth} up in namespace {ns}: {e}"))?;
    inside
        .add_default_route(gateway)
        .map_err(|e| format!("cannot add default route via {gateway} in namespace {ns}: {e}"))
}

/// Adds the instance's port mappings (again, after the chain was emptied at start-up).
pub async fn add_ports(w: &Wiring) -> Result<(), String> {
    for m in &w.ports {
        let rule = port_rule(w.nsip, m);
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ensure_rule("nat", names::CHAIN_PORTS, &rule, false).await?;
    }
    Ok(())
}

/// Removes the port mappings, the veth (its peer goes with it) and the namespace.
pub async fn detach(w: &Wiring) {
    // Absent rules (a wiring cut short) are fine.
    let _ = guard(w, "-D").await;
    for m in &w.ports {
        let rule = port_rule(w.nsip, m);
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        delete_rule("nat", names::CHAIN_PORTS, &rule).await;
    }
    if link_exists(&w.veth) {
        remove_link(&w.veth).await;
    }
    forget_neighbour(w.nsip).await;
    if Path::new(&w.netns_path()).exists() {
        remove_netns(&w.netns).await;
    }
}

/// Deletes the worker's ARP entry for an instance address that is no longer wired, logging a
/// failure (the next wiring of the address deletes it again).
async fn forget_neighbour(nsip: Ipv4Addr) {
    let forgot = netns::on_own_thread("forgetting a neighbour", move || {
        let Some(bridge) = link_index(names::BRIDGE) else { return Ok(false) };
        Rtnl::open().and_then(|mut rtnl| rtnl.delete_neighbour(bridge, nsip)).map_err(|e| e.to_string())
    })
    .await;
    if let Err(e) = forgot.and_then(|r| r) {
        tracing::warn!(%nsip, error = %e, "cannot forget an instance's neighbour entry");
    }
}

/// Whether any process still runs in the wiring's namespace (its instance is alive).
pub async fn in_use(w: &Wiring) -> bool {
    let name = w.netns.clone();
    match tokio::task::spawn_blocking(move || netns::pids(&name)).await {
        Ok(Ok(pids)) => !pids.is_empty(),
        // Cannot tell: keep it.
        _ => Path::new(&w.netns_path()).exists(),
    }
}

/// Whether the instance's wiring is still in place (after a worker restart).
pub async fn intact(w: &Wiring) -> bool {
    Path::new(&w.netns_path()).exists() && link_exists(&w.veth)
}

/// This node's instance namespaces and our veths that exist now.
pub async fn leftovers(netns_prefix: &str) -> (Vec<String>, Vec<String>) {
    let mut namespaces = Vec::new();
    if let Ok(mut dir) = tokio::fs::read_dir(names::NETNS_DIR).await {
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(netns_prefix) {
                namespaces.push(name);
            }
        }
    }
    let listed = netns::on_own_thread("listing veths", || {
        Rtnl::open().and_then(|mut rtnl| rtnl.link_names_of_kind(&InfoKind::Veth)).map_err(|e| e.to_string())
    })
    .await;
    let veths = match listed.and_then(|r| r) {
        Ok(all) => all.into_iter().filter(|n| n.starts_with(names::VETH_PREFIX)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list veths to find leftovers");
            Vec::new()
        }
    };
    (namespaces, veths)
}

/// Removes a namespace (unmounts and deletes its file), logging a failure.
pub async fn remove_netns(name: &str) {
    let owned = name.to_string();
    if let Err(e) = netns::on_own_thread("removing a namespace", move || netns::remove(&owned)).await.and_then(|r| r) {
        tracing::warn!(netns = %name, error = %e, "cannot remove an instance's network namespace");
    }
}

/// Deletes a link of the worker's namespace if it exists, logging a failure.
pub async fn remove_link(name: &str) {
    let owned = name.to_string();
    let deleted = netns::on_own_thread("deleting a link", move || {
        Rtnl::open().and_then(|mut rtnl| rtnl.delete_link(&owned)).map_err(|e| e.to_string())
    })
    .await;
    if let Err(e) = deleted.and_then(|r| r) {
        tracing::warn!(link = %name, error = %e, "cannot delete an instance's veth");
    }
}

#[cfg(test)]
mod tests {
    use super::link_exists;

    #[test]
    fn link_exists_asks_the_kernel_of_this_namespace() {
        // Every network namespace has a loopback; nothing is called like the second name.
        assert!(link_exists("lo"));
        assert!(!link_exists("oakv-not-there"));
        assert!(!link_exists("bad\0name"));
    }

    /// In a fresh namespace only its own loopback exists, whatever `/sys/class/net` (mounted for
    /// the namespace the test started in) lists.
    #[test]
    fn link_exists_follows_the_callers_namespace() {
        if !crate::net::test_netns::root_or_skip("the namespace test of link_exists") {
            return;
        }
        let outside: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        assert!(!outside.is_empty(), "the test needs a link besides lo");
        let inside = crate::net::test_netns::in_own_netns(move || {
            (link_exists("lo"), outside.iter().filter(|n| link_exists(n)).cloned().collect::<Vec<_>>())
        });
        assert_eq!(inside, (true, Vec::new()));
    }
}
