//! The TUN device the kernel routes the semantic range into (spec §4.1 step 2): raw IPv4
//! packets, no packet-information header. Addresses, routes and MTU are configured by the caller
//! (with `ip`); this only opens the device and moves packets.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Linux `IFNAMSIZ`, including the terminating NUL.
const IFNAMSIZ: usize = 16;

/// The part of `struct ifreq` that `TUNSETIFF` uses; padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The descriptor: registered with Tokio's reactor for the async methods, or not at all for a
/// caller that runs blocking loops on threads (a registered descriptor would wake the reactor
/// for every packet although nobody awaits it).
#[derive(Debug)]
enum Fd {
    Async(AsyncFd<OwnedFd>),
    Blocking(OwnedFd),
}

impl Fd {
    fn raw(&self) -> libc::c_int {
        match self {
            Fd::Async(fd) => fd.get_ref().as_raw_fd(),
            Fd::Blocking(fd) => fd.as_raw_fd(),
        }
    }

    fn registered(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        match self {
            Fd::Async(fd) => Ok(fd),
            Fd::Blocking(_) => Err(io::Error::other("this TUN was opened for blocking use (Tun::open_offload)")),
        }
    }
}

/// An open TUN device. Reads and writes take `&self`, so one reader task and several writer
/// tasks can share it through an `Arc<Tun>`.
#[derive(Debug)]
pub struct Tun {
    fd: Fd,
    name: String,
    vnet: bool,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` in non-blocking mode. Must be called inside
    /// a Tokio runtime with I/O enabled; needs `CAP_NET_ADMIN`. The device disappears when the
    /// `Tun` is dropped unless it was made persistent elsewhere.
    pub fn open(name: &str) -> io::Result<Tun> {
        Self::open_with(name, false, true)
    }

    /// Like [`Tun::open`], but with offloads (`IFF_VNET_HDR`, checksum and TCPv4 segmentation):
    /// every packet read or written is preceded by a [`crate::gso::VnetHdr`], and the kernel may
    /// hand over TCP packets up to 64 KiB (to be segmented) and partial checksums. Falls back to
    /// a plain device if the kernel refuses; [`Tun::vnet_hdr`] tells which one it is. The device
    /// is for blocking loops on threads: use [`Tun::try_recv`], [`Tun::wait_readable`] and
    /// [`Tun::try_send`] (the async methods return an error). No runtime needed.
    pub fn open_offload(name: &str) -> io::Result<Tun> {
        match Self::open_with(name, true, false) {
            Ok(t) => Ok(t),
            Err(_) => Self::open_with(name, false, false),
        }
    }

    /// Whether packets carry a virtio-net header (see [`Tun::open_offload`]).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet
    }

    fn open_with(name: &str, vnet: bool, register: bool) -> io::Result<Tun> {
        validate_name(name)?;
        if register && tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("Tun::open needs a Tokio runtime"));
        }
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a valid NUL-terminated string; the result is checked.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags { name: [0; IFNAMSIZ], flags: 0, _pad: [0; 22] };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        if vnet {
            req.flags |= libc::IFF_VNET_HDR as libc::c_short;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if vnet {
            let size: libc::c_int = crate::gso::VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int; TUNSETOFFLOAD takes the flags by value.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size as *const libc::c_int) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let offloads = (libc::TUN_F_CSUM | libc::TUN_F_TSO4) as libc::c_ulong;
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // The kernel may complete a name pattern such as `tun%d`; report the real one.
        // SAFETY: the kernel NUL-terminates the name within IFNAMSIZ; the last byte stays 0.
        req.name[IFNAMSIZ - 1] = 0;
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open and unchanged
        // for its whole lifetime.
        let fd = if register { Fd::Async(unsafe { AsyncFd::register(fd) }?) } else { Fd::Blocking(fd) };
        Ok(Tun { fd, name: actual, vnet })
    }

    /// Interface name of the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf` (make it at least MTU-sized; 65535 is always enough). A
    /// packet longer than `buf` is truncated by the kernel.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.registered()?.readable().await?;
            let result = guard.try_io(|_| self.try_recv(buf));
            match result {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Non-blocking read of one packet (`WouldBlock` when none is waiting), for a caller that
    /// runs its own loop on a thread (see [`Tun::wait_readable`]).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        byte_count(n)
    }

