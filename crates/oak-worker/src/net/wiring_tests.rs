//! An instance's wiring as the system's tools see it (namespaces under `/run/netns`, veths on the
//! bridge), made and removed for real inside a network namespace of the test's own. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::names::{self, Subnet};
use super::plumbing::{self, Wiring};
use super::test_netns;

const SUBNET: &str = "10.18.0.0/26";

fn wiring(node_id: &str, nsip: Ipv4Addr) -> Wiring {
    Wiring { netns: names::netns(node_id, nsip), veth: names::veth(node_id, nsip), nsip, ports: Vec::new() }
}

/// Removes the test node's namespaces also when an assertion failed (they live in the machine's
/// `/run/netns`, not in the test's network namespace).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(names::NETNS_DIR) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.0) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// Runs `scenario` with the host side set up (bridge, chains) in a network namespace of its own,
/// for a node id of the test's own.
fn with_host<F, Fut>(test: &str, scenario: F) -> bool
where
    F: FnOnce(String, Subnet) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if !test_netns::root_or_skip(test) || !oak_testenv::can_run(test, &[oak_testenv::Need::Tool("nsenter")]) {
        return false;
    }
    let node_id = format!("{test}-{}", std::process::id());
    test_netns::in_own_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let _cleanup = Cleanup(names::netns_prefix(&node_id));
            let subnet = Subnet::parse(SUBNET).unwrap();
            plumbing::setup_host(subnet).await.expect("the bridge is set up");
            scenario(node_id, subnet).await;
            plumbing::teardown_host().await;
        });
    });
    true
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(percentile(&times, 50)),
        ms(percentile(&times, 90)),
        ms(*times.last().unwrap())
    )
}

/// What one instance's wiring and unwiring cost, printed (`--nocapture`) and never asserted on.
#[test]
fn wiring_time() {
    with_host("wiring_time", |node_id, subnet| async move {
        let (mut attach, mut detach) = (Vec::new(), Vec::new());
        for offset in 0..20 {
            let w = wiring(&node_id, subnet.host(2 + offset % 4));
            let start = Instant::now();
            plumbing::attach(&w, subnet).await.expect("the instance is wired");
            attach.push(start.elapsed());
            let start = Instant::now();
            plumbing::detach(&w).await;
            detach.push(start.elapsed());
        }
        eprintln!(
            "wiring time over {} instances: attach {}; detach {}",
            attach.len(),
            summary(attach),
            summary(detach)
        );
    });
}

/// A tool's output, failing the test if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines of this mount namespace's mount table that name `path`.
fn mounts_of(path: &str) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().filter(|l| l.split(' ').nth(4) == Some(path)).map(str::to_string).collect()
}

/// Nothing of `w` is left: no namespace file or mount, no veth, nothing `ip` lists.
fn assert_gone(w: &Wiring) {
    let path = w.netns_path();
    assert!(!std::path::Path::new(&path).exists(), "{path} is left behind");
    assert_eq!(mounts_of(&path), Vec::<String>::new(), "mounts left behind");
    assert!(!plumbing::link_exists(&w.veth), "veth {} is left behind", w.veth);
    assert!(!run("ip", &["netns", "list"]).contains(&w.netns), "ip netns list still shows {}", w.netns);
}

