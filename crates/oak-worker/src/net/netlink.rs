//! A small synchronous rtnetlink client for an instance's wiring. Each request waits for the
//! kernel's acknowledgement on a socket of the namespace the calling thread was in when it
//! opened it (a socket stays there wherever its thread goes next). Synchronous because the
//! wiring runs on a thread of its own that enters the new namespace; an event loop there would
//! only add latency. Messages are built and parsed by `netlink-packet-route`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Why a request failed: the kernel's errno (if it came to that) in words, with the kernel's
/// own explanation where it gave one (what `ip` prints after "Error:").
#[derive(Debug)]
pub struct Error {
    errno: Option<i32>,
    text: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error { errno: e.raw_os_error(), text: describe(&e) }
    }
}

/// An OS error in words, without std's "(os error N)" suffix (the words are what `ip` shows).
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).map(str::to_string).unwrap_or(text),
        None => text,
    }
}

/// The ends of a veth pair to create: `name` here, `peer` in the namespace of `peer_netns`.
pub struct Veth<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub mtu: u32,
    pub gso_max_size: u32,
    /// Index of the bridge `name` is attached to.
    pub master: u32,
    pub peer_netns: BorrowedFd<'a>,
}

/// A route netlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Room for the largest datagram the kernel sends for a dump.
const RECV_BUFFER: usize = 64 * 1024;
/// `NLMSGERR_ATTR_MSG`: the extended acknowledgement's text.
const EXT_ACK_MESSAGE: u16 = 1;
const HEADER_LEN: usize = 16;

