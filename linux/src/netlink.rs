//! One netlink socket for every family this crate speaks (route, RDMA): send a request, collect
//! the answers that carry its sequence number, and turn the kernel's error into a positive errno
//! (as `libc` names them) with the request that failed. The families build messages on top.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// Everything a netlink request can fail with. `what` names the request (`"add route 10.6.0.0/16
/// table 500"`), so an error read in a log says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {what}: {source}")]
    Io { what: String, source: io::Error },
    /// The kernel refused; `errno` is positive (`libc::EEXIST`, `libc::ENODEV`, ...).
    #[error("netlink: {what}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel { what: String, errno: i32 },
    #[error("netlink: {what}: cannot decode the answer: {reason}")]
    Decode { what: String, reason: String },
    /// The request cannot be built from what the caller gave (an unknown bond mode, ...).
    #[error("netlink: {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl NetlinkError {
    /// The kernel's errno (positive), when the kernel is what refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The same error about `what`: families name a request (with its addresses) only once it
    /// failed, so the requests that succeed, nearly all of them, format nothing.
    pub(crate) fn about(mut self, what: String) -> NetlinkError {
        match &mut self {
            NetlinkError::Io { what: w, .. }
            | NetlinkError::Kernel { what: w, .. }
            | NetlinkError::Decode { what: w, .. }
            | NetlinkError::Invalid { what: w, .. } => *w = what,
        }
        self
    }
}

/// What a create request does when the object is there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Refuse (`EEXIST`): `NLM_F_CREATE | NLM_F_EXCL`.
    Fail,
    /// Leave the existing one as it is and succeed: repeated CNI ADDs and concurrent creators
    /// are normal.
    Keep,
    /// Overwrite it: `NLM_F_CREATE | NLM_F_REPLACE`.
    Replace,
}

/// A netlink socket connected to the kernel in the network namespace of the thread that opened
/// it; it stays there when used from other threads.
pub struct NetlinkSocket {
    socket: Socket,
    sequence: u32,
}

impl NetlinkSocket {
    /// A request socket for `protocol` (`NETLINK_ROUTE`, `NETLINK_RDMA`, ...).
    pub fn open(protocol: isize) -> Result<NetlinkSocket, NetlinkError> {
        let io_error = |source| NetlinkError::Io {
            what: "open socket".into(),
            source,
        };
        let mut socket = Socket::new(protocol).map_err(io_error)?;
        socket.bind_auto().map_err(io_error)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io_error)?;
        Ok(NetlinkSocket { socket, sequence: 0 })
    }

    /// A socket that receives the multicast `groups` (a bit mask such as `RTMGRP_LINK`).
    pub fn subscribe(protocol: isize, groups: u32) -> Result<NetlinkSocket, NetlinkError> {
        let io_error = |source| NetlinkError::Io {
            what: "subscribe".into(),
            source,
        };
        let mut socket = Socket::new(protocol).map_err(io_error)?;
        socket.bind(&SocketAddr::new(0, groups)).map_err(io_error)?;
        Ok(NetlinkSocket { socket, sequence: 0 })
    }

    /// Waits for the next datagram of a subscribed socket, without decoding it.
    pub fn next_datagram(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(&mut &mut buffer[..], 0)
    }

    /// Sends `message` and waits for the kernel's acknowledgement.
    pub fn request<M>(&mut self, what: &str, message: M, flags: u16) -> Result<(), NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        self.exchange(what, message, flags | NLM_F_ACK).map(drop)
    }

    /// Sends a dump request and collects every answer.
    pub fn dump<M>(&mut self, what: &str, message: M) -> Result<Vec<M>, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        self.exchange(what, message, NLM_F_DUMP)
    }

    /// Sends a request for one object and returns the kernel's answer.
    pub fn get<M>(&mut self, what: &str, message: M) -> Result<M, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        self.exchange(what, message, 0)?
            .into_iter()
            .next()
            .ok_or_else(|| NetlinkError::Decode {
                what: what.into(),
                reason: "the kernel sent no answer".into(),
            })
    }

    /// Sends one request and reads until its end: an acknowledgement or error, `NLMSG_DONE` after
    /// a multipart answer, or a single answer. Messages of other (earlier) requests are skipped.
    fn exchange<M>(&mut self, what: &str, message: M, flags: u16) -> Result<Vec<M>, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut buffer = vec![0u8; request.buffer_len()];
        request.serialize(&mut buffer);
        let io_error = |source| NetlinkError::Io {
            what: what.into(),
            source,
        };
        self.socket.send(&buffer, 0).map_err(io_error)?;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io_error)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<M>::deserialize(&datagram[offset..]).map_err(|e| {
                    NetlinkError::Decode {
                        what: what.into(),
                        reason: e.to_string(),
                    }
                })?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    let multipart = reply.header.flags & NLM_F_MULTIPART != 0;
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answers),
                                Some(code) => Err(NetlinkError::Kernel {
                                    what: what.into(),
                                    errno: -code.get(),
                                }),
                            };
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            answers.push(inner);
                            if !multipart && flags & NLM_F_ACK == 0 {
                                return Ok(answers);
                            }
                        }
                        NetlinkPayload::Overrun(_) => {
                            return Err(NetlinkError::Decode {
                                what: what.into(),
                                reason: "the answer overran the socket buffer".into(),
                            });
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}
