//! The overlay tunnel's security on the lab (issue 13): what crosses the wire between workers is
//! sealed, and a datagram from anyone but a known worker never reaches an instance.
//!
//! A UDP listener in the namespace of a sleeper instance on e1, a raw packet capture in e1's
//! host namespace (where every tunnel datagram to and from e1 passes), and:
//! 1. a marker sent from the client instance on w1 to the listener's instance IP arrives, while
//!    no captured tunnel payload holds it in clear;
//! 2. a crafted plaintext IPv4/UDP packet for the listener, sent straight to e1's tunnel port
//!    from the lab, never arrives, and e1 counts it (the cluster's `/metrics`); the capture saw
//!    that forged packet, which proves the capture works;
//! 3. a well-formed handshake from a key no worker holds is refused after the peer directory
//!    (cluster, then root) said so, and counted as `unknown_peer`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::overlay::{ip_of, task_pid};
use super::*;

/// Port of the listener in the sink instance's namespace.
const SINK_PORT: u16 = 17_777;
const TUNNEL_PORT: u16 = oak_worker::DEFAULT_TUNNEL_PORT;

/// Runs `f` on a thread that entered the network namespace at `netns` (a path under `/proc` or
/// `/run/netns`); sockets it opens stay in that namespace.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = netns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let netns = path;
        // SAFETY: setns with a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {netns}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

/// Collects what arrives on a socket (opened by `open` in a namespace) until stopped.
struct Collector {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// `keep` turns a received buffer into what to keep (or `None`).
    fn start(
        netns: &str,
        open: impl FnOnce() -> Result<OwnedFd> + Send + 'static,
        keep: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> Result<Collector> {
        let (stop, got) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, g) = (stop.clone(), got.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let thread = std::thread::spawn(move || {
            let fd = (|| -> Result<OwnedFd> {
                let file = std::fs::File::open(&netns).with_context(|| format!("opening {netns}"))?;
                // SAFETY: as in `in_netns`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {netns}: {}", std::io::Error::last_os_error());
                }
                let fd = open()?;
                let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
                // SAFETY: setsockopt reads one timeval from a valid pointer.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&timeout as *const libc::timeval).cast(),
                        size_of::<libc::timeval>() as libc::socklen_t,
                    );
                }
                Ok(fd)
            })();
            let fd = match fd {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::SeqCst) {
                // SAFETY: reads into a buffer of the given length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    if let Some(kept) = keep(&buf[..n as usize]) {
                        g.lock().unwrap().push(kept);
                    }
                }
            }
        });
        ready_rx.recv().context("the collector thread ended")??;
        Ok(Collector { stop, got, thread: Some(thread) })
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket bound to `0.0.0.0:port`.
fn udp_listener(port: u16) -> Result<OwnedFd> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP {port}"))?;
    Ok(OwnedFd::from(socket))
}

