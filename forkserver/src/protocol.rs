//! The messages exchanged between a client and the fork server.
//!
//! Every message is one `SOCK_SEQPACKET` frame of at most [`MAX_FRAME`] bytes,
//! encoded by [`crate::codec`], optionally carrying up to [`MAX_FDS`] file
//! descriptors as `SCM_RIGHTS`. A connection opens with [`Request::Hello`],
//! answered by [`Reply::Hello`] or [`Reply::Refused`]; after that, requests
//! carry a client-chosen id that the matching reply repeats. `docs/protocol.md`
//! is the long-form description; this module is the source of truth.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame, in bytes, either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// Most file descriptors one frame may carry.
pub const MAX_FDS: usize = 64;

/// Largest spawn payload accepted through a sealed memfd (environment and argv).
pub const MAX_BULK: usize = 16 * 1024 * 1024;

/// Highest fd slot a child may ask for.
pub const MAX_SLOT: u32 = 1024;

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens every connection.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// Identity of the client's executable; must equal the server's.
        build: u64,
    },
    /// Fork a child. The frame's fds are installed at `slots`, in order; when
    /// `payload` is [`Payload::Memfd`] the last fd is that memfd.
    Spawn(SpawnRequest),
    /// Send `signal` to `pid`, which must be a child this connection spawned.
    Signal {
        /// Request id.
        id: u64,
        /// The child.
        pid: i32,
        /// Signal number.
        signal: i32,
    },
    /// Open a new connection; its client end comes back by `SCM_RIGHTS`.
    Connect {
        /// Request id.
        id: u64,
    },
    /// Liveness check.
    Ping {
        /// Request id.
        id: u64,
    },
    /// Stop the server (root connection only), as if the root had closed.
    Shutdown {
        /// Request id.
        id: u64,
    },
    /// Keep a warm child reserved for this connection from now on: one at a
    /// time, each sent as [`Reply::Reserved`] when the server has one. No
    /// other reply; a server without warm children ignores it.
    Reserve,
    /// The client handed the warm child `pid`, reserved for this connection,
    /// a spawn of its own ([`ToWarm::Spawn`]): from now on it is the child of
    /// spawn request `id`, reported by [`Reply::Exited`] under that id. The
    /// connection's next reservation follows when a warm child is ready.
    Claim {
        /// The id the client gave that spawn.
        id: u64,
        /// The reserved child.
        pid: i32,
        /// As [`SpawnRequest::daemon`].
        daemon: bool,
    },
    /// The client cannot use the warm child `pid` reserved for it (its fds
    /// did not arrive whole): the server kills it, and reserves another.
    Release {
        /// The reserved child.
        pid: i32,
    },
}

/// The body of a spawn request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Request id.
    pub id: u64,
    /// The fd slot in the child of each attached fd, in order.
    pub slots: Vec<u32>,
    /// Daemonic children are killed when their connection closes.
    pub daemon: bool,
    /// Working directory, environment and what to run.
    pub payload: Payload,
}

/// Where the spawn details travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// In the frame itself.
    Inline(SpawnDetails),
    /// In a sealed memfd attached as the frame's last fd, `len` bytes long.
    Memfd {
        /// Length of the encoded [`SpawnDetails`].
        len: u32,
    },
}

/// The part of a spawn request that can grow large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnDetails {
    /// Directory the child starts in; `None` keeps the server's.
    #[serde(with = "bytes::opt")]
    pub cwd: Option<Vec<u8>>,
    /// The child's whole environment; `None` keeps the server's.
    #[serde(with = "bytes::opt_pairs")]
    pub env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// What the child does once set up.
    pub action: Action,
}

