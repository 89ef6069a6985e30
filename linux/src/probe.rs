//! Who answers for an address on a link: ARP requests (IPv4) and neighbour solicitations (IPv6)
//! sent from the calling thread's network namespace. An IP conflict check asks for the address a
//! pod was given (the pod's own stack never answers its own request); a gateway check asks for
//! the gateway. Both need CAP_NET_RAW.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub type Mac = [u8; 6];

const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The link's hardware address, from SIOCGIFHWADDR in the current namespace.
pub fn hardware_address(ifname: &str) -> io::Result<Mac> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: an all-zero ifreq is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for this ioctl, which fills ifr_hwaddr. The request's type
    // is c_ulong in glibc and c_int in musl (the plugins ship built with musl): the cast fits both.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) })?;
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    // The fields' own types (`as _`): musl's libc marks their aliases deprecated.
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros().max(1) as _,
    };
    // SAFETY: a timeval option of the right size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Receives into `buf`; `Ok(None)` on timeout.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
            io::ErrorKind::Interrupted => Ok(Some(0)),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// An ARP socket on one link: SOCK_DGRAM, so the kernel writes the Ethernet header.
struct ArpLink {
    fd: OwnedFd,
    broadcast: libc::sockaddr_ll,
    mac: Mac,
}

impl ArpLink {
    fn open(ifname: &str) -> io::Result<ArpLink> {
        let index = ifindex(ifname)?;
        let mac = hardware_address(ifname)?;
        let fd = socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(ETH_P_ARP.to_be()))?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: binding the packet socket to the link, so only its frames arrive.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        Ok(ArpLink {
            fd,
            broadcast: addr,
            mac,
        })
    }

    /// Broadcasts an ARP request for `target` claiming to come from `sender`.
    fn request(&self, sender: Ipv4Addr, target: Ipv4Addr) -> io::Result<()> {
        let mut frame = Vec::with_capacity(28);
        frame.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
        frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        frame.extend_from_slice(&[6, 4]);
        frame.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
        frame.extend_from_slice(&self.mac);
        frame.extend_from_slice(&sender.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&target.octets());
        // SAFETY: `frame` and the address are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.broadcast as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) as libc::c_int
        })?;
        Ok(())
    }
}

/// An ICMPv6 raw socket sending on one link with hop limit 255 (RFC 4861 drops anything else).
struct NdLink {
    fd: OwnedFd,
    index: u32,
    mac: Mac,
}

impl NdLink {
    fn open(ifname: &str) -> io::Result<NdLink> {
        let index = ifindex(ifname)?;
        let mac = hardware_address(ifname)?;
        let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
        let set = |opt: libc::c_int, value: libc::c_int| {
            // SAFETY: an int option.
            check(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    4,
                )
            })
        };
        set(libc::IPV6_MULTICAST_HOPS, 255)?;
        set(libc::IPV6_UNICAST_HOPS, 255)?;
        set(libc::IPV6_MULTICAST_IF, index as libc::c_int)?;
        // Our own stack may hold the address asked about (it is the pod's): it must not hear, and
        // answer, our own solicitation.
        set(libc::IPV6_MULTICAST_LOOP, 0)?;
        Ok(NdLink { fd, index, mac })
    }

    /// Sends an ICMPv6 message (the kernel fills in the checksum) to a link-scope group.
    fn send(&self, message: &[u8], group: Ipv6Addr) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_in6 is valid; the fields are set below.
        let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        dst.sin6_family = libc::AF_INET6 as u16;
        dst.sin6_addr.s6_addr = group.octets();
        dst.sin6_scope_id = self.index;
        // SAFETY: `message` and `dst` are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
            ) as libc::c_int
        })?;
        Ok(())
    }

    /// type, code, checksum, 4 bytes of flags, the target, and a link-layer address option.
    fn message(&self, kind: u8, flags: u8, target: Ipv6Addr, option: u8) -> Vec<u8> {
        let mut m = vec![kind, 0, 0, 0, flags, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&[option, 1]);
        m.extend_from_slice(&self.mac);
        m
    }
}

/// Waits up to `interval` for a packet `matches` accepts.
fn await_answer(
    fd: &OwnedFd,
    interval: Duration,
    mut matches: impl FnMut(&[u8]) -> Option<Mac>,
) -> io::Result<Option<Mac>> {
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + interval;
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        set_timeout(fd, left)?;
        let Some(n) = recv(fd, &mut buf)? else { break };
        if let Some(mac) = matches(&buf[..n]) {
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

/// Asks `tries` times, `interval` apart, who has `target` on `ifname`; the first answer's MAC.
/// `sender` is the address the request claims to come from: 0.0.0.0 for a probe that must not
/// disturb anyone's ARP cache (RFC 5227), our address for a gateway check.
pub fn arp_probe(
    ifname: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    tries: u32,
    interval: Duration,
) -> io::Result<Option<Mac>> {
    let link = ArpLink::open(ifname)?;
    for _ in 0..tries.max(1) {
        link.request(sender, target)?;
        let answer = await_answer(&link.fd, interval, |p| {
            let reply = p.len() >= 28
                && u16::from_be_bytes([p[6], p[7]]) == ARPOP_REPLY
                && p[14..18] == target.octets();
            let mut who = [0u8; 6];
            who.copy_from_slice(p.get(8..14)?);
            (reply && who != link.mac).then_some(who)
        })?;
        if answer.is_some() {
            return Ok(answer);
        }
    }
    Ok(None)
}

/// Solicits `target` on `ifname` (to its solicited-node group) `tries` times; the MAC of the
/// first advertisement for it that is not our own.
pub fn ndp_probe(ifname: &str, target: Ipv6Addr, tries: u32, interval: Duration) -> io::Result<Option<Mac>> {
    let link = NdLink::open(ifname)?;
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    // Source link-layer address option (1).
    let solicitation = link.message(ND_NEIGHBOR_SOLICIT, 0, target, 1);
    for _ in 0..tries.max(1) {
        link.send(&solicitation, group)?;
        let answer = await_answer(&link.fd, interval, |p| {
            if p.len() < 24 || p[0] != ND_NEIGHBOR_ADVERT || p[8..24] != t {
                return None;
            }
            // Target link-layer address option (2), when present.
            let mut who = [0u8; 6];
            let mut opts = &p[24..];
            while opts.len() >= 8 {
                let len = usize::from(opts[1]) * 8;
                if len == 0 || len > opts.len() {
                    break;
                }
                if opts[0] == 2 {
                    who.copy_from_slice(&opts[2..8]);
                }
                opts = &opts[len..];
            }
            (who != link.mac).then_some(who) // our own answer, whatever path it took, is no conflict
        })?;
        if answer.is_some() {
            return Ok(answer);
        }
    }
    Ok(None)
}

/// Gratuitous ARP: a request for `ip` from `ip`, broadcast, so neighbours update (or, with
/// arp_accept, create) their entry for it.
pub fn arp_announce(ifname: &str, ip: Ipv4Addr) -> io::Result<()> {
    ArpLink::open(ifname)?.request(ip, ip)
}

/// Unsolicited neighbour advertisement for `ip` to all nodes, with the override flag (0x20), so
/// neighbours replace what they had for it.
pub fn na_announce(ifname: &str, ip: Ipv6Addr) -> io::Result<()> {
    let link = NdLink::open(ifname)?;
    link.send(
        &link.message(ND_NEIGHBOR_ADVERT, 0x20, ip, 2),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
    )
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