/// A packet socket seeing every IPv4 packet of the namespace, both ways, without link headers.
fn packet_capture() -> Result<OwnedFd> {
    let proto = (libc::ETH_P_IP as u16).to_be() as libc::c_int;
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The UDP payload of an IPv4 packet to or from the tunnel port.
fn tunnel_payload(pkt: &[u8]) -> Option<Vec<u8>> {
    if pkt.len() < 28 || pkt[0] >> 4 != 4 || pkt[9] != 17 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let udp = pkt.get(ihl..)?;
    let (sport, dport) = (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
    (sport == TUNNEL_PORT || dport == TUNNEL_PORT).then(|| udp.get(8..).unwrap_or_default().to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An IPv4/UDP packet with valid header checksum (UDP checksum 0: none).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p[..20].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// What the overlay looked like when a wait failed: the tunnel datagrams the capture saw and the
/// workers' overlay counters from their clusters' `/metrics`.
fn overlay_state(t: &Topology, capture: &Collector, workers: &[&str]) -> String {
    let payloads = capture.snapshot();
    let sealed = payloads.iter().filter(|p| p.first() == Some(&4)).count();
    let mut out = format!("capture on e1: {} tunnel payloads ({sealed} sealed data)", payloads.len());
    for w in workers {
        let id = &t.worker(w).id;
        match cluster_metrics(t, w) {
            Ok(text) => {
                let node = format!("node=\"{id}\"");
                let lines = text.lines().filter(|l| l.starts_with("oakestra_overlay_") && l.contains(&node));
                out.push_str(&format!("\n{w} ({id}):\n  {}", lines.collect::<Vec<_>>().join("\n  ")));
            }
            Err(e) => out.push_str(&format!("\n{w}: no metrics: {e:#}")),
        }
    }
    out
}

/// e1's refused tunnel datagrams per reason, from its cluster's `/metrics`.
fn refused(t: &Topology, worker: &str) -> Result<BTreeMap<String, u64>> {
    let text = cluster_metrics(t, worker)?;
    let prefix = format!("oakestra_overlay_refused_total{{node=\"{}\",reason=\"", t.worker(worker).id);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

fn wait_refused(t: &Topology, worker: &str, reason: &str, at_least: u64) -> Result<u64> {
    wait_until(&format!("{worker} to count {at_least} `{reason}` refusals"), Duration::from_secs(30), POLL, || {
        let n = refused(t, worker)?.get(reason).copied().unwrap_or(0);
        Ok((n >= at_least).then_some(n))
    })
}

pub(super) fn scenario_tunnel_security(t: &mut Topology) -> Result<()> {
    let sleeper = t.images.sleeper.clone();
    let (sink, sink_job) = t.create_service_with(
        "udpsink",
        &sleeper,
        json!([{"type": "direct", "node": "e1", "cluster": "east"}]),
        json!({}),
    )?;
    t.scale_up(&sink)?;
    let inst = t.wait_instance(&sink, 0, "the UDP sink RUNNING on e1", Duration::from_secs(60), |i| {
        Ok(status_of(i) == "RUNNING" && i["namespace_ip"].as_str().is_some_and(|s| !s.is_empty()))
    })?;
    let instance_ip: Ipv4Addr = ip_of(&inst, "instance_ip")?.parse()?;
    let ns_ip: Ipv4Addr = inst["namespace_ip"].as_str().unwrap_or("").parse()?;
    let sink_ns = format!("/proc/{}/ns/net", task_pid(t, "e1", &sink_job, 0)?);
    let client_ns = format!("/proc/{}/ns/net", task_pid(t, "w1", &t.overlay.client_job, 0)?);
    let e1 = t.worker("e1").proc.host.clone();
    let listener = Collector::start(&sink_ns, || udp_listener(SINK_PORT), |b| Some(b.to_vec()))?;
    let capture = Collector::start(&format!("/run/netns/{}", e1.netns()), packet_capture, tunnel_payload)?;

    // 1. The marker crosses the tunnel sealed.
    let marker = format!("OAK-SECRET-MARKER-{}", std::process::id());
    let m = marker.clone().into_bytes();
    wait_until("the marker to reach the sink through the overlay", Duration::from_secs(30), POLL, || {
        let (m, to) = (m.clone(), SocketAddrV4::new(instance_ip, SINK_PORT));
        in_netns(&client_ns, move || Ok(UdpSocket::bind("0.0.0.0:0")?.send_to(&m, to)?))?;
        Ok(listener.snapshot().iter().any(|d| d == marker.as_bytes()).then_some(()))
    })
    .with_context(|| overlay_state(t, &capture, &["w1", "e1"]))?;

    // 2. A forged plaintext packet straight to e1's tunnel port.
    let before = refused(t, "e1")?;
    let forged_marker = format!("OAK-FORGED-{}", std::process::id());
    let forged = ipv4_udp(Ipv4Addr::new(10, 30, 0, 250), ns_ip, 4444, SINK_PORT, forged_marker.as_bytes());
    let lab = UdpSocket::bind("0.0.0.0:0")?;
    const FORGED: u64 = 5;
    for _ in 0..FORGED {
        lab.send_to(&forged, SocketAddrV4::new(e1.ip(), TUNNEL_PORT))?;
    }
    let malformed = before.get("malformed").copied().unwrap_or(0);
    wait_refused(t, "e1", "malformed", malformed + FORGED)?;

    // 3. A valid handshake from a key no worker holds.
    let e1_key = std::fs::read_to_string(t.worker("e1").data.join("tunnel.key")).context("e1's tunnel key")?;
    let e1_public = oak_net::StaticKey::parse(&e1_key)?.public();
    let mut stranger_bytes = [0u8; 32];
    for (i, b) in stranger_bytes.iter_mut().enumerate() {
        *b = (std::process::id() as u8).wrapping_mul(31).wrapping_add(i as u8 * 7 + 1);
    }
    let range = oak_net::Ipv4Net { addr: Ipv4Addr::new(10, 30, 0, 0), prefix: 16 };
    let mut stranger = oak_net::SecureTunnel::new(oak_net::StaticKey::from_bytes(stranger_bytes), range);
    let e1_tunnel = SocketAddrV4::new(e1.ip(), TUNNEL_PORT);
    stranger.set_peer(e1_public, e1_tunnel, None);
    let probe = ipv4_udp(Ipv4Addr::new(10, 30, 0, 251), ns_ip, 4444, SINK_PORT, forged_marker.as_bytes());
    ensure!(stranger.seal(e1_tunnel, &probe, &mut [0u8; 2048]) == oak_net::Sealed::Queued);
    let unknown = before.get("unknown_peer").copied().unwrap_or(0);
    for (to, init) in stranger.take_outbox() {
        lab.send_to(&init, to)?;
    }
    wait_refused(t, "e1", "unknown_peer", unknown + 1)?;

    sleep(Duration::from_millis(500));
    let payloads = capture.snapshot();
    drop(capture);
    let received = listener.snapshot();
    drop(listener);
    ensure!(
        payloads.iter().any(|p| contains(p, forged_marker.as_bytes())),
        "the capture on e1 saw no forged datagram ({} tunnel payloads): it does not capture",
        payloads.len()
    );
    let sealed = payloads.iter().filter(|p| p.first() == Some(&4)).count();
    ensure!(sealed > 0, "no sealed data message captured on e1's tunnel port ({} payloads)", payloads.len());
    ensure!(!payloads.iter().any(|p| contains(p, marker.as_bytes())), "the marker crossed the tunnel in clear");
    ensure!(
        !received.iter().any(|d| contains(d, forged_marker.as_bytes())),
        "a forged packet reached the instance: {received:?}"
    );
    eprintln!(
        "e2e-lab: {} tunnel payloads captured on e1 ({sealed} sealed data), marker only inside; forged refused: {:?}",
        payloads.len(),
        refused(t, "e1")?
    );
    Ok(())
}