/// What a freshly forked child runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Call the embedder's registered child entry with these bytes.
    Run {
        /// Opaque to the server.
        #[serde(with = "bytes::one")]
        data: Vec<u8>,
    },
    /// `execvp(program, argv)`.
    Exec {
        /// Program path, or a name searched in the child's `PATH`.
        #[serde(with = "bytes::one")]
        program: Vec<u8>,
        /// Full argv, `argv[0]` included.
        #[serde(with = "bytes::many")]
        argv: Vec<Vec<u8>>,
    },
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Handshake accepted.
    Hello {
        /// The server's [`PROTOCOL_VERSION`].
        version: u32,
        /// The server's build identity.
        build: u64,
        /// The server's process id.
        server_pid: i32,
        /// The working directory every child starts in unless a request
        /// names another; `None` when the server has none.
        #[serde(with = "bytes::opt")]
        cwd: Option<Vec<u8>>,
        /// Device and inode of that directory: a client whose own directory
        /// has the same path but not the same identity (it was removed and
        /// made again) still sends its path.
        cwd_id: Option<(u64, u64)>,
        /// The environment every child starts with unless a request sends
        /// another; `None` when it is too large for this frame. A client
        /// whose own environment equals it sends none.
        #[serde(with = "bytes::opt_pairs")]
        env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        /// Whether the server has a child entry: without one only `exec`
        /// spawns can work.
        entry: bool,
        /// How many warm children the server keeps (0: it never sends
        /// [`Reply::Reserved`], so a client need not ask).
        warm: u32,
    },
    /// Handshake refused; the server closes the connection after this.
    Refused(Refusal),
    /// A child was forked and set up; its pidfd is attached when `pidfd`.
    Spawned {
        /// Request id.
        id: u64,
        /// The child's pid.
        pid: i32,
        /// Whether a pidfd is attached.
        pidfd: bool,
    },
    /// A child of this connection ended and was reaped.
    Exited {
        /// Id of the request that spawned it.
        id: u64,
        /// The child's pid.
        pid: i32,
        /// How it ended.
        status: WireStatus,
        /// Resources it used.
        rusage: Rusage,
    },
    /// A request succeeded and has nothing else to say (signal, shutdown).
    Done {
        /// Request id.
        id: u64,
    },
    /// A new connection; its client end is attached.
    Connected {
        /// Request id.
        id: u64,
    },
    /// Answer to [`Request::Ping`].
    Pong {
        /// Request id.
        id: u64,
    },
    /// A request failed; `id` is `None` when the frame could not be decoded.
    Error {
        /// Request id, when known.
        id: Option<u64>,
        /// What went wrong.
        kind: ErrorKind,
        /// Human-readable detail.
        message: String,
    },
    /// A warm child reserved for this connection ([`Request::Reserve`]):
    /// attached are the other end of its socket, its kick (an eventfd),
    /// then its pidfd when `pidfd`. The client spawns on it directly: one
    /// [`ToWarm::Spawn`] frame on the socket, then [`kick::SPAWN`] or
    /// [`kick::DAEMON`] added to the kick (the child waits on the kick and
    /// reads the socket once kicked; a kick with no frame behind it sends
    /// the child away). [`Request::Claim`] follows, at the latest before the
    /// client's next request or wait. A reserved child unclaimed when the
    /// connection closes is judged by its kick: a spawn runs on as any
    /// child of a closed connection (a daemonic one is terminated), a child
    /// never kicked, or sent away with [`kick::AWAY`], is killed.
    Reserved {
        /// The warm child's pid.
        pid: i32,
        /// Whether a pidfd is attached after the socket.
        pidfd: bool,
    },
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The protocol versions differ.
    Version {
        /// The server's version.
        server: u32,
    },
    /// The executables differ.
    Build {
        /// The server's build identity.
        server: u64,
    },
    /// The server process had more than one thread at start.
    Threads {
        /// How many it had.
        threads: usize,
    },
}

