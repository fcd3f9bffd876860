//! The server's state machine: frames in, replies and OS actions out.
//!
//! The handler owns every piece of server state (connections, their reply
//! queues, the children each spawned) but performs no I/O on sockets and
//! never forks by itself: process effects go through the [`Os`] trait, so the
//! whole request path runs under the fuzzer with a recording `Os` and under
//! the real server loop with one that forks.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::codec;
use crate::protocol::{
    Action, ErrorKind, MAX_BULK, MAX_FDS, MAX_SLOT, PROTOCOL_VERSION, Payload, Refusal, Reply,
    Request, Rusage, SpawnDetails, SpawnRequest, WireStatus, kick,
};

/// Identifies a connection inside one server.
pub type ConnId = u64;

/// Everything a child needs, handed to [`Os::spawn`].
#[derive(Debug)]
pub struct SpawnPlan {
    /// fds and the slot each lands on.
    pub fds: Vec<(OwnedFd, u32)>,
    /// Directory, environment, action.
    pub details: SpawnDetails,
}

/// A spawned child as the OS layer reports it.
#[derive(Debug)]
pub struct ForkedChild {
    /// Its pid.
    pub pid: i32,
    /// Read end of the set-up pipe: EOF when set-up succeeded, an error
    /// report otherwise. `None` when set-up is already known to be done.
    pub setup: Option<OwnedFd>,
}

/// A warm child as the OS layer reports it: forked ahead of any request,
/// waiting for a kick on `link`.
#[derive(Debug)]
pub struct WarmChild {
    /// Its pid.
    pub pid: i32,
    /// The way to it.
    pub link: WarmLink,
}

/// The way to a warm child: a spawn is sent on `sock` (one frame with its
/// fds), then `kick` is written. The child blocks on `kick`, not on the
/// socket: a socket's wake-up hints that the sender is about to sleep, so
/// the scheduler tends to queue the child behind its sender, while an
/// eventfd's lets it start at once on an idle CPU.
#[derive(Debug)]
pub struct WarmLink {
    /// The other end of the child's socket.
    pub sock: OwnedFd,
    /// An eventfd the child reads.
    pub kick: OwnedFd,
}

/// A handover that did not happen, with the spec given back.
#[derive(Debug)]
pub struct HandOverError {
    /// Why.
    pub error: io::Error,
    /// The spec, for a fresh fork.
    pub spec: Box<SpawnPlan>,
}

impl HandOverError {
    /// `spec` given back because of `error`.
    pub fn new(error: io::Error, spec: SpawnPlan) -> HandOverError {
        HandOverError {
            error,
            spec: Box::new(spec),
        }
    }
}

/// The process effects the handler asks for.
pub trait Os {
    /// Forks a child as `spec` says.
    fn spawn(&mut self, spec: SpawnPlan) -> io::Result<ForkedChild>;
    /// Forks a warm child, which waits for [`Os::hand_over`]. The default
    /// has none to give.
    fn fork_warm(&mut self) -> io::Result<WarmChild> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no warm children here",
        ))
    }
    /// Makes the warm child `pid` (on the other end of `link`) the child of
    /// `spec`. On failure the spec comes back, whole, for a fresh
    /// [`Os::spawn`]; the warm child is then useless (the handler kills it).
    fn hand_over(
        &mut self,
        pid: i32,
        link: WarmLink,
        spec: SpawnPlan,
    ) -> Result<ForkedChild, HandOverError> {
        let _ = (pid, link);
        Err(HandOverError::new(
            io::Error::new(io::ErrorKind::Unsupported, "no warm children here"),
            spec,
        ))
    }
    /// What a reserved warm child's kick holds (an eventfd's count, read
    /// without waiting): `None` when it was never kicked.
    fn kicked(&mut self, kick: &OwnedFd) -> Option<u64> {
        let _ = kick;
        None
    }
    /// A pidfd for a child that has not been reaped, where supported.
    fn pidfd(&mut self, pid: i32) -> Option<OwnedFd>;
    /// Sends a signal to a child that has not been reaped.
    fn kill(&mut self, pid: i32, signal: i32) -> io::Result<()>;
    /// A fresh connected socket pair (server end, client end).
    fn socketpair(&mut self) -> io::Result<(OwnedFd, OwnedFd)>;
    /// The bytes of a bulk spawn payload, held while the handler decodes
    /// them (the real server's is a read-only mapping of the memfd).
    type Bulk: AsRef<[u8]>;
    /// Gives access to the sealed memfd of a bulk spawn payload, which must
    /// hold exactly `len` bytes: its seals and size are checked before
    /// anything is mapped or allocated, so a length that lies costs nothing.
    fn map_memfd(&mut self, fd: &OwnedFd, len: usize) -> io::Result<Self::Bulk>;
}

/// One encoded reply waiting to be written, with its fds.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame.
    pub bytes: Vec<u8>,
    /// fds to attach.
    pub fds: Vec<OwnedFd>,
}

/// Server-side state of one connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket (the real server polls it; the fuzzer may leave it `None`).
    pub fd: Option<OwnedFd>,
    /// Replies not yet written.
    pub out: VecDeque<Outgoing>,
    /// The root connection: when it closes, the server exits.
    pub root: bool,
    handshaken: bool,
    /// Close once `out` is flushed (after a refusal).
    pub close_after_flush: bool,
    /// The queue overflowed: drop the connection now.
    pub overflowed: bool,
    /// The client asked to keep a warm child reserved ([`Request::Reserve`]).
    wants_warm: bool,
    /// Reserved children that died unclaimed, newest last (at most
    /// [`DEAD_RESERVED`]): a `Claim` the client sent as the child died
    /// still gets its exit report.
    dead_reserved: VecDeque<(i32, WireStatus, Rusage)>,
}

/// Reserved children that died unclaimed remembered per connection.
const DEAD_RESERVED: usize = 4;

#[derive(Debug)]
struct ChildRec {
    conn: Option<ConnId>,
    id: u64,
    daemon: bool,
    /// `Spawned` has been sent (or its failure reported).
    announced: bool,
    /// Set-up failed: the exit is not reported.
    failed: bool,
    /// Its pidfd, opened before the request (a warm child's).
    pidfd: Option<OwnedFd>,
}

/// A warm child waiting in the pool.
#[derive(Debug)]
struct WarmRec {
    pid: i32,
    link: WarmLink,
    pidfd: Option<OwnedFd>,
}

/// Server limits and identity.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Our build identity.
    pub build: u64,
    /// Our pid, for the handshake.
    pub pid: i32,
    /// Replies a connection may have queued before it is dropped.
    pub max_queued: usize,
    /// Grace between SIGTERM and SIGKILL for daemonic children.
    pub grace: Duration,
    /// If set, refuse every handshake: the server had this many threads.
    pub refuse_threads: Option<usize>,
    /// The server's working directory, told to clients in the handshake.
    pub cwd: Option<Vec<u8>>,
    /// Device and inode of that directory.
    pub cwd_id: Option<(u64, u64)>,
    /// The server's environment, told to clients in the handshake (`None`
    /// when too large for the frame).
    pub env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Whether a child entry is registered, told in the handshake.
    pub entry: bool,
    /// Warm children to keep (0: none, every spawn forks).
    pub warm: usize,
    /// How long the server must have been idle (no event at all) before it
    /// forks a warm child: spawns that come back to back never wait for one.
    pub warm_idle: Duration,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            build: 0,
            pid: 0,
            max_queued: 4096,
            grace: Duration::from_secs(1),
            refuse_threads: None,
            cwd: None,
            cwd_id: None,
            env: None,
            entry: false,
            warm: 0,
            warm_idle: WARM_IDLE,
        }
    }
}

/// Default [`HandlerConfig::warm_idle`].
pub const WARM_IDLE: Duration = Duration::from_micros(500);

