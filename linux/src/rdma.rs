//! RDMA netlink (NETLINK_RDMA, the nldev client): the subsystem's network-namespace mode, which
//! `rdma system show|set netns` reads and writes. sysfs only has the boot-time module parameter.

use netlink_sys::{Socket, SocketAddr};

const NETLINK_RDMA: isize = 20;
const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;
const RDMA_NLDEV_CMD_SYS_SET: u16 = 7;
const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error("rdma netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("rdma netlink: {}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("rdma netlink: no netns mode in the answer (no RDMA core loaded?)")]
    Missing,
}

fn msg_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

fn request(op: u16, flags: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in attrs {
        let len = 4 + value.len();
        body.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&u32::try_from(16 + body.len()).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&msg_type(op).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&body);
    msg
}

/// Walks the messages of one datagram: (type, payload after the 16-byte header).
fn messages(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        out.push((u16::from_ne_bytes([rest[4], rest[5]]), &rest[16..len]));
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

fn error_code(payload: &[u8]) -> Option<i32> {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn exchange(msg: &[u8]) -> Result<Vec<u8>, RdmaError> {
    let mut socket = Socket::new(NETLINK_RDMA)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(msg, 0)?;
    let (data, _) = socket.recv_from_full()?;
    Ok(data)
}

/// `Some(true)` shared, `Some(false)` exclusive.
pub fn netns_mode_shared() -> Result<bool, RdmaError> {
    let data = exchange(&request(RDMA_NLDEV_CMD_SYS_GET, 0, &[]))?;
    for (kind, payload) in messages(&data) {
        if kind == NLMSG_ERROR {
            match error_code(payload) {
                Some(0) | None => continue,
                Some(e) => return Err(RdmaError::Kernel(-e)),
            }
        }
        let mut attrs = payload;
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
            if len < 4 || len > attrs.len() {
                break;
            }
            if kind == RDMA_NLDEV_SYS_ATTR_NETNS_MODE && len >= 5 {
                return Ok(attrs[4] != 0);
            }
            attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
        }
    }
    Err(RdmaError::Missing)
}

/// `rdma system set netns shared|exclusive`. The kernel refuses (EBUSY) to go exclusive while
/// other network namespaces exist.
pub fn set_netns_mode_shared(shared: bool) -> Result<(), RdmaError> {
    let value = [u8::from(shared)];
    let data = exchange(&request(
        RDMA_NLDEV_CMD_SYS_SET,
        NLM_F_ACK,
        &[(RDMA_NLDEV_SYS_ATTR_NETNS_MODE, &value)],
    ))?;
    for (kind, payload) in messages(&data) {
        if kind == NLMSG_ERROR {
            return match error_code(payload) {
                Some(0) => Ok(()),
                Some(e) => Err(RdmaError::Kernel(-e)),
                None => Err(RdmaError::Missing),
            };
        }
    }
    Err(RdmaError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let msg = request(
            RDMA_NLDEV_CMD_SYS_SET,
            NLM_F_ACK,
            &[(RDMA_NLDEV_SYS_ATTR_NETNS_MODE, &[1])],
        );
        assert_eq!(msg.len(), 16 + 8, "one u8 attribute padded to 4");
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), (5 << 10) + 7);
        assert_eq!(u16::from_ne_bytes([msg[16], msg[17]]), 5);
        assert_eq!(u16::from_ne_bytes([msg[18], msg[19]]), 66);
        assert_eq!(msg[20], 1);
        let parsed = messages(&msg);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].1.len(), 8);
        assert!(messages(&msg[..10]).is_empty());
    }
}