/// Category of an error the server replied with (`Reply::Error` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame was not a valid request.
    Malformed,
    /// The frame was larger than [`MAX_FRAME`].
    TooLarge,
    /// More than [`MAX_FDS`] fds, or a truncated control message.
    TooManyFds,
    /// Fds and slots do not match, or a slot is out of range or repeated.
    BadFds,
    /// A request before the handshake, or a second handshake.
    Handshake,
    /// The pid is not a live child of this connection.
    NotYourChild,
    /// `fork`, `pipe` or the child's set-up failed.
    SpawnFailed,
    /// The operation is not allowed on this connection.
    NotAllowed,
    /// Any other OS error.
    Os,
}

/// What a client adds to the kick of its reserved warm child; the server
/// reads it only if the connection closes before the child is claimed.
pub mod kick {
    /// The socket holds a spawn.
    pub const SPAWN: u64 = 1;
    /// The socket holds a spawn of a daemonic child.
    pub const DAEMON: u64 = 2;
    /// The reservation was dropped unused: the child is to exit.
    pub const AWAY: u64 = 3;
}

/// What a *warm* child (forked ahead of any request, waiting on a socket of
/// its own) can be sent to make it the child of one spawn. Only a child
/// forked from that server decodes it; a frame that does not decode, or
/// whose fds do not match its slots, ends the child with a report on that
/// socket and exit code 127.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWarm {
    /// From the server, for a [`Request::Spawn`] it took.
    Handover(Handover),
    /// From the client the child is reserved for ([`Reply::Reserved`]),
    /// straight to the child: the server is not on the way.
    Spawn(WarmSpawn),
}

/// A spawn sent by a client straight to its reserved warm child: the
/// request's own [`SpawnDetails`], which the child plans against the
/// server's baseline itself (the same plan the server would make).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSpawn {
    /// The fd slot of each attached fd, in order.
    pub slots: Vec<u32>,
    /// Directory, environment, action.
    pub details: SpawnDetails,
    /// As [`Handover::confirm`], with the client waiting: EOF when set-up
    /// worked (the child closed the socket or `exec` did), a report when it
    /// failed.
    pub confirm: bool,
}

/// What the server sends a warm child to make it the child of one spawn
/// ([`ToWarm::Handover`]). The frame's fds go to `slots`, in order. The
/// directory and environment arrive as a difference from the server's,
/// planned in the server as for a freshly forked child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The fd slot of each attached fd, in order.
    pub slots: Vec<u32>,
    /// Directory to change to; `None` stays in the server's.
    #[serde(with = "bytes::opt")]
    pub chdir: Option<Vec<u8>>,
    /// Variables to remove from the server's environment.
    #[serde(with = "bytes::many")]
    pub env_remove: Vec<Vec<u8>>,
    /// Variables to set (added or changed); `None` when there are none.
    #[serde(with = "bytes::opt_pairs")]
    pub env_set: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Keep the socket as the set-up channel: EOF when set-up worked, a
    /// report when it failed (the server waits for one or the other).
    pub confirm: bool,
    /// What to run.
    pub action: Action,
}

/// How a child ended, as the kernel said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// Resource usage of a reaped child (from `wait4`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rusage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub system_us: u64,
    /// Peak resident set, KiB.
    pub max_rss_kib: u64,
}

