//! The wire protocol between the node and its supervisor.
//!
//! One `SOCK_STREAM` unix socket; each message is a little-endian `u32` length followed by that
//! many bytes of JSON ([`Request`] from the node, [`Response`] from the supervisor). The node
//! sends one request and waits for its response before sending the next. `create` carries the
//! container's stdin, stdout and stderr as `SCM_RIGHTS` ancillary data on its first byte.
//!
//! [`Channel`] implements this framing over a blocking [`UnixStream`] for both sides. Received
//! descriptors are opened `O_CLOEXEC` and queued until the request that uses them takes them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sandbox::ExitReport;

/// Largest accepted frame body, in bytes.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Descriptors that accompany a [`Request::Create`]: stdin, stdout, stderr.
pub const CREATE_FDS: usize = 3;

/// Most descriptors accepted in one `recvmsg`.
const MAX_FDS_PER_READ: usize = 8;

/// What the node asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create (but do not start) a container from `bundle/config.json`; carries 3 fds.
    Create {
        /// Container id, `[a-z0-9-]+`.
        id: String,
        /// Absolute bundle directory.
        bundle: PathBuf,
    },
    /// Start a created container's process.
    Start {
        /// Container id.
        id: String,
    },
    /// Read (and optionally reset) the peak memory of a container's cgroup.
    MemoryPeak {
        /// Container id.
        id: String,
        /// Reset the peak after reading it.
        reset: bool,
    },
    /// Kill, reap and remove a container; answers [`Response::Exited`].
    Destroy {
        /// Container id.
        id: String,
    },
    /// Destroy every container and exit.
    Shutdown,
}

/// What the supervisor answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// Sent once, unprompted, when the supervisor has cleaned up and takes requests.
    Ready {
        /// The supervisor's pid.
        pid: u32,
    },
    /// The request succeeded and has nothing to return.
    Done,
    /// Answer to [`Request::MemoryPeak`].
    MemoryPeak {
        /// Peak usage in bytes.
        bytes: u64,
    },
    /// Answer to [`Request::Destroy`].
    Exited {
        /// How the container ended.
        report: ExitReport,
    },
    /// The request failed.
    Failed {
        /// The container concerned, if any.
        id: Option<String>,
        /// What went wrong.
        message: String,
    },
}

/// A framed, fd-passing connection over a blocking unix stream.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    /// Wraps a connected stream (left in blocking mode).
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(4096),
            fds: VecDeque::new(),
        }
    }

    /// The underlying stream (for timeouts).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message, with `fds` attached to its first byte.
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        if body.len() > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes is too large", body.len()),
            ));
        }
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);

        let fd = self.stream.as_raw_fd();
        let mut sent = 0;
        while sent < frame.len() {
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(
                fd,
                &[IoSlice::new(&frame[sent..])],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message; `Ok(None)` on a clean end of stream between messages.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        loop {
            if let Some(len) = self.complete_frame()? {
                let body: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                return serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if !self.fill()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a message",
                    ))
                };
            }
        }
    }

    /// Takes `n` received descriptors, in arrival order, if that many arrived.
    pub fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        (self.fds.len() >= n).then(|| self.fds.drain(..n).collect())
    }

    /// Closes every queued descriptor (those no request claimed).
    pub fn discard_fds(&mut self) {
        self.fds.clear();
    }

    /// The body length of the first buffered frame, once it is complete.
    fn complete_frame(&self) -> io::Result<Option<usize>> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(header);
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the limit"),
            ));
        }
        Ok((self.buf.len() >= 4 + len).then_some(len))
    }

    /// Reads more bytes (and descriptors); `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]);
        let fd = self.stream.as_raw_fd();
        let (bytes, received) = loop {
            let mut iov = [IoSliceMut::new(&mut chunk)];
            match recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut received = Vec::new();
                    for cmsg in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            received.extend(raw);
                        }
                    }
                    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                    let bytes = msg.bytes;
                    if truncated {
                        // Close what did arrive, then fail: the peer broke the protocol.
                        for raw in received {
                            // SAFETY: the kernel just installed `raw` in our table for us.
                            drop(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "too many descriptors in one message",
                        ));
                    }
                    break (bytes, received);
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for raw in received {
            // SAFETY: SCM_RIGHTS descriptors are new entries of our fd table, owned by nobody.
            self.fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        if bytes == 0 {
            return Ok(false);
        }
        if self.buf.len() + bytes > 4 + MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "peer sent more than one frame's worth of data",
            ));
        }
        self.buf.extend_from_slice(&chunk[..bytes]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn requests_round_trip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = Channel::new(a);
        let mut rx = Channel::new(b);
        let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
        let req = Request::Create {
            id: "abc".into(),
            bundle: "/tmp/b".into(),
        };
        let raw = pipe_w.as_raw_fd();
        tx.send(&req, &[raw, raw, raw]).unwrap();
        tx.send(&Request::Start { id: "abc".into() }, &[]).unwrap();

        assert_eq!(rx.recv::<Request>().unwrap(), Some(req));
        let fds = rx.take_fds(CREATE_FDS).unwrap();
        assert_eq!(fds.len(), 3);
        assert!(rx.take_fds(1).is_none());
        assert_eq!(
            rx.recv::<Request>().unwrap(),
            Some(Request::Start { id: "abc".into() })
        );

        // The received descriptors are the pipe's write end, and close-on-exec.
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
        w.write_all(b"x").unwrap();
        drop(w);
        drop(pipe_w);
        drop(rx);
        let mut got = [0u8; 1];
        std::fs::File::from(pipe_r).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn eof_between_messages_is_none_and_inside_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(Channel::new(b).recv::<Request>().unwrap().is_none());

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(b"{\"op").unwrap();
        drop(a);
        assert!(Channel::new(b).recv::<Request>().is_err());
    }

    #[test]
    fn oversized_frames_are_rejected() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        assert!(Channel::new(b).recv::<Request>().is_err());
    }

    #[test]
    fn responses_serialize_with_a_tag() {
        let text = serde_json::to_string(&Response::MemoryPeak { bytes: 5 }).unwrap();
        assert_eq!(text, r#"{"reply":"memory_peak","bytes":5}"#);
    }
}