/// The idle time before a refill when no connection asked for a warm child
/// lately (see [`Handler::idle_timeout`]): longer than the kernel's tick
/// (4 ms at 250 Hz, 10 ms at 100 Hz), so that the timeout every `poll`
/// carries never needs the timer hardware reprogrammed.
pub const QUIET_IDLE: Duration = Duration::from_millis(20);

/// Warm children that die unused in a row before the pool stops refilling
/// for [`WARM_PAUSE`] (a warm-up hook that crashes, a process limit).
const WARM_DEATHS: u32 = 3;

/// How long refilling stops after [`WARM_DEATHS`] or a failed fork.
const WARM_PAUSE: Duration = Duration::from_secs(1);

/// What the loop must do after a call into the handler.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Stop serving.
    pub shutdown: bool,
}

/// The server's whole state.
#[derive(Debug)]
pub struct Handler {
    cfg: HandlerConfig,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    children: HashMap<i32, ChildRec>,
    /// pid → set-up pipe still open.
    pending_setup: HashMap<i32, OwnedFd>,
    /// (deadline, pid) of daemonic children to SIGKILL if still alive.
    kills: Vec<(Instant, i32)>,
    shutting_down: bool,
    max_conns: usize,
    /// Warm children, oldest first.
    warm: VecDeque<WarmRec>,
    /// Warm children reserved for a connection and not yet claimed: pid →
    /// that connection and our copy of the child's kick. They count towards
    /// [`HandlerConfig::warm`].
    reserved: HashMap<i32, (ConnId, OwnedFd)>,
    /// Connections waiting for a reservation, in the order they asked.
    want_warm: VecDeque<ConnId>,
    /// Warm children sent away (killed, or a handover failed), not yet reaped.
    retired: Vec<i32>,
    /// Warm children that died unused since one was last used.
    warm_deaths: u32,
    /// No refill before this.
    warm_paused_until: Option<Instant>,
    /// When a connection last asked for a warm child (`Reserve`, `Claim`,
    /// `Release`), or the server started: within twice the idle time of
    /// it, the refill waits only [`HandlerConfig::warm_idle`].
    demand_at: Instant,
}

/// Default cap on open connections (see [`Handler::set_max_conns`]).
pub const MAX_CONNS: usize = 1024;

impl Handler {
    /// A handler with no connections.
    pub fn new(cfg: HandlerConfig) -> Self {
        Handler {
            cfg,
            conns: HashMap::new(),
            next_conn: 1,
            children: HashMap::new(),
            pending_setup: HashMap::new(),
            kills: Vec::new(),
            shutting_down: false,
            max_conns: MAX_CONNS,
            warm: VecDeque::new(),
            reserved: HashMap::new(),
            want_warm: VecDeque::new(),
            retired: Vec::new(),
            warm_deaths: 0,
            warm_paused_until: None,
            demand_at: Instant::now(),
        }
    }

    /// Caps the number of open connections (root included); a `Connect`
    /// beyond it gets a `NotAllowed` error. The cap keeps one client from
    /// spending the server's fd table, which every other client's spawns
    /// need (pipes, pidfds, received fds). Default [`MAX_CONNS`].
    pub fn set_max_conns(&mut self, max: usize) {
        self.max_conns = max.max(1);
    }