/// Serde helpers that write byte strings as one block.
///
/// These helpers use `serialize_bytes`, which the codec writes as a length
/// and the bytes, exactly as it writes a plain `Vec<u8>`: the wire format
/// does not depend on them.
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    /// A byte string that deserializes from bytes or from a sequence of u8.
    struct Block(Vec<u8>);

    impl<'de> de::Deserialize<'de> for Block {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                    // Capacity from the hint is bounded: the codec's
                    // allocation limit has already checked the length.
                    let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element::<u8>()? {
                        v.push(b);
                    }
                    Ok(v)
                }
            }
            d.deserialize_byte_buf(V).map(Block)
        }
    }

    struct BlockRef<'a>(&'a [u8]);

    impl serde::Serialize for BlockRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// `Vec<u8>`.
    pub(crate) mod one {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            <Block as de::Deserialize>::deserialize(d).map(|b| b.0)
        }
    }

    /// `Option<Vec<u8>>`.
    pub(crate) mod opt {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&BlockRef(b)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            <Option<Block> as de::Deserialize>::deserialize(d).map(|o| o.map(|b| b.0))
        }
    }

    /// `Vec<Vec<u8>>`.
    pub(crate) mod many {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for b in v {
                seq.serialize_element(&BlockRef(b))?;
            }
            seq.end()
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Vec<u8>>, D::Error> {
            <Vec<Block> as de::Deserialize>::deserialize(d)
                .map(|v| v.into_iter().map(|b| b.0).collect())
        }
    }

    /// `Option<Vec<(Vec<u8>, Vec<u8>)>>`.
    pub(crate) mod opt_pairs {
        use super::*;

        type Pairs2 = Option<Vec<(Vec<u8>, Vec<u8>)>>;

        struct Pairs<'a>(&'a [(Vec<u8>, Vec<u8>)]);

        impl serde::Serialize for Pairs<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    seq.serialize_element(&(BlockRef(k), BlockRef(v)))?;
                }
                seq.end()
            }
        }

        pub(crate) fn serialize<S: Serializer>(v: &Pairs2, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(p) => s.serialize_some(&Pairs(p)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs2, D::Error> {
            <Option<Vec<(Block, Block)>> as de::Deserialize>::deserialize(d)
                .map(|o| o.map(|v| v.into_iter().map(|(k, v)| (k.0, v.0)).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The same fields with serde's default (element by element) encoding.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct PlainDetails {
        cwd: Option<Vec<u8>>,
        env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        action: PlainAction,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum PlainAction {
        Run {
            data: Vec<u8>,
        },
        Exec {
            program: Vec<u8>,
            argv: Vec<Vec<u8>>,
        },
    }

    #[test]
    fn byte_fields_keep_the_wire_format() {
        let env = Some(vec![
            (b"HOME".to_vec(), b"/root".to_vec()),
            (b"E".to_vec(), Vec::new()),
        ]);
        let cases = [
            (
                SpawnDetails {
                    cwd: Some(b"/tmp/\xff".to_vec()),
                    env: env.clone(),
                    action: Action::Run {
                        data: (0..=255).collect(),
                    },
                },
                PlainDetails {
                    cwd: Some(b"/tmp/\xff".to_vec()),
                    env: env.clone(),
                    action: PlainAction::Run {
                        data: (0..=255).collect(),
                    },
                },
            ),
            (
                SpawnDetails {
                    cwd: None,
                    env: None,
                    action: Action::Exec {
                        program: b"sh".to_vec(),
                        argv: vec![b"sh".to_vec(), Vec::new(), b"-c".to_vec()],
                    },
                },
                PlainDetails {
                    cwd: None,
                    env: None,
                    action: PlainAction::Exec {
                        program: b"sh".to_vec(),
                        argv: vec![b"sh".to_vec(), Vec::new(), b"-c".to_vec()],
                    },
                },
            ),
        ];
        for (ours, plain) in cases {
            let a = codec::encode(&ours).unwrap();
            let b = codec::encode(&plain).unwrap();
            assert_eq!(a, b, "same bytes on the wire");
            assert_eq!(codec::decode::<SpawnDetails>(&b).unwrap(), ours);
            assert_eq!(codec::decode::<PlainDetails>(&a).unwrap(), plain);
        }
    }

    #[test]
    fn truncated_byte_fields_are_errors() {
        let d = SpawnDetails {
            cwd: Some(b"/a/b/c".to_vec()),
            env: Some(vec![(b"K".to_vec(), b"value".to_vec())]),
            action: Action::Run {
                data: b"payload".to_vec(),
            },
        };
        let bytes = codec::encode(&d).unwrap();
        for cut in 0..bytes.len() {
            assert!(codec::decode::<SpawnDetails>(&bytes[..cut]).is_err());
        }
    }
}