impl Rtnl {
    /// A socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel's explanation of a refusal, and no copy of the request in it. Both are
        // optional: without them errors carry only the errno.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Rtnl { socket, seq: 0, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    /// Creates the pair, `name` up on its bridge; atomically (a failure leaves neither end).
    pub fn add_veth(&mut self, v: &Veth<'_>) -> Result<(), Error> {
        // The peer cannot be set up here: the kernel opens it before the pair is linked
        // (ENOTCONN). It is set up from inside its namespace.
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(v.peer.to_string()),
            LinkAttribute::Mtu(v.mtu),
            LinkAttribute::GsoMaxSize(v.gso_max_size),
            LinkAttribute::NetNsFd(v.peer_netns.as_raw_fd()),
        ];
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes = vec![
            LinkAttribute::IfName(v.name.to_string()),
            LinkAttribute::Mtu(v.mtu),
            LinkAttribute::GsoMaxSize(v.gso_max_size),
            LinkAttribute::Controller(v.master),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        self.call(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Sets the link called `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), Error> {
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes = vec![LinkAttribute::IfName(name.to_string())];
        self.call(RouteNetlinkMessage::SetLink(link), 0).map(drop)
    }

    /// The index of the link called `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, Error> {
        let mut link = LinkMessage::default();
        link.attributes = vec![LinkAttribute::IfName(name.to_string())];
        let answers = self.call(RouteNetlinkMessage::GetLink(link), 0)?;
        answers
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| Error { errno: None, text: "the kernel answered without the link".into() })
    }

    /// Adds `addr/prefix` to the link of index `index` (refused if it is there already).
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), Error> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes = vec![AddressAttribute::Local(IpAddr::V4(addr)), AddressAttribute::Address(IpAddr::V4(addr))];
        self.call(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Adds the default route via `gateway` to the main table (refused if there is one).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.call(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Deletes the link called `name`; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, Error> {
        let mut link = LinkMessage::default();
        link.attributes = vec![LinkAttribute::IfName(name.to_string())];
        match self.call(RouteNetlinkMessage::DelLink(link), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the neighbour entry (ARP) for `addr` on the link of index `index`; `false` if
    /// there was none.
    pub fn delete_neighbour(&mut self, index: u32, addr: Ipv4Addr) -> Result<bool, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(addr))];
        match self.call(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of all links of one kind (e.g. veth).
    pub fn link_names_of_kind(&mut self, kind: &InfoKind) -> Result<Vec<String>, Error> {
        let answers = self.call(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        let mut names = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewLink(link) = answer else { continue };
            let mut name = None;
            let mut matches = false;
            for attr in link.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = Some(n),
                    LinkAttribute::LinkInfo(infos) => {
                        matches = infos.iter().any(|i| matches!(i, LinkInfo::Kind(k) if k == kind))
                    }
                    _ => {}
                }
            }
            if let (Some(name), true) = (name, matches) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Sends one request and collects the answers up to its acknowledgement (or a dump's end).
    fn call(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::from(msg);
        packet.header.flags = NLM_F_REQUEST | flags | if flags & NLM_F_DUMP == NLM_F_DUMP { 0 } else { NLM_F_ACK };
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            let mut rest = &self.buf[..];
            while rest.len() >= HEADER_LEN {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| Error { errno: None, text: format!("cannot read the kernel's answer: {e}") })?;
                let len = (reply.header.length as usize).max(HEADER_LEN);
                rest = rest.get(align(len)..).unwrap_or_default();
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            let detail = ext_ack_message(reply.header.flags, &e.header);
                            return Err(refusal(code.get(), detail));
                        }
                    },
                    NetlinkPayload::Done(d) if d.code != 0 => return Err(refusal(d.code, None)),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn refusal(code: i32, detail: Option<String>) -> Error {
    let errno = code.abs();
    let mut text = describe(&io::Error::from_raw_os_error(errno));
    if let Some(detail) = detail {
        text = format!("{text} ({detail})");
    }
    Error { errno: Some(errno), text }
}

/// The text of an extended acknowledgement: attributes after the refused request's header (or
/// the whole request, when the kernel did not cap it).
fn ext_ack_message(flags: u16, request: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        HEADER_LEN
    } else {
        u32::from_ne_bytes(request.get(..4)?.try_into().ok()?) as usize
    };
    let attrs = request.get(align(request_len)..)?;
    NlasIterator::new(attrs).flatten().find(|nla| nla.kind() == EXT_ACK_MESSAGE).map(|nla| {
        let text = nla.value().split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).trim_end_matches('.').to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_ip_prints_them() {
        assert_eq!(describe(&io::Error::from_raw_os_error(libc::EEXIST)), "File exists");
        let refused = refusal(-libc::ENETUNREACH, Some("Nexthop has invalid gateway".into()));
        assert_eq!(refused.to_string(), "Network is unreachable (Nexthop has invalid gateway)");
        assert_eq!(refused.errno, Some(libc::ENETUNREACH));
    }

    /// Whatever links this machine has (bridges, TUNs, veths of other software), their dump
    /// parses: a failure here would hide leftover veths. Needs no privilege.
    #[test]
    fn the_links_of_this_namespace_are_read() {
        let mut rtnl = Rtnl::open().expect("a route netlink socket");
        rtnl.link_names_of_kind(&InfoKind::Veth).expect("the link dump parses");
        assert_eq!(rtnl.link_index("lo").expect("lo is found by name"), 1);
        let missing = rtnl.link_index("oakv-not-there").unwrap_err();
        assert_eq!((missing.errno, missing.to_string().as_str()), (Some(libc::ENODEV), "No such device"));
    }

    /// An acknowledgement's attributes follow the capped request header: a message attribute
    /// (type 1) with its NUL, then another one that is not read.
    #[test]
    fn the_kernels_explanation_is_read_from_the_extended_ack() {
        let mut request = vec![0u8; HEADER_LEN];
        let text = b"Nexthop has invalid gateway\0";
        request.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        request.extend_from_slice(&EXT_ACK_MESSAGE.to_ne_bytes());
        request.extend_from_slice(text);
        request.resize(align(request.len()), 0);
        request.extend_from_slice(&8u16.to_ne_bytes());
        request.extend_from_slice(&2u16.to_ne_bytes());
        request.extend_from_slice(&4u32.to_ne_bytes());
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        assert_eq!(ext_ack_message(flags, &request).as_deref(), Some("Nexthop has invalid gateway"));
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &request), None, "no attributes announced");
        assert_eq!(ext_ack_message(flags, &request[..HEADER_LEN]), None);
    }
}