/// The namespace made in-process is one `ip netns` lists, a process joins by its path (as
/// containerd does) and finds wired: address, default route via the bridge, offload size.
#[test]
fn a_wired_namespace_is_an_ordinary_named_one() {
    with_host("a_wired_namespace_is_an_ordinary_named_one", |node_id, subnet| async move {
        let w = wiring(&node_id, subnet.host(5));
        plumbing::attach(&w, subnet).await.expect("the instance is wired");
        let path = w.netns_path();
        // The wiring thread entered the namespace; the caller stayed where it was.
        assert!(plumbing::link_exists(&w.veth) && !plumbing::link_exists(names::INSTANCE_IF));
        assert!(run("ip", &["netns", "list"]).lines().any(|l| l.split(' ').next() == Some(w.netns.as_str())));
        let dir = mounts_of(names::NETNS_DIR);
        assert!(dir.iter().any(|l| l.contains(" shared:")), "{} is no shared mount: {dir:?}", names::NETNS_DIR);

        let net = format!("--net={path}");
        let addr = run("nsenter", &[&net, "ip", "-o", "-4", "addr", "show", "dev", names::INSTANCE_IF]);
        assert!(addr.contains(&format!("inet {}/{} ", w.nsip, Subnet::PREFIX)), "{addr}");
        let routes = run("nsenter", &[&net, "ip", "route"]);
        assert!(routes.contains(&format!("default via {} dev {}", subnet.bridge_ip(), names::INSTANCE_IF)), "{routes}");
        let lo = run("ip", &["netns", "exec", &w.netns, "ip", "-o", "link", "show", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let inside = run("ip", &["-n", &w.netns, "-d", "link", "show", names::INSTANCE_IF]);
        let outside = run("ip", &["-d", "link", "show", &w.veth]);
        for link in [&inside, &outside] {
            assert!(link.contains(&format!("mtu {} ", names::MTU)), "{link}");
            assert!(link.contains(&format!("gso_max_size {} ", names::INSTANCE_GSO_MAX)), "{link}");
            assert!(link.contains("state UP"), "{link}");
        }
        assert!(outside.contains(&format!("master {} ", names::BRIDGE)), "{outside}");

        // A process in the namespace is seen as `ip netns pids` sees it.
        assert!(!plumbing::in_use(&w).await);
        let mut sleeper = Command::new("nsenter").args([&net, "sleep", "30"]).spawn().unwrap();
        let pid = sleeper.id().to_string();
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            run("ip", &["netns", "pids", &w.netns]).lines().any(|l| l == pid)
        });
        assert!(seen, "ip netns pids never listed {pid}");
        assert!(plumbing::in_use(&w).await);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(!plumbing::in_use(&w).await);

        plumbing::detach(&w).await;
        assert_gone(&w);
    });
}

/// Detach removes all of it, and finds nothing to do a second time.
#[test]
fn detach_leaves_nothing() {
    with_host("detach_leaves_nothing", |node_id, subnet| async move {
        let prefix = names::netns_prefix(&node_id);
        let w = wiring(&node_id, subnet.host(6));
        plumbing::attach(&w, subnet).await.expect("the instance is wired");
        assert!(plumbing::intact(&w).await);
        assert_eq!(plumbing::leftovers(&prefix).await, (vec![w.netns.clone()], vec![w.veth.clone()]));
        plumbing::detach(&w).await;
        assert_gone(&w);
        assert!(!plumbing::intact(&w).await);
        assert_eq!(plumbing::leftovers(&prefix).await, (Vec::new(), Vec::new()));
        plumbing::detach(&w).await;
        assert_gone(&w);
    });
}

/// A wiring that fails part-way says which step failed and leaves nothing behind.
#[test]
fn a_failed_wiring_names_its_step_and_leaves_nothing() {
    with_host("a_failed_wiring_names_its_step_and_leaves_nothing", |node_id, subnet| async move {
        // An address outside the bridge's subnet: its default route has no way to the bridge.
        let w = wiring(&node_id, Ipv4Addr::new(10, 18, 1, 2));
        let e = plumbing::attach(&w, subnet).await.unwrap_err();
        let step = format!("cannot add default route via {} in namespace {}: ", subnet.bridge_ip(), w.netns);
        assert!(e.starts_with(&step), "{e}");
        assert_gone(&w);

        plumbing::teardown_host().await;
        let w = wiring(&node_id, subnet.host(7));
        let e = plumbing::attach(&w, subnet).await.unwrap_err();
        assert_eq!(e, format!("bridge {} does not exist", names::BRIDGE));
        assert_gone(&w);
    });
}

