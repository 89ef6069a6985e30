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
    // SAFETY: `req` is a valid ifreq for this ioctl, which fills ifr_hwaddr.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
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
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros().max(1) as libc::suseconds_t,
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
    let index = ifindex(ifname)?;
    let mac = hardware_address(ifname)?;
    // SOCK_DGRAM: the kernel writes the Ethernet header from the sockaddr.
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
    let mut request = Vec::with_capacity(28);
    request.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    request.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    request.extend_from_slice(&[6, 4]);
    request.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    request.extend_from_slice(&mac);
    request.extend_from_slice(&sender.octets());
    request.extend_from_slice(&[0; 6]);
    request.extend_from_slice(&target.octets());
    let mut buf = [0u8; 1500];
    for _ in 0..tries.max(1) {
        // SAFETY: `request` and `addr` are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) as libc::c_int
        })?;
        let deadline = Instant::now() + interval;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            set_timeout(&fd, left)?;
            let Some(n) = recv(&fd, &mut buf)? else { break };
            let p = &buf[..n];
            if n >= 28
                && u16::from_be_bytes([p[6], p[7]]) == ARPOP_REPLY
                && p[14..18] == target.octets()
                && p[8..14] != mac
            {
                let mut who = [0u8; 6];
                who.copy_from_slice(&p[8..14]);
                return Ok(Some(who));
            }
        }
    }
    Ok(None)
}

/// Solicits `target` on `ifname` (to its solicited-node group) `tries` times; the MAC of the
/// first advertisement for it.
pub fn ndp_probe(ifname: &str, target: Ipv6Addr, tries: u32, interval: Duration) -> io::Result<Option<Mac>> {
    let index = ifindex(ifname)?;
    let mac = hardware_address(ifname)?;
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let hops: libc::c_int = 255; // RFC 4861: neighbour discovery is only valid with hop limit 255
    for opt in [libc::IPV6_MULTICAST_HOPS, libc::IPV6_UNICAST_HOPS] {
        // SAFETY: an int option.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                opt,
                (&hops as *const libc::c_int).cast(),
                4,
            )
        })?;
    }
    let if_index = index as libc::c_int;
    // SAFETY: an int option naming the outgoing interface for multicast.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            (&if_index as *const libc::c_int).cast(),
            4,
        )
    })?;
    // Our own stack holds the address too (it is the pod's): it must not hear, and answer, the
    // solicitation itself.
    let no_loop: libc::c_int = 0;
    // SAFETY: an int option.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_LOOP,
            (&no_loop as *const libc::c_int).cast(),
            4,
        )
    })?;
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
    // SAFETY: an all-zero sockaddr_in6 is valid; the fields are set below.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as u16;
    dst.sin6_addr.s6_addr = group.octets();
    dst.sin6_scope_id = index;
    // type, code, checksum (the kernel fills it in for ICMPv6 raw sockets), reserved, target,
    // and the source link-layer address option.
    let mut ns = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&t);
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&mac);
    let mut buf = [0u8; 1500];
    for _ in 0..tries.max(1) {
        // SAFETY: `ns` and `dst` are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ns.as_ptr().cast(),
                ns.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
            ) as libc::c_int
        })?;
        let deadline = Instant::now() + interval;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            set_timeout(&fd, left)?;
            let Some(n) = recv(&fd, &mut buf)? else { break };
            let p = &buf[..n];
            if n >= 24 && p[0] == ND_NEIGHBOR_ADVERT && p[8..24] == t {
                // Target link-layer address option (type 2), when present.
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
                if who == mac {
                    continue; // our own answer, whatever path it took
                }
                return Ok(Some(who));
            }
        }
    }
    Ok(None)
}

/// Gratuitous ARP: a request for `ip` from `ip`, broadcast, so neighbours update (or, with
/// arp_accept, create) their entry for it.
pub fn arp_announce(ifname: &str, ip: Ipv4Addr) -> io::Result<()> {
    let index = ifindex(ifname)?;
    let mac = hardware_address(ifname)?;
    let fd = socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(ETH_P_ARP.to_be()))?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut frame = Vec::with_capacity(28);
    frame.extend_from_slice(&1u16.to_be_bytes());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    // SAFETY: `frame` and `addr` are valid for the lengths given.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) as libc::c_int
    })?;
    Ok(())
}

/// Unsolicited neighbour advertisement for `ip` to all nodes, with the override flag, so
/// neighbours replace what they had for it.
pub fn na_announce(ifname: &str, ip: Ipv6Addr) -> io::Result<()> {
    let index = ifindex(ifname)?;
    let mac = hardware_address(ifname)?;
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let hops: libc::c_int = 255;
    // SAFETY: int options.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            (&hops as *const libc::c_int).cast(),
            4,
        )
    })?;
    let if_index = index as libc::c_int;
    // SAFETY: an int option naming the outgoing interface.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            (&if_index as *const libc::c_int).cast(),
            4,
        )
    })?;
    // SAFETY: an all-zero sockaddr_in6 is valid; the fields are set below.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as u16;
    dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = index;
    // type, code, checksum (kernel), flags: override (0x20), target, target link-layer address.
    let mut na = vec![ND_NEIGHBOR_ADVERT, 0, 0, 0, 0x20, 0, 0, 0];
    na.extend_from_slice(&ip.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&mac);
    // SAFETY: `na` and `dst` are valid for the lengths given.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            na.as_ptr().cast(),
            na.len(),
            0,
            (&dst as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        ) as libc::c_int
    })?;
    Ok(())
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