    /// Registers a connection and returns its id.
    pub fn add_conn(&mut self, fd: Option<OwnedFd>, root: bool) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                fd,
                out: VecDeque::new(),
                root,
                handshaken: false,
                close_after_flush: false,
                overflowed: false,
                wants_warm: false,
                dead_reserved: VecDeque::new(),
            },
        );
        id
    }

    /// The live connections.
    pub fn conns(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.conns.iter().map(|(k, v)| (*k, v))
    }

    /// Mutable access to one connection (the loop writes its queue).
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// Set-up pipes still open, by child pid.
    pub fn pending_setups(&self) -> impl Iterator<Item = (i32, &OwnedFd)> {
        self.pending_setup.iter().map(|(k, v)| (*k, v))
    }

    /// The set-up pipe of `pid`, while it is still open.
    pub fn setup_fd(&self, pid: i32) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pending_setup.get(&pid).map(|f| f.as_fd())
    }

    /// Number of children not yet reaped.
    pub fn live_children(&self) -> usize {
        self.children.len()
    }

    /// Whether a shutdown has been requested (root closed or `Shutdown`).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The earliest pending SIGKILL deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.kills.iter().map(|(d, _)| *d).min()
    }

    fn push(&mut self, conn: ConnId, reply: &Reply, fds: Vec<OwnedFd>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match codec::encode(reply) {
            Ok(bytes) => {
                if c.out.len() >= self.cfg.max_queued {
                    tracing::warn!(conn, "reply queue full: dropping the connection");
                    c.overflowed = true;
                    return;
                }
                c.out.push_back(Outgoing { bytes, fds });
            }
            Err(e) => tracing::error!(conn, error = %e, "could not encode a reply"),
        }
    }

    fn error(&mut self, conn: ConnId, id: Option<u64>, kind: ErrorKind, message: String) {
        tracing::debug!(conn, ?kind, %message, "error reply");
        self.push(conn, &Reply::Error { id, kind, message }, Vec::new());
    }

    /// Handles one received frame on `conn`.
    ///
    /// `truncated` and `ctrunc` are the `MSG_TRUNC` / `MSG_CTRUNC` flags of
    /// the receive; `fds` are every fd that arrived with the frame.
    pub fn on_frame(
        &mut self,
        os: &mut impl Os,
        conn: ConnId,
        bytes: &[u8],
        truncated: bool,
        ctrunc: bool,
        fds: Vec<OwnedFd>,
    ) -> Effects {
        if !self.conns.contains_key(&conn) {
            return Effects::default();
        }
        let outcome = match Self::check_frame(conn, bytes, truncated, ctrunc, fds.len()) {
            Ok(req) => self.on_request(os, conn, req, fds),
            Err(refused) => Err(refused),
        };
        match outcome {
            Ok(effects) => effects,
            Err(Refused { id, kind, message }) => {
                self.error(conn, id, kind, message);
                Effects::default()
            }
        }
    }

    /// The frame's envelope: size, fds, and the request it decodes to.
    fn check_frame(
        conn: ConnId,
        bytes: &[u8],
        truncated: bool,
        ctrunc: bool,
        nfds: usize,
    ) -> Result<Request, Refused> {
        if truncated {
            tracing::warn!(conn, "protocol error: frame over 64 KiB");
            return Err(Refused::new(None, ErrorKind::TooLarge, "frame over 64 KiB"));
        }
        if ctrunc || nfds > MAX_FDS {
            tracing::warn!(conn, fds = nfds, ctrunc, "protocol error: too many fds");
            return Err(Refused::new(
                None,
                ErrorKind::TooManyFds,
                format!("at most {MAX_FDS} fds per frame"),
            ));
        }
        codec::decode(bytes).map_err(|e| {
            tracing::warn!(conn, error = %e, "protocol error: malformed request");
            Refused::new(None, ErrorKind::Malformed, e.to_string())
        })
    }

    fn on_request(
        &mut self,
        os: &mut impl Os,
        conn: ConnId,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<Effects, Refused> {
        let handshaken = self.conns.get(&conn).is_some_and(|c| c.handshaken);
        // A connection asking for a warm child (see `idle_timeout`).
        if handshaken
            && matches!(
                req,
                Request::Reserve | Request::Claim { .. } | Request::Release { .. }
            )
        {
            self.demand_at = Instant::now();
        }
        match req {
            Request::Hello { version, build } => {
                if handshaken {
                    return Err(Refused::new(None, ErrorKind::Handshake, "second hello"));
                }
                self.hello(conn, version, build);
            }
            _ if !handshaken => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.close_after_flush = true;
                }
                return Err(Refused::new(None, ErrorKind::Handshake, "hello first"));
            }
            Request::Spawn(req) => {
                let id = req.id;
                self.spawn(os, conn, req, fds)
                    .map_err(|(kind, message)| Refused::new(Some(id), kind, message))?;
            }
            Request::Signal { id, pid, signal } => {
                let owned = self
                    .children
                    .get(&pid)
                    .is_some_and(|c| c.conn == Some(conn) && !c.failed);
                if !owned {
                    return Err(Refused::new(
                        Some(id),
                        ErrorKind::NotYourChild,
                        format!("pid {pid} is not a live child of this connection"),
                    ));
                }
                if !(1..=64).contains(&signal) {
                    return Err(Refused::new(
                        Some(id),
                        ErrorKind::NotAllowed,
                        format!("bad signal {signal}"),
                    ));
                }
                os.kill(pid, signal)
                    .map_err(|e| Refused::new(Some(id), ErrorKind::Os, e.to_string()))?;
                self.push(conn, &Reply::Done { id }, Vec::new());
            }
            Request::Connect { id } => {
                if self.conns.len() >= self.max_conns {
                    tracing::warn!(conn, max = self.max_conns, "connection refused: too many");
                    return Err(Refused::new(
                        Some(id),
                        ErrorKind::NotAllowed,
                        format!("at most {} connections", self.max_conns),
                    ));
                }
                let (server_end, client_end) = os
                    .socketpair()
                    .map_err(|e| Refused::new(Some(id), ErrorKind::Os, e.to_string()))?;
                let new = self.add_conn(Some(server_end), false);
                tracing::debug!(conn, new, "new connection");
                self.push(conn, &Reply::Connected { id }, vec![client_end]);
            }
            Request::Ping { id } => self.push(conn, &Reply::Pong { id }, Vec::new()),
            Request::Shutdown { id } => {
                if !self.conns.get(&conn).is_some_and(|c| c.root) {
                    return Err(Refused::new(
                        Some(id),
                        ErrorKind::NotAllowed,
                        "only the root connection may shut down",
                    ));
                }
                self.push(conn, &Reply::Done { id }, Vec::new());
                self.begin_shutdown(os);
                return Ok(Effects { shutdown: true });
            }
            Request::Reserve => {
                if let Some(c) = self.conns.get_mut(&conn)
                    && !c.wants_warm
                {
                    c.wants_warm = true;
                    self.want_warm.push_back(conn);
                    self.grant_reservations();
                }
            }
            Request::Claim { id, pid, daemon } => self.claim(conn, id, pid, daemon)?,
            Request::Release { pid } => self.release(os, conn, pid),
        }
        Ok(Effects::default())
    }

    /// Answers a handshake: refused (threads, version, build) or welcomed.
    fn hello(&mut self, conn: ConnId, version: u32, build: u64) {
        let refusal = if let Some(threads) = self.cfg.refuse_threads {
            Some(Refusal::Threads { threads })
        } else if version != PROTOCOL_VERSION {
            Some(Refusal::Version {
                server: PROTOCOL_VERSION,
            })
        } else if build != self.cfg.build {
            Some(Refusal::Build {
                server: self.cfg.build,
            })
        } else {
            None
        };
        if let Some(r) = refusal {
            tracing::warn!(conn, ?r, "handshake refused");
            self.push(conn, &Reply::Refused(r), Vec::new());
            if let Some(c) = self.conns.get_mut(&conn) {
                c.close_after_flush = true;
            }
            return;
        }
        let hello = Reply::Hello {
            version: PROTOCOL_VERSION,
            build: self.cfg.build,
            server_pid: self.cfg.pid,
            cwd: self.cfg.cwd.clone(),
            cwd_id: self.cfg.cwd_id,
            env: self.cfg.env.clone(),
            entry: self.cfg.entry,
            warm: u32::try_from(self.cfg.warm).unwrap_or(u32::MAX),
        };
        self.push(conn, &hello, Vec::new());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshaken = true;
        }
    }

    /// Checks a spawn request and forks its child; the error reply's kind
    /// and message when it cannot.
    fn spawn(
        &mut self,
        os: &mut impl Os,
        conn: ConnId,
        req: SpawnRequest,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(), (ErrorKind, String)> {
        let id = req.id;
        let details = match req.payload {
            Payload::Inline(d) => d,
            Payload::Memfd { len } => {
                let memfd = fds
                    .pop()
                    .ok_or((ErrorKind::BadFds, "memfd payload without fd".into()))?;
                Self::bulk_details(os, memfd, len as usize)?
            }
        };
        check_spawn(&req.slots, fds.len(), &details.action)?;
        let spec = SpawnPlan {
            fds: fds.into_iter().zip(req.slots).collect(),
            details,
        };
        let (child, pidfd) = match self.take_warm(os, spec) {
            Ok((child, pidfd)) => (child, pidfd),
            Err(spec) => (os.spawn(spec), None),
        };
        let child = child.map_err(|e| {
            tracing::warn!(conn, id, error = %e, "spawn failed");
            (ErrorKind::SpawnFailed, format!("fork: {e}"))
        })?;
        tracing::debug!(conn, id, pid = child.pid, warm = pidfd.is_some(), "spawned");
        self.children.insert(
            child.pid,
            ChildRec {
                conn: Some(conn),
                id,
                daemon: req.daemon,
                announced: false,
                failed: false,
                pidfd: pidfd.flatten(),
            },
        );
        match child.setup {
            Some(pipe) => {
                self.pending_setup.insert(child.pid, pipe);
            }
            None => self.announce(os, child.pid, None, false),
        }
        Ok(())
    }

    /// The spawn details of a bulk payload: the announced length checked
    /// first, the memfd mapped at its real size, decoded from the mapping.
    fn bulk_details(
        os: &mut impl Os,
        memfd: OwnedFd,
        len: usize,
    ) -> Result<SpawnDetails, (ErrorKind, String)> {
        if len > MAX_BULK {
            return Err((ErrorKind::TooLarge, "bulk payload too large".into()));
        }
        let bytes = os
            .map_memfd(&memfd, len)
            .map_err(|e| (ErrorKind::BadFds, format!("memfd: {e}")))?;
        let decoded = codec::decode_bulk::<SpawnDetails>(bytes.as_ref());
        // Unmapped and closed before anything else happens (the fork above
        // all: the child never sees either).
        drop(bytes);
        drop(memfd);
        decoded.map_err(|e| (ErrorKind::Malformed, e.to_string()))
    }

    /// A child's set-up pipe became readable (or the child was reaped):
    /// `report` is what the pipe held; empty means set-up succeeded.
    pub fn on_setup_done(&mut self, os: &mut impl Os, pid: i32, report: &[u8]) {
        self.setup_done(os, pid, report, false);
    }

    /// [`Handler::on_setup_done`] for a child that has already been reaped:
    /// no pidfd is asked for, since its pid may already name another process.
    pub fn on_setup_done_reaped(&mut self, os: &mut impl Os, pid: i32, report: &[u8]) {
        self.setup_done(os, pid, report, true);
    }

    fn setup_done(&mut self, os: &mut impl Os, pid: i32, report: &[u8], reaped: bool) {
        self.pending_setup.remove(&pid);
        let err = if report.is_empty() {
            None
        } else {
            Some(String::from_utf8_lossy(report).into_owned())
        };
        self.announce(os, pid, err, reaped);
    }

    fn announce(&mut self, os: &mut impl Os, pid: i32, err: Option<String>, reaped: bool) {
        let Some(rec) = self.children.get_mut(&pid) else {
            return;
        };
        if rec.announced {
            return;
        }
        rec.announced = true;
        let (conn, id) = (rec.conn, rec.id);
        let kept = rec.pidfd.take();
        if err.is_some() {
            rec.failed = true;
        }
        let Some(conn) = conn else { return };
        match err {
            None => {
                let pidfd = if reaped {
                    None
                } else {
                    kept.or_else(|| os.pidfd(pid))
                };
                let reply = Reply::Spawned {
                    id,
                    pid,
                    pidfd: pidfd.is_some(),
                };
                self.push(conn, &reply, pidfd.into_iter().collect());
            }
            Some(msg) => self.error(conn, Some(id), ErrorKind::SpawnFailed, msg),
        }
    }

    /// A child was reaped.
    pub fn on_exit(&mut self, os: &mut impl Os, pid: i32, status: WireStatus, rusage: Rusage) {
        if self.pending_setup.contains_key(&pid) {
            // The loop drains the pipe before reporting; a leftover means EOF.
            self.setup_done(os, pid, &[], true);
        }
        self.kills.retain(|(_, p)| *p != pid);
        if self.warm_gone(pid) {
            return;
        }
        if let Some((conn, _)) = self.reserved.remove(&pid) {
            // Exit code 0 is a reserved child whose client dropped its end
            // (a closed connection's goes through `on_close`); anything
            // else died on its own, as a pool child can.
            if status != WireStatus::Exited(0) {
                self.unused_warm_death(pid);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                if c.dead_reserved.len() >= DEAD_RESERVED {
                    c.dead_reserved.pop_front();
                }
                c.dead_reserved.push_back((pid, status, rusage));
                self.want_warm.push_back(conn);
            }
            return;
        }
        let Some(rec) = self.children.remove(&pid) else {
            return;
        };
        tracing::debug!(pid, ?status, "reaped");
        if rec.failed {
            return;
        }
        if let Some(conn) = rec.conn {
            let reply = Reply::Exited {
                id: rec.id,
                pid,
                status,
                rusage,
            };
            self.push(conn, &reply, Vec::new());
        }
    }

    /// A connection closed (EOF, error, overflow, refusal flushed).
    ///
    /// Its daemonic children get SIGTERM now and SIGKILL after the grace
    /// period; its other children run on, reaped but unreported.
    pub fn on_close(&mut self, os: &mut impl Os, conn: ConnId) -> Effects {
        let Some(c) = self.conns.remove(&conn) else {
            return Effects::default();
        };
        tracing::debug!(conn, root = c.root, "connection closed");
        self.want_warm.retain(|w| *w != conn);
        let deadline = after_grace(self.cfg.grace);
        if let Some(pid) = self.reserved_for(conn)
            && let Some((_, kick)) = self.reserved.remove(&pid)
        {
            self.release_reserved(os, pid, &kick, deadline, false);
        }
        for (pid, rec) in self.children.iter_mut() {
            if rec.conn != Some(conn) {
                continue;
            }
            rec.conn = None;
            if rec.daemon {
                let _ = os.kill(*pid, libc::SIGTERM);
                self.kills.push((deadline, *pid));
            }
        }
        if c.root {
            self.begin_shutdown(os);
            return Effects { shutdown: true };
        }
        Effects::default()
    }

    fn begin_shutdown(&mut self, os: &mut impl Os) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        let deadline = after_grace(self.cfg.grace);
        // Warm children go at once; the shutdown waits (at most the grace
        // period) to reap them.
        for (pid, (_, kick)) in std::mem::take(&mut self.reserved) {
            self.release_reserved(os, pid, &kick, deadline, true);
        }
        for w in std::mem::take(&mut self.warm) {
            let _ = os.kill(w.pid, libc::SIGKILL);
            self.retired.push(w.pid);
            self.kills.push((deadline, w.pid));
        }
        for (pid, rec) in self.children.iter() {
            if rec.daemon && !self.kills.iter().any(|(_, p)| p == pid) {
                let _ = os.kill(*pid, libc::SIGTERM);
                self.kills.push((deadline, *pid));
            }
        }
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id)
                && !c.root
            {
                c.close_after_flush = true;
            }
        }
    }

    /// SIGKILLs daemonic children whose grace period ended.
    pub fn on_tick(&mut self, os: &mut impl Os, now: Instant) {
        let due: Vec<i32> = self
            .kills
            .iter()
            .filter(|(d, _)| *d <= now)
            .map(|(_, p)| *p)
            .collect();
        self.kills.retain(|(d, _)| *d > now);
        for pid in due {
            if self.children.contains_key(&pid) {
                tracing::debug!(pid, "grace over: SIGKILL");
                let _ = os.kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Whether any daemonic child still waits for its SIGKILL deadline.
    pub fn has_pending_kills(&self) -> bool {
        !self.kills.is_empty()
    }

    /// Hands `spec` to the oldest warm child, if there is one and the
    /// handover works: the child and its pidfd (`Some(None)`: a warm child
    /// with no pidfd). Otherwise `spec` comes back for a fresh fork; a warm
    /// child whose handover failed is retired (it sees EOF and exits).
    #[allow(clippy::type_complexity)]
    fn take_warm(
        &mut self,
        os: &mut impl Os,
        spec: SpawnPlan,
    ) -> Result<(io::Result<ForkedChild>, Option<Option<OwnedFd>>), SpawnPlan> {
        let Some(w) = self.warm.pop_front() else {
            return Err(spec);
        };
        match os.hand_over(w.pid, w.link, spec) {
            Ok(child) => {
                self.warm_deaths = 0;
                Ok((Ok(child), Some(w.pidfd)))
            }
            Err(HandOverError { error, spec }) => {
                tracing::debug!(pid = w.pid, %error, "handover failed: forking instead");
                let _ = os.kill(w.pid, libc::SIGKILL);
                self.retired.push(w.pid);
                Err(*spec)
            }
        }
    }

    /// Forgets `pid` if it was a warm child (in the pool or retired); true
    /// if it was. One that died unused counts towards a pause in refilling.
    fn warm_gone(&mut self, pid: i32) -> bool {
        if let Some(i) = self.retired.iter().position(|p| *p == pid) {
            self.retired.swap_remove(i);
            return true;
        }
        let Some(i) = self.warm.iter().position(|w| w.pid == pid) else {
            return false;
        };
        self.warm.remove(i);
        self.unused_warm_death(pid);
        true
    }

    /// Counts a warm child that died unused towards a pause in refilling.
    fn unused_warm_death(&mut self, pid: i32) {
        self.warm_deaths += 1;
        tracing::debug!(pid, deaths = self.warm_deaths, "warm child died unused");
        if self.warm_deaths >= WARM_DEATHS {
            tracing::warn!(
                deaths = self.warm_deaths,
                "warm children keep dying unused: refilling paused"
            );
            self.warm_deaths = 0;
            self.warm_paused_until = Some(after_grace(WARM_PAUSE));
        }
    }

    /// Warm children waiting in the pool.
    pub fn warm_children(&self) -> usize {
        self.warm.len()
    }

    /// Warm children reserved for a connection and not yet claimed.
    pub fn reserved_children(&self) -> usize {
        self.reserved.len()
    }

    /// The warm child reserved for `conn` and not yet claimed (one at most).
    fn reserved_for(&self, conn: ConnId) -> Option<i32> {
        self.reserved
            .iter()
            .find(|(_, (c, _))| *c == conn)
            .map(|(pid, _)| *pid)
    }

    /// Warm children sent away (killed, or a handover failed), not yet reaped.
    pub fn retired_children(&self) -> usize {
        self.retired.len()
    }

    /// Whether the pool and the reservations hold every warm child asked for.
    fn warm_full(&self) -> bool {
        self.warm.len() + self.reserved.len() >= self.cfg.warm
    }

    /// Gives the pool's warm children to the connections waiting for one,
    /// in the order they asked: each gets the client's end of the child's
    /// socket (the server keeps none) and its pidfd.
    fn grant_reservations(&mut self) {
        while !self.warm.is_empty() {
            let Some(conn) = self.want_warm.pop_front() else {
                return;
            };
            let open = self.conns.get(&conn).is_some_and(|c| !c.close_after_flush);
            if !open || self.shutting_down || self.reserved_for(conn).is_some() {
                continue;
            }
            let Some(w) = self.warm.pop_front() else {
                return;
            };
            // Our copy of the kick tells, should the connection close before
            // the claim, whether the child was handed a spawn.
            let Ok(kick) = w.link.kick.try_clone() else {
                tracing::warn!(conn, "no fd for a reservation: the warm child stays pooled");
                self.warm.push_front(w);
                self.want_warm.push_front(conn);
                return;
            };
            self.reserved.insert(w.pid, (conn, kick));
            tracing::debug!(conn, pid = w.pid, "warm child reserved");
            let reply = Reply::Reserved {
                pid: w.pid,
                pidfd: w.pidfd.is_some(),
            };
            let mut fds = vec![w.link.sock, w.link.kick];
            fds.extend(w.pidfd);
            self.push(conn, &reply, fds);
        }
    }

    /// A reserved child whose connection closed (or the server is shutting
    /// down) before its claim arrived: what its kick says decides. Handed a
    /// spawn, it is a child of a closed connection (a daemonic one gets
    /// SIGTERM, then SIGKILL at `deadline`); otherwise it is killed, and,
    /// when `wait_reap`, the shutdown waits for its reap.
    fn release_reserved(
        &mut self,
        os: &mut impl Os,
        pid: i32,
        kick: &OwnedFd,
        deadline: Instant,
        wait_reap: bool,
    ) {
        let handed = os.kicked(kick);
        tracing::debug!(pid, ?handed, "reserved child unclaimed at close");
        match handed {
            Some(k @ (kick::SPAWN | kick::DAEMON)) => {
                let daemon = k == kick::DAEMON;
                self.children.insert(
                    pid,
                    ChildRec {
                        conn: None,
                        id: 0,
                        daemon,
                        announced: true,
                        failed: false,
                        pidfd: None,
                    },
                );
                if daemon {
                    let _ = os.kill(pid, libc::SIGTERM);
                    self.kills.push((deadline, pid));
                }
            }
            _ => {
                let _ = os.kill(pid, libc::SIGKILL);
                self.retired.push(pid);
                if wait_reap {
                    self.kills.push((deadline, pid));
                }
            }
        }
    }

    /// `Release`: the client cannot use its reserved child `pid`.
    fn release(&mut self, os: &mut impl Os, conn: ConnId, pid: i32) {
        if self.reserved_for(conn) != Some(pid) {
            return;
        }
        self.reserved.remove(&pid);
        let _ = os.kill(pid, libc::SIGKILL);
        self.retired.push(pid);
        self.want_warm.push_back(conn);
    }

    /// `Claim`: the reserved child `pid` of `conn` runs spawn `id` now.
    fn claim(&mut self, conn: ConnId, id: u64, pid: i32, daemon: bool) -> Result<(), Refused> {
        if self.reserved_for(conn) == Some(pid) {
            self.reserved.remove(&pid);
            self.warm_deaths = 0;
            tracing::debug!(conn, id, pid, "reserved child claimed");
            self.children.insert(
                pid,
                ChildRec {
                    conn: Some(conn),
                    id,
                    daemon,
                    announced: true,
                    failed: false,
                    pidfd: None,
                },
            );
            self.want_warm.push_back(conn);
            self.grant_reservations();
            return Ok(());
        }
        // It died before the claim arrived: its exit, kept for this.
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let dead = c.dead_reserved.iter().position(|d| d.0 == pid);
        if let Some((pid, status, rusage)) = dead.and_then(|i| c.dead_reserved.remove(i)) {
            let reply = Reply::Exited {
                id,
                pid,
                status,
                rusage,
            };
            self.push(conn, &reply, Vec::new());
            return Ok(());
        }
        Err(Refused::new(
            None,
            ErrorKind::NotYourChild,
            format!("pid {pid} is not a warm child reserved for this connection"),
        ))
    }

    /// How long the loop may wait for an event before calling
    /// [`Handler::on_idle`]; `None` when the pool needs nothing.
    ///
    /// [`HandlerConfig::warm_idle`] while a connection asked for a warm
    /// child lately (a claim of its reserved one, above all: its next spawn
    /// may come a few ms later and should find the next one), else
    /// [`QUIET_IDLE`]. A `poll` timeout shorter than the kernel's tick has
    /// the timer hardware reprogrammed on every call (a VM exit here):
    /// spawns back to back through the server took 10–20 % longer with it.
    pub fn idle_timeout(&self, now: Instant) -> Option<Duration> {
        if self.shutting_down || self.warm_full() {
            return None;
        }
        let pause = self
            .warm_paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let asked_lately = now.saturating_duration_since(self.demand_at) < 2 * self.cfg.warm_idle;
        let idle = if asked_lately {
            self.cfg.warm_idle
        } else {
            self.cfg.warm_idle.max(QUIET_IDLE)
        };
        Some(idle.max(pause))
    }

    /// The server had no event for [`Handler::idle_timeout`]: forks one
    /// warm child if the pool is short (one per call, so that a request
    /// arriving meanwhile waits for one `fork` at most).
    pub fn on_idle(&mut self, os: &mut impl Os, now: Instant) {
        if self.shutting_down || self.warm_full() {
            return;
        }
        if self.warm_paused_until.is_some_and(|t| t > now) {
            return;
        }
        self.warm_paused_until = None;
        match os.fork_warm() {
            Ok(WarmChild { pid, link }) => {
                let pidfd = os.pidfd(pid);
                tracing::debug!(pid, "warm child forked");
                self.warm.push_back(WarmRec { pid, link, pidfd });
                self.grant_reservations();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not fork a warm child: refilling paused");
                self.warm_paused_until = Some(after_grace(WARM_PAUSE));
            }
        }
    }

    /// Takes the write end of a connection out, for a caller that writes.
    pub fn conn_fd(&self, conn: ConnId) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.conns
            .get(&conn)
            .and_then(|c| c.fd.as_ref())
            .map(|f| f.as_fd())
    }
}

/// An error reply to a request: its id (when the request had one decoded),
/// kind and message.
struct Refused {
    id: Option<u64>,
    kind: ErrorKind,
    message: String,
}

impl Refused {
    fn new(id: Option<u64>, kind: ErrorKind, message: impl Into<String>) -> Refused {
        Refused {
            id,
            kind,
            message: message.into(),
        }
    }
}

/// When a grace period that starts now ends (any `Duration` a config may
/// hold: one past what an `Instant` can represent is taken as 30 years).
fn after_grace(grace: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(grace)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// One slot per fd, distinct, none over [`MAX_SLOT`].
/// What every spawn must satisfy, whoever runs it (the server, or a warm
/// child sent a spawn by its client): the fds match their slots, which are
/// distinct and in range, and an `exec` names a program and `argv[0]`.
pub(crate) fn check_spawn(
    slots: &[u32],
    nfds: usize,
    action: &Action,
) -> Result<(), (ErrorKind, String)> {
    check_slots(slots, nfds)?;
    if let Action::Exec { program, argv } = action
        && (program.is_empty() || argv.is_empty())
    {
        return Err((
            ErrorKind::Malformed,
            "exec needs a program and argv[0]".into(),
        ));
    }
    Ok(())
}

fn check_slots(slots: &[u32], nfds: usize) -> Result<(), (ErrorKind, String)> {
    if slots.len() != nfds {
        return Err((
            ErrorKind::BadFds,
            format!("{} slots for {nfds} fds", slots.len()),
        ));
    }
    let mut sorted = slots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != slots.len() || sorted.last().is_some_and(|s| *s > MAX_SLOT) {
        return Err((
            ErrorKind::BadFds,
            format!("slots must be distinct and at most {MAX_SLOT}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the handler asked for; forks nothing.
    #[derive(Default)]
    struct MockOs {
        spawned: Vec<i32>,
        killed: Vec<(i32, i32)>,
        next_pid: i32,
        /// What a bulk memfd holds; `None`: no memfd can be read.
        bulk: Option<Vec<u8>>,
        /// The details of each spawn.
        details: Vec<SpawnDetails>,
        /// Warm children forked.
        warm: Vec<i32>,
        /// Warm children handed a request.
        handed: Vec<i32>,
        /// Make every handover fail.
        handover_fails: bool,
        /// What every reserved child's kick holds.
        kicked: Option<u64>,
    }

    impl Os for MockOs {
        fn spawn(&mut self, spec: SpawnPlan) -> io::Result<ForkedChild> {
            self.details.push(spec.details);
            self.next_pid += 1;
            let pid = 1000 + self.next_pid;
            self.spawned.push(pid);
            Ok(ForkedChild { pid, setup: None })
        }
        fn fork_warm(&mut self) -> io::Result<WarmChild> {
            self.next_pid += 1;
            let pid = 1000 + self.next_pid;
            self.warm.push(pid);
            let (sock, kick) = crate::sys::seqpacket_pair()?;
            Ok(WarmChild {
                pid,
                link: WarmLink { sock, kick },
            })
        }
        fn hand_over(
            &mut self,
            pid: i32,
            _link: WarmLink,
            spec: SpawnPlan,
        ) -> Result<ForkedChild, HandOverError> {
            if self.handover_fails {
                return Err(HandOverError::new(io::Error::other("refused"), spec));
            }
            self.details.push(spec.details);
            self.handed.push(pid);
            Ok(ForkedChild { pid, setup: None })
        }
        fn pidfd(&mut self, _pid: i32) -> Option<OwnedFd> {
            None
        }
        fn kicked(&mut self, _kick: &OwnedFd) -> Option<u64> {
            self.kicked
        }
        fn kill(&mut self, pid: i32, signal: i32) -> io::Result<()> {
            self.killed.push((pid, signal));
            Ok(())
        }
        fn socketpair(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
            crate::sys::seqpacket_pair()
        }
        type Bulk = Vec<u8>;
        fn map_memfd(&mut self, _fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
            match &self.bulk {
                Some(b) if b.len() == len => Ok(b.clone()),
                Some(b) => Err(io::Error::other(format!(
                    "holds {} bytes, {len} announced",
                    b.len()
                ))),
                None => Err(io::Error::other("no memfd in tests")),
            }
        }
    }

    fn replies(h: &mut Handler, conn: ConnId) -> Vec<Reply> {
        let c = h.conn_mut(conn).unwrap();
        c.out
            .drain(..)
            .map(|o| codec::decode(&o.bytes).unwrap())
            .collect()
    }

    /// A handler of the default configuration and its mock OS.
    fn fresh() -> (Handler, MockOs) {
        (Handler::new(HandlerConfig::default()), MockOs::default())
    }

    /// [`fresh`], with a connection that has said hello.
    fn greeted() -> (Handler, MockOs, ConnId) {
        let (mut h, mut os) = fresh();
        let a = h.add_conn(None, false);
        hello(&mut h, &mut os, a);
        (h, os, a)
    }

    /// The kind of an error reply; `None` for any other reply.
    fn error_kind(r: &Reply) -> Option<ErrorKind> {
        match r {
            Reply::Error { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    fn frame(h: &mut Handler, os: &mut MockOs, conn: ConnId, r: &Request) -> Effects {
        let b = codec::encode(r).unwrap();
        h.on_frame(os, conn, &b, false, false, Vec::new())
    }

    fn hello(h: &mut Handler, os: &mut MockOs, conn: ConnId) {
        frame(
            h,
            os,
            conn,
            &Request::Hello {
                version: PROTOCOL_VERSION,
                build: 0,
            },
        );
        assert!(matches!(replies(h, conn)[0], Reply::Hello { .. }));
    }

    fn spawn_req(id: u64, daemon: bool) -> Request {
        Request::Spawn(SpawnRequest {
            id,
            slots: vec![],
            daemon,
            payload: Payload::Inline(SpawnDetails {
                cwd: None,
                env: None,
                action: Action::Run { data: vec![] },
            }),
        })
    }

    #[test]
    fn request_before_hello_is_refused() {
        let (mut h, mut os) = fresh();
        let c = h.add_conn(None, false);
        frame(&mut h, &mut os, c, &Request::Ping { id: 1 });
        assert_eq!(
            error_kind(&replies(&mut h, c)[0]),
            Some(ErrorKind::Handshake)
        );
        assert!(os.spawned.is_empty());
    }

    #[test]
    fn version_mismatch_refused() {
        let (mut h, mut os) = fresh();
        let c = h.add_conn(None, false);
        frame(
            &mut h,
            &mut os,
            c,
            &Request::Hello {
                version: 99,
                build: 0,
            },
        );
        assert_eq!(
            replies(&mut h, c),
            vec![Reply::Refused(Refusal::Version {
                server: PROTOCOL_VERSION
            })]
        );
    }

    #[test]
    fn signal_only_own_children() {
        let (mut h, mut os) = fresh();
        let a = h.add_conn(None, false);
        let b = h.add_conn(None, false);
        hello(&mut h, &mut os, a);
        hello(&mut h, &mut os, b);
        frame(&mut h, &mut os, a, &spawn_req(1, false));
        let pid = match replies(&mut h, a)[0] {
            Reply::Spawned { pid, .. } => pid,
            ref r => panic!("{r:?}"),
        };
        frame(
            &mut h,
            &mut os,
            b,
            &Request::Signal {
                id: 2,
                pid,
                signal: 9,
            },
        );
        assert_eq!(
            error_kind(&replies(&mut h, b)[0]),
            Some(ErrorKind::NotYourChild)
        );
        assert!(os.killed.is_empty());
        frame(
            &mut h,
            &mut os,
            a,
            &Request::Signal {
                id: 3,
                pid,
                signal: 9,
            },
        );
        assert_eq!(replies(&mut h, a), vec![Reply::Done { id: 3 }]);
        assert_eq!(os.killed, vec![(pid, 9)]);
    }

    #[test]
    fn exit_reported_to_spawner_only() {
        let (mut h, mut os, a) = greeted();
        frame(&mut h, &mut os, a, &spawn_req(5, false));
        let pid = os.spawned[0];
        replies(&mut h, a);
        h.on_exit(&mut os, pid, WireStatus::Exited(3), Rusage::default());
        assert!(matches!(
            replies(&mut h, a)[0],
            Reply::Exited {
                id: 5,
                status: WireStatus::Exited(3),
                ..
            }
        ));
        assert_eq!(h.live_children(), 0);
    }

    #[test]
    fn daemons_terminated_then_killed_on_close() {
        let mut h = Handler::new(HandlerConfig {
            grace: Duration::ZERO,
            ..Default::default()
        });
        let mut os = MockOs::default();
        let a = h.add_conn(None, false);
        hello(&mut h, &mut os, a);
        frame(&mut h, &mut os, a, &spawn_req(1, true));
        frame(&mut h, &mut os, a, &spawn_req(2, false));
        let (d, n) = (os.spawned[0], os.spawned[1]);
        assert_eq!(h.on_close(&mut os, a), Effects::default());
        assert_eq!(os.killed, vec![(d, libc::SIGTERM)]);
        h.on_tick(&mut os, Instant::now() + Duration::from_millis(1));
        assert_eq!(os.killed, vec![(d, libc::SIGTERM), (d, libc::SIGKILL)]);
        assert!(!os.killed.iter().any(|(p, _)| *p == n));
    }

    #[test]
    fn root_close_shuts_down() {
        let (mut h, mut os) = fresh();
        let r = h.add_conn(None, true);
        assert!(h.on_close(&mut os, r).shutdown);
        assert!(h.shutting_down());
    }

    #[test]
    fn slots_must_match_fds() {
        let (mut h, mut os, a) = greeted();
        let mut req = spawn_req(1, false);
        if let Request::Spawn(s) = &mut req {
            s.slots = vec![0, 1];
        }
        frame(&mut h, &mut os, a, &req);
        assert_eq!(error_kind(&replies(&mut h, a)[0]), Some(ErrorKind::BadFds));
        assert!(os.spawned.is_empty());
    }

    #[test]
    fn bulk_length_that_lies_is_an_error_and_nothing_is_spawned() {
        let details = SpawnDetails {
            cwd: None,
            env: Some(vec![(b"BIG".to_vec(), vec![b'x'; 100_000])]),
            action: Action::Run { data: vec![1; 10] },
        };
        let body = codec::encode_limited(&details, MAX_BULK).unwrap();
        let mut h = Handler::new(HandlerConfig::default());
        let mut os = MockOs {
            bulk: Some(body.clone()),
            ..Default::default()
        };
        let a = h.add_conn(None, false);
        hello(&mut h, &mut os, a);
        let bulk_spawn = |h: &mut Handler, os: &mut MockOs, id: u64, len: usize| {
            let req = Request::Spawn(SpawnRequest {
                id,
                slots: vec![],
                daemon: false,
                payload: Payload::Memfd { len: len as u32 },
            });
            let memfd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
            let b = codec::encode(&req).unwrap();
            h.on_frame(os, a, &b, false, false, vec![memfd]);
        };
        for (id, len) in [(1, MAX_BULK), (2, body.len() - 1), (3, body.len() + 1)] {
            bulk_spawn(&mut h, &mut os, id, len);
            match &replies(&mut h, a)[..] {
                [
                    Reply::Error {
                        id: Some(got),
                        kind: ErrorKind::BadFds,
                        message,
                    },
                ] => {
                    assert_eq!(*got, id);
                    assert!(message.contains(&format!("{len} announced")), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(os.spawned.is_empty());
        // The truth gets its child, with every byte.
        bulk_spawn(&mut h, &mut os, 4, body.len());
        assert!(matches!(
            replies(&mut h, a)[..],
            [Reply::Spawned { id: 4, .. }]
        ));
        assert_eq!(os.details, vec![details]);
    }

    #[test]
    fn connections_are_capped() {
        let mut h = Handler::new(HandlerConfig::default());
        h.set_max_conns(3);
        let mut os = MockOs::default();
        let a = h.add_conn(None, true);
        hello(&mut h, &mut os, a);
        for id in 0..3 {
            frame(&mut h, &mut os, a, &Request::Connect { id });
        }
        let r = replies(&mut h, a);
        assert!(matches!(r[0], Reply::Connected { id: 0 }));
        assert!(matches!(r[1], Reply::Connected { id: 1 }));
        assert!(matches!(
            r[2],
            Reply::Error {
                id: Some(2),
                kind: ErrorKind::NotAllowed,
                ..
            }
        ));
    }

    fn warm_handler(n: usize) -> (Handler, MockOs, ConnId) {
        let mut h = Handler::new(HandlerConfig {
            warm: n,
            grace: Duration::ZERO,
            ..Default::default()
        });
        let mut os = MockOs::default();
        let a = h.add_conn(None, true);
        hello(&mut h, &mut os, a);
        (h, os, a)
    }

    fn spawned_pid(h: &mut Handler, conn: ConnId) -> i32 {
        match replies(h, conn)[..] {
            [Reply::Spawned { pid, .. }] => pid,
            ref r => panic!("{r:?}"),
        }
    }

    #[test]
    fn no_warm_children_when_off() {
        let (mut h, mut os, _) = warm_handler(0);
        assert_eq!(h.idle_timeout(Instant::now()), None);
        h.on_idle(&mut os, Instant::now());
        assert!(os.warm.is_empty());
    }

    #[test]
    fn the_refill_waits_longer_when_no_one_asked_lately() {
        let (mut h, mut os, a) = warm_handler(1);
        let start = Instant::now();
        // Asked at the start (a fresh server fills its pool soon).
        assert_eq!(h.idle_timeout(start), Some(WARM_IDLE));
        let later = start + 2 * WARM_IDLE;
        assert_eq!(h.idle_timeout(later), Some(QUIET_IDLE));
        // A reservation asked for (or claimed, or given back): soon again.
        frame(&mut h, &mut os, a, &Request::Reserve);
        let now = Instant::now();
        assert_eq!(h.idle_timeout(now), Some(WARM_IDLE));
        assert_eq!(h.idle_timeout(now + 2 * WARM_IDLE), Some(QUIET_IDLE));
    }

    #[test]
    fn pool_fills_one_per_idle_turn_and_serves_spawns_oldest_first() {
        let (mut h, mut os, a) = warm_handler(2);
        assert_eq!(h.idle_timeout(Instant::now()), Some(WARM_IDLE));
        h.on_idle(&mut os, Instant::now());
        assert_eq!(h.warm_children(), 1);
        h.on_idle(&mut os, Instant::now());
        assert_eq!(h.warm_children(), 2);
        // Full: no more wake-ups for the pool, no more forks.
        assert_eq!(h.idle_timeout(Instant::now()), None);
        h.on_idle(&mut os, Instant::now());
        assert_eq!(os.warm.len(), 2);
        // Requests go to warm children, oldest first, while there are any,
        // then to fresh forks; nothing refills between them.
        for _ in 0..3 {
            frame(&mut h, &mut os, a, &spawn_req(1, false));
        }
        let pids: Vec<i32> = replies(&mut h, a)
            .iter()
            .map(|r| match r {
                Reply::Spawned { pid, .. } => *pid,
                r => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(pids[..2], os.warm[..]);
        assert_eq!(os.handed, os.warm);
        assert_eq!(os.spawned, vec![pids[2]]);
        assert_eq!(h.warm_children(), 0);
        // A handed-over child is an ordinary child: its exit is reported.
        h.on_exit(&mut os, pids[0], WireStatus::Exited(0), Rusage::default());
        assert!(matches!(replies(&mut h, a)[..], [Reply::Exited { .. }]));
    }

    #[test]
    fn failed_handover_forks_instead_and_retires_the_warm_child() {
        let (mut h, mut os, a) = warm_handler(1);
        h.on_idle(&mut os, Instant::now());
        let warm = os.warm[0];
        os.handover_fails = true;
        frame(&mut h, &mut os, a, &spawn_req(1, false));
        let pid = spawned_pid(&mut h, a);
        assert_eq!(os.spawned, vec![pid]);
        assert_eq!(os.killed, vec![(warm, libc::SIGKILL)]);
        // Its exit is nobody's business and does not count as unused death.
        h.on_exit(
            &mut os,
            warm,
            WireStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
            Rusage::default(),
        );
        assert!(replies(&mut h, a).is_empty());
        assert_eq!(h.warm_deaths, 0);
    }

    #[test]
    fn warm_children_that_keep_dying_unused_pause_the_refill() {
        let (mut h, mut os, a) = warm_handler(1);
        for _ in 0..WARM_DEATHS {
            h.on_idle(&mut os, Instant::now());
            let pid = *os.warm.last().unwrap();
            h.on_exit(&mut os, pid, WireStatus::Exited(101), Rusage::default());
            assert!(replies(&mut h, a).is_empty());
        }
        let now = Instant::now();
        assert!(h.idle_timeout(now).unwrap() > WARM_PAUSE / 2);
        h.on_idle(&mut os, now);
        assert_eq!(os.warm.len(), WARM_DEATHS as usize);
        // After the pause, refilling resumes.
        h.on_idle(&mut os, now + WARM_PAUSE + Duration::from_millis(1));
        assert_eq!(h.warm_children(), 1);
    }

    /// A handler with one warm child reserved for a second connection
    /// (`b`, which asked); `a` is the root. Returns the reserved pid.
    fn reserved_handler() -> (Handler, MockOs, ConnId, ConnId, i32) {
        let (mut h, mut os, a) = warm_handler(1);
        let b = h.add_conn(None, false);
        hello(&mut h, &mut os, b);
        frame(&mut h, &mut os, b, &Request::Reserve);
        // Nothing to give yet: the reservation waits for the refill.
        assert!(replies(&mut h, b).is_empty());
        h.on_idle(&mut os, Instant::now());
        let pid = os.warm[0];
        let c = h.conn_mut(b).unwrap();
        let out = c.out.pop_front().unwrap();
        assert_eq!(out.fds.len(), 2, "socket and kick (no pidfd here)");
        let r: Reply = codec::decode(&out.bytes).unwrap();
        assert_eq!(r, Reply::Reserved { pid, pidfd: false });
        assert_eq!((h.warm_children(), h.reserved_children()), (0, 1));
        // The reservation counts towards the pool: nothing more to fork.
        assert_eq!(h.idle_timeout(Instant::now()), None);
        (h, os, a, b, pid)
    }

    #[test]
    fn a_claimed_reservation_is_an_ordinary_child_reported_under_the_claim() {
        let (mut h, mut os, _a, b, pid) = reserved_handler();
        let claim = Request::Claim {
            id: 7,
            pid,
            daemon: false,
        };
        frame(&mut h, &mut os, b, &claim);
        assert_eq!(h.live_children(), 1);
        assert_eq!(h.reserved_children(), 0);
        // Signals are allowed for it now, and its exit is reported.
        frame(
            &mut h,
            &mut os,
            b,
            &Request::Signal {
                id: 8,
                pid,
                signal: 15,
            },
        );
        h.on_exit(&mut os, pid, WireStatus::Exited(3), Rusage::default());
        let r = replies(&mut h, b);
        assert!(matches!(r[0], Reply::Done { id: 8 }), "{r:?}");
        assert!(
            matches!(r[1], Reply::Exited { id: 7, pid: p, status: WireStatus::Exited(3), .. } if p == pid),
            "{r:?}"
        );
        // The connection still wants one: the next refill is reserved too.
        h.on_idle(&mut os, Instant::now());
        assert!(matches!(replies(&mut h, b)[..], [Reply::Reserved { .. }]));
        // A second claim of the same pid is refused.
        frame(&mut h, &mut os, b, &claim);
        assert_eq!(
            error_kind(&replies(&mut h, b)[0]),
            Some(ErrorKind::NotYourChild)
        );
    }

    #[test]
    fn a_closed_connection_waits_for_no_reservation() {
        let (mut h, mut os, _a) = warm_handler(0);
        for _ in 0..3 {
            let b = h.add_conn(None, false);
            hello(&mut h, &mut os, b);
            frame(&mut h, &mut os, b, &Request::Reserve);
            // Asking twice queues it once.
            frame(&mut h, &mut os, b, &Request::Reserve);
            assert_eq!(h.want_warm.iter().filter(|c| **c == b).count(), 1);
            h.on_close(&mut os, b);
        }
        assert!(h.want_warm.is_empty());
    }

    #[test]
    fn a_reserved_child_dead_before_its_claim_is_still_reported() {
        let (mut h, mut os, a, b, pid) = reserved_handler();
        // Only the connection it is reserved for can claim it.
        let claim = |id| Request::Claim {
            id,
            pid,
            daemon: false,
        };
        frame(&mut h, &mut os, a, &claim(1));
        assert_eq!(
            error_kind(&replies(&mut h, a)[0]),
            Some(ErrorKind::NotYourChild)
        );
        let killed = WireStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        h.on_exit(&mut os, pid, killed, Rusage::default());
        assert_eq!(h.reserved_children(), 0);
        frame(&mut h, &mut os, b, &claim(2));
        assert!(
            matches!(replies(&mut h, b)[..], [Reply::Exited { id: 2, status, .. }] if status == killed)
        );
        // Once.
        frame(&mut h, &mut os, b, &claim(3));
        assert_eq!(
            error_kind(&replies(&mut h, b)[0]),
            Some(ErrorKind::NotYourChild)
        );
    }

    #[test]
    fn an_unclaimed_reservation_at_close_is_judged_by_its_kick() {
        for (kicked, killed, live) in [
            (None, vec![libc::SIGKILL], 0),
            (Some(kick::AWAY), vec![libc::SIGKILL], 0),
            (Some(kick::SPAWN), vec![], 1),
            (Some(kick::DAEMON), vec![libc::SIGTERM], 1),
        ] {
            let (mut h, mut os, _a, b, pid) = reserved_handler();
            os.kicked = kicked;
            h.on_close(&mut os, b);
            let sigs: Vec<i32> = os.killed.iter().map(|(_, s)| *s).collect();
            assert_eq!(sigs, killed, "{kicked:?}");
            assert!(os.killed.iter().all(|(p, _)| *p == pid));
            assert_eq!(h.live_children(), live, "{kicked:?}");
            assert_eq!(h.reserved_children(), 0);
            // Reaped quietly either way; the pool refills for others.
            h.on_exit(&mut os, pid, WireStatus::Exited(0), Rusage::default());
            assert_eq!(h.live_children(), 0);
            assert_eq!(h.idle_timeout(Instant::now()), Some(WARM_IDLE));
        }
    }

    #[test]
    fn shutdown_judges_reservations_by_their_kicks() {
        for (kicked, survives) in [(Some(kick::SPAWN), true), (None, false)] {
            let (mut h, mut os, a, _b, reserved) = reserved_handler();
            os.kicked = kicked;
            assert!(h.on_close(&mut os, a).shutdown);
            // Handed a spawn, it runs on as any non-daemonic child does;
            // never kicked, it is killed and its reap awaited.
            assert_eq!(!os.killed.iter().any(|(p, _)| *p == reserved), survives);
            assert_eq!(h.has_pending_kills(), !survives);
            assert_eq!(h.reserved_children(), 0);
        }
    }

    #[test]
    fn shutdown_kills_and_waits_for_warm_children() {
        let (mut h, mut os, a) = warm_handler(2);
        h.on_idle(&mut os, Instant::now());
        h.on_idle(&mut os, Instant::now());
        assert!(h.on_close(&mut os, a).shutdown);
        let mut killed = os.killed.clone();
        killed.sort_unstable();
        assert_eq!(
            killed,
            os.warm
                .iter()
                .map(|p| (*p, libc::SIGKILL))
                .collect::<Vec<_>>()
        );
        assert!(h.has_pending_kills());
        assert_eq!(h.idle_timeout(Instant::now()), None);
        for pid in os.warm.clone() {
            h.on_exit(
                &mut os,
                pid,
                WireStatus::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
                Rusage::default(),
            );
        }
        assert!(!h.has_pending_kills());
        assert_eq!(h.live_children(), 0);
    }

    #[test]
    fn queue_overflow_marks_connection() {
        let mut h = Handler::new(HandlerConfig {
            max_queued: 4,
            ..Default::default()
        });
        let mut os = MockOs::default();
        let a = h.add_conn(None, false);
        hello(&mut h, &mut os, a);
        for i in 0..10 {
            frame(&mut h, &mut os, a, &Request::Ping { id: i });
        }
        assert!(h.conn_mut(a).unwrap().overflowed);
    }
}