/// An IPv4/UDP packet from `src` to `dst` (checksums left to the kernel and UDP's optional one).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&4444u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Sends `packet` as it is (a raw socket, as a process with `CAP_NET_RAW` in the instance can)
/// from inside the namespace at `netns`.
fn send_raw_from(netns: String, dst: Ipv4Addr, packet: Vec<u8>) {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns/socket/sendto/close with valid descriptors and buffers; the thread ends
        // in the namespace it entered.
        unsafe {
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns {netns}");
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from(dst).to_be() },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(sent, packet.len() as isize, "sendto: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    })
    .join()
    .unwrap();
}

/// An instance cannot send as another one of the worker: a packet with the other's source
/// address does not leave its veth, one with its own does.
#[test]
fn an_instance_sends_only_from_its_own_address() {
    with_host("an_instance_sends_only_from_its_own_address", |node_id, subnet| async move {
        let (a, b) = (wiring(&node_id, subnet.host(2)), wiring(&node_id, subnet.host(3)));
        plumbing::attach(&a, subnet).await.expect("a is wired");
        plumbing::attach(&b, subnet).await.expect("b is wired");
        let host = std::net::UdpSocket::bind((subnet.bridge_ip(), 0)).unwrap();
        host.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let port = host.local_addr().unwrap().port();
        let mut buf = [0u8; 64];

        send_raw_from(a.netns_path(), subnet.bridge_ip(), udp_packet(a.nsip, subnet.bridge_ip(), port, b"own"));
        let (n, from) = host.recv_from(&mut buf).expect("a's packet with its own source arrives");
        assert_eq!((&buf[..n], from.ip()), (&b"own"[..], std::net::IpAddr::V4(a.nsip)));

        send_raw_from(a.netns_path(), subnet.bridge_ip(), udp_packet(b.nsip, subnet.bridge_ip(), port, b"forged"));
        send_raw_from(a.netns_path(), subnet.bridge_ip(), udp_packet(a.nsip, subnet.bridge_ip(), port, b"after"));
        let (n, from) = host.recv_from(&mut buf).expect("a's next own packet arrives");
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"after"[..], std::net::IpAddr::V4(a.nsip)),
            "the packet forged with b's address must not arrive"
        );
        plumbing::detach(&a).await;
        plumbing::detach(&b).await;
    });
}

/// A UDP socket bound to `port` inside the namespace at `netns` (it stays there).
fn udp_listener_in(netns: String, port: u16) -> std::net::UdpSocket {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns with a valid namespace fd; only this thread moves.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {netns}");
        std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap()
}

/// Sends datagrams from the worker's side to `to` every 50 ms until `listener` gets one, for at
/// most `within`; whether one arrived.
fn reaches(listener: &std::net::UdpSocket, to: std::net::SocketAddrV4, within: Duration) -> bool {
    let sender = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
    listener.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        sender.send_to(b"hello", to).unwrap();
        if listener.recv(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// A namespace address wired again (an undeployed instance's address, given to the next one)
/// is reached at once: the worker's neighbour entry for it, which still named the old veth's
/// MAC, goes with the old wiring. Before, packets went to the gone MAC until the entry aged out
/// (15 to 45 s after it was last confirmed).
#[test]
fn a_reused_namespace_address_reaches_the_new_instance_at_once() {
    with_host("a_reused_namespace_address_reaches_the_new_instance_at_once", |node_id, subnet| async move {
        // Another instance keeps the bridge up: a bridge that loses its last port loses its
        // carrier, and the kernel then forgets all its neighbours anyway.
        let bystander = wiring(&node_id, subnet.host(3));
        plumbing::attach(&bystander, subnet).await.expect("the bystander is wired");
        let w = wiring(&node_id, subnet.host(2));
        let to = std::net::SocketAddrV4::new(w.nsip, 7777);
        plumbing::attach(&w, subnet).await.expect("the first instance is wired");
        let first = udp_listener_in(w.netns_path(), 7777);
        assert!(reaches(&first, to, Duration::from_secs(5)), "the first instance is reached");
        drop(first);
        plumbing::detach(&w).await;
        let ip = w.nsip.to_string();
        assert_eq!(run("ip", &["neigh", "show", "to", &ip]).trim(), "", "the unwired address has no neighbour entry");

        plumbing::attach(&w, subnet).await.expect("the second instance is wired");
        let second = udp_listener_in(w.netns_path(), 7777);
        assert!(reaches(&second, to, Duration::from_secs(2)), "the second instance at the same address is reached");
        plumbing::detach(&w).await;
        plumbing::detach(&bystander).await;
    });
}
