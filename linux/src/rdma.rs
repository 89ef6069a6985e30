//! RDMA netlink (`NETLINK_RDMA`, the nldev client) over [`NetlinkSocket`]: the subsystem's
//! network-namespace mode, which `rdma system show|set netns` reads and writes (sysfs only has
//! the boot-time module parameter); the devices and ports this namespace sees, with their
//! netdevs; and moving a device to another namespace (`rdma dev set DEV netns NS`).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};

use crate::netlink::{NetlinkError, NetlinkSocket};
use crate::netns::NetNs;

const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_GET: u16 = 1;
const RDMA_NLDEV_CMD_SET: u16 = 2;
const RDMA_NLDEV_CMD_PORT_GET: u16 = 5;
const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;
const RDMA_NLDEV_CMD_SYS_SET: u16 = 7;
const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1;
const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2;
const RDMA_NLDEV_ATTR_PORT_INDEX: u16 = 3;
const RDMA_NLDEV_ATTR_PORT_STATE: u16 = 12;
const RDMA_NLDEV_ATTR_NDEV_INDEX: u16 = 50;
const RDMA_NLDEV_ATTR_NDEV_NAME: u16 = 51;
const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66;
const RDMA_NLDEV_NET_NS_FD: u16 = 68;
const RDMA_NLDEV_CMD_STAT_GET: u16 = 17;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTERS: u16 = 80;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY: u16 = 81;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME: u16 = 82;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE: u16 = 83;
/// `NLA_TYPE_MASK`: the attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One nldev message: a command and its attributes (type, value), unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NldevMessage {
    command: u16,
    attributes: Vec<(u16, Vec<u8>)>,
}

impl NldevMessage {
    fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

impl NetlinkSerializable for NldevMessage {
    fn message_type(&self) -> u16 {
        (RDMA_NL_NLDEV << 10) + self.command
    }

    fn buffer_len(&self) -> usize {
        self.attributes
            .iter()
            .map(|(_, v)| (4 + v.len()).next_multiple_of(4))
            .sum()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let mut offset = 0;
        for (kind, value) in &self.attributes {
            let len = 4 + value.len();
            buffer[offset..offset + 2].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
            buffer[offset + 2..offset + 4].copy_from_slice(&kind.to_ne_bytes());
            buffer[offset + 4..offset + len].copy_from_slice(value);
            let padded = len.next_multiple_of(4);
            buffer[offset + len..offset + padded].fill(0);
            offset += padded;
        }
    }
}

impl NetlinkDeserializable for NldevMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<NldevMessage, DecodeError> {
        Ok(NldevMessage {
            command: header.message_type & 0x3ff,
            attributes: attributes(payload)?,
        })
    }
}

/// The attributes (type, value) of a message payload or a nested attribute's value.
fn attributes(payload: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DecodeError> {
    let mut attributes = Vec::new();
    let mut rest = payload;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        if len < 4 || len > rest.len() {
            return Err(DecodeError::nla_invalid_length(rest.len(), len));
        }
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        attributes.push((kind, rest[4..len].to_vec()));
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(attributes)
}

/// `(name, value)` of each entry of an `RDMA_NLDEV_ATTR_STAT_HWCOUNTERS` value.
fn hw_counter_entries(nested: &[u8]) -> Result<Vec<(String, u64)>, DecodeError> {
    let mut out = Vec::new();
    for (kind, entry) in attributes(nested)? {
        if kind != RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY {
            continue;
        }
        let fields = attributes(&entry)?;
        let field = |k: u16| fields.iter().find(|(t, _)| *t == k).map(|(_, v)| v.as_slice());
        let name = string_of(field(RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME));
        let value = field(RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE)
            .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)));
        if let (Some(name), Some(value)) = (name, value) {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn u32_of(value: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_ne_bytes(value?.get(..4)?.try_into().ok()?))
}

/// A NUL-terminated netlink string.
fn string_of(value: Option<&[u8]>) -> Option<String> {
    let bytes = value?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// One port of an RDMA device. `netdev` is its Ethernet device (RoCE, Soft-RoCE) when that
/// netdev is in the same network namespace as the asker: the kernel reports no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaPort {
    pub index: u32,
    /// `IB_PORT_*`: 4 is ACTIVE.
    pub state: Option<u8>,
    pub netdev: Option<(u32, String)>,
}

/// An RDMA device this network namespace sees: all of them in shared mode, only its own in
/// exclusive mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaDevice {
    pub index: u32,
    pub name: String,
    pub ports: Vec<RdmaPort>,
}

