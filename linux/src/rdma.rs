//! RDMA netlink (`NETLINK_RDMA`, the nldev client) over [`NetlinkSocket`]: the subsystem's
//! network-namespace mode, which `rdma system show|set netns` reads and writes. sysfs only has
//! the boot-time module parameter.

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};

use crate::netlink::{NetlinkError, NetlinkSocket};

const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;
const RDMA_NLDEV_CMD_SYS_SET: u16 = 7;
const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66;
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
        Ok(NldevMessage {
            command: header.message_type & 0x3ff,
            attributes,
        })
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
}