    /// Writes one packet without waiting (a TUN write does not block; a full queue drops).
    pub fn try_send(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: `pkt` is valid for reads of `pkt.len()` bytes.
        let n = unsafe { libc::write(self.fd.raw(), pkt.as_ptr().cast(), pkt.len()) };
        byte_count(n)
    }

    /// Like [`Tun::try_send`] with the packet given in parts (e.g. a virtio header, then the
    /// packet), at most 8, written as one packet with `writev`.
    pub fn try_send_vectored(&self, parts: &[&[u8]]) -> io::Result<usize> {
        const MAX: usize = 8;
        if parts.len() > MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many parts"));
        }
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX];
        for (v, p) in iov.iter_mut().zip(parts) {
            *v = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
        }
        // SAFETY: the first `parts.len()` iovecs point at live slices; writev only reads them.
        let n = unsafe { libc::writev(self.fd.raw(), iov.as_ptr(), parts.len() as libc::c_int) };
        byte_count(n)
    }

    /// Blocks the calling thread until a packet can be read or `timeout_ms` passed; returns
    /// whether it is readable.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.raw(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        Ok(rc > 0)
    }

    /// Writes one packet into the device (the kernel then routes it).
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.registered()?.writable().await?;
            let result = guard.try_io(|_| self.try_send(pkt));
            match result {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A read/write result: bytes moved, or the OS error.
fn byte_count(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Rejects names the kernel would refuse or silently truncate.
fn validate_name(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.len() >= IFNAMSIZ
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name `{name}` (1-15 chars, no '/', ':' or blanks)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{parse, Protocol};
    use crate::testutil::{build, L4};
    use std::net::Ipv4Addr;
    use std::process::Command;
    use std::time::Duration;
    use tokio::net::UdpSocket;

    #[test]
    fn names_are_validated() {
        for bad in ["", "a/b", "with space", "0123456789abcdef", "x:1", ".."] {
            assert_eq!(validate_name(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        validate_name("goProxyTun").unwrap();
        validate_name("0123456789abcde").unwrap();
    }

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(Tun::open("oakno").is_err());
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Opens a real TUN, routes a /30 into it and moves a UDP datagram each way.
    #[tokio::test]
    async fn real_tun_moves_packets_both_ways() {
        use oak_testenv::Need;
        let needs = [Need::Root, Need::Tool("ip"), Need::Path("/dev/net/tun")];
        if !oak_testenv::can_run("real_tun_moves_packets_both_ways", &needs) {
            return;
        }
        let pid = std::process::id();
        let name = format!("oaktst{}", pid % 100_000);
        let tun = Tun::open(&name).expect("open TUN");
        assert_eq!(tun.name(), name);
        // 198.18.0.0/15 is reserved for benchmarking: no clash with real networks.
        let third = (pid % 250) as u8;
        let fourth = 4 * ((pid / 250) % 60) as u8;
        let local = Ipv4Addr::new(198, 19, third, fourth + 1);
        let peer = Ipv4Addr::new(198, 19, third, fourth + 2);
        ip(&["addr", "add", &format!("{local}/30"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);

        // Kernel → TUN: a datagram to the peer is routed into the device.
        let sock = UdpSocket::bind((local, 0)).await.unwrap();
        let port = sock.local_addr().unwrap().port();
        sock.send_to(b"hello tun", (peer, 9999)).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let info = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let n = tun.recv(&mut buf).await.unwrap();
                // Ignore anything else the kernel may emit on a fresh link.
                if let Ok(info) = parse(&buf[..n]) {
                    if info.protocol == Protocol::Udp && info.dst == peer {
                        assert_eq!(&buf[info.header_len + 8..n], b"hello tun");
                        return info;
                    }
                }
            }
        })
        .await
        .expect("packet from the TUN within 5 s");
        assert_eq!((info.src, info.src_port, info.dst_port), (local, port, 9999));

        // TUN → kernel: a datagram written into the device reaches the socket.
        let pkt = build(peer, local, L4::Udp { sport: 7777, dport: port, checksum: true }, b"back");
        assert_eq!(tun.send(&pkt).await.unwrap(), pkt.len());
        let mut rbuf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut rbuf))
            .await
            .expect("datagram written into the TUN arrives within 5 s")
            .unwrap();
        assert_eq!(&rbuf[..n], b"back");
        assert_eq!(from, std::net::SocketAddr::from((peer, 7777)));
    }
}