/// `rdma dev` and `rdma link` in the calling thread's network namespace.
pub fn devices() -> Result<Vec<RdmaDevice>, NetlinkError> {
    let mut socket = socket()?;
    let answers = socket.dump(
        "rdma dev show",
        NldevMessage {
            command: RDMA_NLDEV_CMD_GET,
            attributes: Vec::new(),
        },
    )?;
    let mut devices = Vec::new();
    for answer in answers {
        let (Some(index), Some(name)) = (
            u32_of(answer.attribute(RDMA_NLDEV_ATTR_DEV_INDEX)),
            string_of(answer.attribute(RDMA_NLDEV_ATTR_DEV_NAME)),
        ) else {
            continue;
        };
        let ports = socket
            .dump(
                &format!("rdma link show {name}"),
                NldevMessage {
                    command: RDMA_NLDEV_CMD_PORT_GET,
                    attributes: vec![(RDMA_NLDEV_ATTR_DEV_INDEX, index.to_ne_bytes().to_vec())],
                },
            )?
            .iter()
            .filter_map(|p| {
                Some(RdmaPort {
                    index: u32_of(p.attribute(RDMA_NLDEV_ATTR_PORT_INDEX))?,
                    state: p
                        .attribute(RDMA_NLDEV_ATTR_PORT_STATE)
                        .and_then(|v| v.first().copied()),
                    netdev: u32_of(p.attribute(RDMA_NLDEV_ATTR_NDEV_INDEX))
                        .zip(string_of(p.attribute(RDMA_NLDEV_ATTR_NDEV_NAME))),
                })
            })
            .collect();
        devices.push(RdmaDevice { index, name, ports });
    }
    Ok(devices)
}

/// An RDMA device a named network namespace holds: moved there (exclusive mode: the caller's
/// namespace does not see it), or, in shared mode, made on a netdev that namespace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The namespace's file name under the directory scanned (`cni-…`, an `ip netns` name).
    pub netns: String,
    /// As that namespace sees it (ports' netdevs included).
    pub device: RdmaDevice,
    pub moved: bool,
}

/// The RDMA devices the named namespaces under `netns_dir` (`/var/run/netns`) hold, as opposed to
/// the caller's. A namespace that cannot be entered is skipped: it may be going away.
pub fn holdings(netns_dir: &Path) -> Vec<Holding> {
    let own: Vec<String> = devices()
        .map(|d| d.into_iter().map(|d| d.name).collect())
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(netns_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(ns) = NetNs::open(&entry.path()) else {
            continue;
        };
        let Ok(Ok(seen)) = ns.run(devices) else {
            continue;
        };
        let netns = entry.file_name().to_string_lossy().into_owned();
        for device in seen {
            let moved = !own.contains(&device.name);
            if moved || device.ports.iter().any(|p| p.netdev.is_some()) {
                out.push(Holding {
                    netns: netns.clone(),
                    device,
                    moved,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.device.name, &a.netns).cmp(&(&b.device.name, &b.netns)));
    out
}

/// `IB_PORT_*` as sysfs and `rdma link` name it.
pub fn port_state_name(state: u8) -> &'static str {
    match state {
        1 => "DOWN",
        2 => "INIT",
        3 => "ARMED",
        4 => "ACTIVE",
        5 => "ACTIVE_DEFER",
        _ => "NOP",
    }
}

/// `rdma dev set NAME netns NS`: moves device `index` into the namespace `netns` refers to. Only
/// in exclusive mode; drivers that cannot drop their user contexts (Soft-RoCE on released
/// kernels) refuse with `EOPNOTSUPP`.
pub fn move_device(index: u32, name: &str, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
    let fd = u32::try_from(netns.as_raw_fd()).map_err(|_| NetlinkError::Invalid {
        what: format!("rdma dev set {name} netns"),
        reason: "no namespace file descriptor".into(),
    })?;
    socket()?.request(
        &format!("rdma dev set {name} netns"),
        NldevMessage {
            command: RDMA_NLDEV_CMD_SET,
            attributes: vec![
                (RDMA_NLDEV_ATTR_DEV_INDEX, index.to_ne_bytes().to_vec()),
                (RDMA_NLDEV_NET_NS_FD, fd.to_ne_bytes().to_vec()),
            ],
        },
        0,
    )
}

/// The driver's hardware counters of port `port` of device `index` (`rdma statistic show link
/// DEV/PORT`), read where the calling thread's namespace sees the device: the only way to read
/// them for a device moved into a pod, whose sysfs the host's mount does not show.
pub fn hw_counters(index: u32, name: &str, port: u32) -> Result<Vec<(String, u64)>, NetlinkError> {
    let what = format!("rdma statistic show link {name}/{port}");
    let answer = socket()?.get(
        &what,
        NldevMessage {
            command: RDMA_NLDEV_CMD_STAT_GET,
            attributes: vec![
                (RDMA_NLDEV_ATTR_DEV_INDEX, index.to_ne_bytes().to_vec()),
                (RDMA_NLDEV_ATTR_PORT_INDEX, port.to_ne_bytes().to_vec()),
            ],
        },
    )?;
    match answer.attribute(RDMA_NLDEV_ATTR_STAT_HWCOUNTERS) {
        None => Ok(Vec::new()),
        Some(nested) => hw_counter_entries(nested).map_err(|e| NetlinkError::Decode {
            what,
            reason: e.to_string(),
        }),
    }
}

fn socket() -> Result<NetlinkSocket, NetlinkError> {
    NetlinkSocket::open(libc::NETLINK_RDMA as isize)
}

/// `Ok(true)` shared, `Ok(false)` exclusive.
pub fn netns_mode_shared() -> Result<bool, NetlinkError> {
    const WHAT: &str = "rdma system show netns";
    let answer = socket()?.get(
        WHAT,
        NldevMessage {
            command: RDMA_NLDEV_CMD_SYS_GET,
            attributes: Vec::new(),
        },
    )?;
    match answer.attribute(RDMA_NLDEV_SYS_ATTR_NETNS_MODE) {
        Some([mode, ..]) => Ok(*mode != 0),
        _ => Err(NetlinkError::Decode {
            what: WHAT.into(),
            reason: "no netns mode in the answer (no RDMA core loaded?)".into(),
        }),
    }
}

/// `rdma system set netns shared|exclusive`. The kernel refuses (`EBUSY`) to go exclusive while
/// other network namespaces exist.
pub fn set_netns_mode_shared(shared: bool) -> Result<(), NetlinkError> {
    socket()?.request(
        if shared {
            "rdma system set netns shared"
        } else {
            "rdma system set netns exclusive"
        },
        NldevMessage {
            command: RDMA_NLDEV_CMD_SYS_SET,
            attributes: vec![(RDMA_NLDEV_SYS_ATTR_NETNS_MODE, vec![u8::from(shared)])],
        },
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout_round_trips() {
        let msg = NldevMessage {
            command: RDMA_NLDEV_CMD_SYS_SET,
            attributes: vec![(RDMA_NLDEV_SYS_ATTR_NETNS_MODE, vec![1])],
        };
        assert_eq!(msg.message_type(), (5 << 10) + 7);
        assert_eq!(msg.buffer_len(), 8, "one u8 attribute padded to 4");
        let mut buffer = vec![0xffu8; msg.buffer_len()];
        msg.serialize(&mut buffer);
        let mut want = Vec::new();
        want.extend(5u16.to_ne_bytes());
        want.extend(66u16.to_ne_bytes());
        want.extend([1, 0, 0, 0]);
        assert_eq!(buffer, want);
        let mut header = NetlinkHeader::default();
        header.message_type = msg.message_type();
        assert_eq!(NldevMessage::deserialize(&header, &buffer).unwrap(), msg);
        assert!(NldevMessage::deserialize(&header, &[9, 0, 66, 0, 1]).is_err());
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn hardware_counters_decode_from_nested_entries() {
        let entry = |name: &str, value: u64| {
            let mut fields = attribute(
                RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME,
                format!("{name}\0").as_bytes(),
            );
            fields.extend(attribute(
                RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE,
                &value.to_ne_bytes(),
            ));
            attribute(RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY | 0x8000, &fields)
        };
        let mut nested = entry("sent_pkts", 1000);
        nested.extend(entry("rcvd_pkts", 998));
        nested.extend(attribute(
            RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY,
            &attribute(RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME, b"no value\0"),
        ));
        assert_eq!(
            hw_counter_entries(&nested).unwrap(),
            [("sent_pkts".to_string(), 1000), ("rcvd_pkts".to_string(), 998)]
        );
        assert!(
            hw_counter_entries(&[200, 0, 1, 0]).is_err(),
            "a length past the end"
        );
    }

    #[test]
    fn attribute_values_decode_and_tolerate_short_ones() {
        assert_eq!(u32_of(Some(&7u32.to_ne_bytes())), Some(7));
        assert_eq!(u32_of(Some(&[1, 2])), None);
        assert_eq!(u32_of(None), None);
        assert_eq!(string_of(Some(b"rxe0\0\0")), Some("rxe0".into()));
        assert_eq!(string_of(Some(b"mlx5_0")), Some("mlx5_0".into()));
    }
}
