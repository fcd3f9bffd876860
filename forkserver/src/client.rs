//! The client side: connections, spawn commands and child handles.
//!
//! A [`ServerConnection`] is shared by any number of threads. Sending needs no lock:
//! each frame is one `sendmsg` on a `SOCK_SEQPACKET` socket, which the kernel
//! delivers whole or not at all, so frames of different threads never
//! interleave. Receiving uses a leader/follower scheme: a thread that waits
//! for a reply becomes the reader if nobody is, reads whatever frames are
//! there, files each under the request id or child pid it answers, and wakes
//! the others; a waiter whose answer is already filed returns at once. A
//! single-threaded user therefore pays no thread hand-off on any round trip.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::codec;
use crate::error::{Error, Result};
use crate::protocol::{
    Action, ErrorKind, MAX_FDS, MAX_FRAME, PROTOCOL_VERSION, Payload, Refusal, Reply, Request,
    Rusage, SpawnDetails, SpawnRequest, ToWarm, WarmSpawn, WireStatus, kick,
};
use crate::sys;

/// How a child ended, with the resources it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    status: WireStatus,
    rusage: Rusage,
}

impl ExitStatus {
    /// Builds a status (for embedders that make their own children).
    pub fn new(status: WireStatus, rusage: Rusage) -> Self {
        ExitStatus { status, rusage }
    }

    /// The exit code, when the child called `exit`.
    pub fn code(&self) -> Option<i32> {
        match self.status {
            WireStatus::Exited(c) => Some(c),
            WireStatus::Signaled { .. } => None,
        }
    }

    /// The signal that ended the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.status {
            WireStatus::Signaled { signal, .. } => Some(signal),
            WireStatus::Exited(_) => None,
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// Python's `Process.exitcode`: the code, or `-N` for signal `N`.
    pub fn exitcode(&self) -> i32 {
        match self.status {
            WireStatus::Exited(c) => c,
            WireStatus::Signaled { signal, .. } => -signal,
        }
    }

    /// The raw status.
    pub fn status(&self) -> WireStatus {
        self.status
    }

    /// CPU time and peak memory of the child.
    pub fn rusage(&self) -> Rusage {
        self.rusage
    }
}

#[derive(Default)]
struct State {
    reading: bool,
    gone: Option<String>,
    replies: HashMap<u64, (Reply, Vec<OwnedFd>)>,
    /// Exit reports by the id of the spawn request (unique per connection,
    /// unlike pids, which the kernel recycles).
    exits: HashMap<u64, ExitStatus>,
    /// Spawn ids whose `Child` was dropped before its exit report arrived.
    detached: HashSet<u64>,
    /// Threads waiting on the condition variable for the reader.
    waiters: usize,
    /// `Reserve` has been sent: the server sends a warm child when it has one.
    reserve_asked: bool,
    /// When a spawn request last left (see [`QUIET_BEFORE_REFILL`]).
    last_spawn_sent: Option<Instant>,
    /// The warm child reserved for this connection, not yet used.
    reserved: Option<Reservation>,
    /// The reservation the last spawn used, its fds closed with the next
    /// flush of the claims (closing them while the child starts would
    /// delay it).
    spent: Option<Reservation>,
    /// Claims of spawns sent straight to a reserved child (and releases of
    /// reservations that arrived unusable), not yet sent to the server:
    /// they go before the next request or wait.
    claims: Vec<Request>,
}

/// A warm child the server reserved for this connection
/// ([`Reply::Reserved`]): a spawn goes straight to it. Dropped unused, it
/// sends the child away.
struct Reservation {
    pid: i32,
    /// Our end of the child's socket (the only one: the server kept none).
    sock: OwnedFd,
    /// The eventfd the child waits on.
    kick: OwnedFd,
    pidfd: Option<OwnedFd>,
    /// A spawn went to the child.
    used: bool,
}

impl Reservation {
    /// Sends the child its spawn (one frame with `fds`), then kicks it: the
    /// kick wakes it, and its count tells the server, should we die before
    /// our claim, what the child was sent.
    fn start(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        daemon: bool,
    ) -> std::result::Result<(), Unsent> {
        sys::send_frame(self.sock.as_fd(), bytes, fds, true).map_err(Unsent::NotSent)?;
        self.used = true;
        let what = if daemon { kick::DAEMON } else { kick::SPAWN };
        sys::kick(self.kick.as_fd(), what).map_err(Unsent::NotKicked)
    }
}

/// Why [`Reservation::start`] started nothing.
enum Unsent {
    /// The frame did not go: the child is gone (killed, or its warm-up
    /// failed) and the server reaps it.
    NotSent(std::io::Error),
    /// The frame is there but the kick failed (an eventfd write cannot,
    /// short of a full counter): the child never starts, and the server,
    /// its parent, is asked to kill it.
    NotKicked(std::io::Error),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            // Kicked with nothing on its socket (closed with us), it exits.
            let _ = sys::kick(self.kick.as_fd(), kick::AWAY);
        }
    }
}

/// A server refills its warm children only after this long without an
/// event (its `warm_idle`): a reservation cannot follow a spawn request of
/// ours sooner. (Were a server's idle time shorter, a spawn would only miss
/// a reservation and fork afresh.)
const QUIET_BEFORE_REFILL: Duration = crate::server::handler::WARM_IDLE;

/// What [`ServerConnection::spawn_reserved`] did.
enum Direct {
    /// The spawn went to the reserved child (or failed for good).
    Done(std::result::Result<Child, (Error, bool)>),
    /// No reserved child could take it: these details go to the server.
    Fallback(SpawnDetails),
}

pub(crate) struct Inner {
    sock: OwnedFd,
    server_pid: i32,
    owner: u32,
    next_id: AtomicU64,
    state: Mutex<State>,
    cv: Condvar,
    /// Receive buffer of the reading thread: a whole frame, so that no
    /// reply the server may send is ever truncated (and its waiter lost).
    buf: Mutex<Vec<u8>>,
    /// What a child inherits from the server when a request sends no cwd
    /// or environment (told in the handshake).
    base: ServerBase,
    /// The server has a child entry (told in the handshake).
    server_entry: bool,
    /// The server keeps warm children (told in the handshake).
    server_warm: bool,
}

/// The server's own cwd and environment, as its handshake told them.
#[derive(Debug, Default)]
struct ServerBase {
    cwd: Option<Vec<u8>>,
    cwd_id: Option<(u64, u64)>,
    /// The server's cwd as this process reaches it by its path (device,
    /// inode, mount id: [`sys::dir_identity`]), when that is the directory
    /// the server told: a requester whose own cwd answers the same is in
    /// it, which one `statx` tells (no `getcwd`).
    cwd_here: Option<(u64, u64, u64)>,
    /// Each `KEY=VALUE` entry of the server's environment and its index;
    /// `None` when the server did not send it.
    env: Option<HashMap<Vec<u8>, usize>>,
    /// The same entries in the server's order: an environment inherited
    /// unchanged has them in this order, which a walk compares without
    /// hashing.
    env_ordered: Vec<Vec<u8>>,
}

impl ServerBase {
    /// `cwd` unless the server's is the same: the same path, still naming
    /// the same directory (`id`, the device and inode `cwd` names now).
    fn cwd_unless_same(&self, cwd: Vec<u8>, id: Option<(u64, u64)>) -> Option<Vec<u8>> {
        let same = self.cwd.as_deref() == Some(&cwd[..]) && id.is_some() && id == self.cwd_id;
        (!same).then_some(cwd)
    }

    /// The server's environment as the handshake tells it (`pairs`).
    fn new(
        cwd: Option<Vec<u8>>,
        cwd_id: Option<(u64, u64)>,
        pairs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Self {
        let env_ordered: Vec<Vec<u8>> = pairs
            .iter()
            .flatten()
            .map(|(k, v)| [&k[..], b"=", &v[..]].concat())
            .collect();
        let env = pairs.map(|_| {
            env_ordered
                .iter()
                .enumerate()
                .map(|(i, e)| (e.clone(), i))
                .collect()
        });
        let cwd_here = cwd
            .as_deref()
            .and_then(|c| std::ffi::CString::new(c).ok())
            .and_then(|c| sys::dir_identity(&c))
            .filter(|&(dev, ino, _)| Some((dev, ino)) == cwd_id);
        ServerBase {
            cwd,
            cwd_id,
            cwd_here,
            env,
            env_ordered,
        }
    }

    /// Whether this process's cwd is the server's, told by one `statx`;
    /// `false` when that cannot tell (then the path is compared).
    fn in_server_cwd(&self) -> bool {
        self.cwd_here.is_some() && sys::dir_identity(c".") == self.cwd_here
    }

    /// Whether the `KEY=VALUE` entries that `walk` hands to its callback
    /// (stopping when it says no) are exactly the server's environment:
    /// each entry one of the server's, none twice, none missing.
    fn same_env_by(&self, walk: impl FnOnce(&mut dyn FnMut(&[u8]) -> bool) -> bool) -> bool {
        /// Environments bigger than this are always sent (the bitset of
        /// entries seen lives on the stack).
        const MAX_VARS: usize = 1024;
        let Some(base) = &self.env else {
            return false;
        };
        if base.len() > MAX_VARS {
            return false;
        }
        let mut seen = [0u64; MAX_VARS / 64];
        let mut n = 0;
        let all = walk(&mut |entry| {
            let Some(&i) = base.get(entry) else {
                return false;
            };
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if seen[word] & bit != 0 {
                return false;
            }
            seen[word] |= bit;
            n += 1;
            true
        });
        all && n == base.len()
    }

    /// Whether this process's own environment, read in place (nothing
    /// copied), is the server's.
    fn env_is_ours(&self) -> bool {
        self.env_in_order() || self.same_env_by(|f| sys::environ_all(f))
    }

    /// Whether this process's environment holds exactly the server's
    /// entries in the server's order, as one inherited unchanged since the
    /// server was launched from it does (no hashing).
    fn env_in_order(&self) -> bool {
        if self.env.is_none() {
            return false;
        }
        let mut i = 0;
        let in_order = sys::environ_all(&mut |entry| {
            let same = self.env_ordered.get(i).is_some_and(|e| e[..] == *entry);
            i += 1;
            same
        });
        in_order && i == self.env_ordered.len()
    }

    /// `env` unless the server's is the same (as a set of variables).
    fn env_unless_same(&self, env: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut entry = Vec::new();
        let same = self.same_env_by(|f| {
            env.iter().all(|(k, v)| {
                entry.clear();
                entry.extend_from_slice(k);
                entry.push(b'=');
                entry.extend_from_slice(v);
                f(&entry)
            })
        });
        (!same).then_some(env)
    }
}

/// One protocol connection to a fork server. Cheap to clone; every clone
/// shares the socket. Usable from many threads at once.
#[derive(Clone)]
pub struct ServerConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("fd", &self.inner.sock.as_raw_fd())
            .field("server_pid", &self.inner.server_pid)
            .finish()
    }
}

impl AsFd for ServerConnection {
    /// The connection's socket (for bookkeeping such as closing an inherited
    /// copy after `fork`; sending or receiving on it directly breaks the
    /// protocol).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.sock.as_fd()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServerConnection {
    /// Performs the handshake on a connected socket (one end of a pair whose
    /// other end a server serves).
    ///
    /// # Errors
    /// [`Error::ServerThreads`], [`Error::VersionMismatch`] or
    /// [`Error::BuildMismatch`] when the server refuses; [`Error::Timeout`]
    /// when it does not answer within `timeout`; [`Error::ServerGone`] on EOF.
    pub fn handshake(sock: OwnedFd, timeout: Duration) -> Result<ServerConnection> {
        let inner = Arc::new(Inner {
            sock,
            server_pid: 0,
            owner: std::process::id(),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            buf: Mutex::new(vec![0u8; MAX_FRAME + 1]),
            base: ServerBase::default(),
            server_entry: false,
            server_warm: false,
        });
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            build: sys::exe_identity(),
        };
        let bytes = codec::encode(&hello)?;
        sys::send_frame(inner.sock.as_fd(), &bytes, &[], false).map_err(Error::from_send)?;
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(inner.sock.as_fd(), Some(left))? {
                return Err(Error::Timeout);
            }
            let r = sys::recv_frame(inner.sock.as_fd(), &mut buf, true);
            let r = match r {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => other?,
            };
            if r.len == 0 {
                return Err(Error::ServerGone("closed during the handshake".into()));
            }
            let reply: Reply = codec::decode(&buf[..r.len.min(MAX_FRAME)])?;
            return match reply {
                Reply::Hello {
                    version,
                    server_pid,
                    cwd,
                    cwd_id,
                    env,
                    entry,
                    warm,
                    ..
                } if version == PROTOCOL_VERSION => {
                    let mut inner = Arc::into_inner(inner).expect("not shared yet");
                    inner.server_pid = server_pid;
                    inner.server_entry = entry;
                    inner.server_warm = warm > 0;
                    inner.base = ServerBase::new(cwd, cwd_id, env);
                    Ok(ServerConnection {
                        inner: Arc::new(inner),
                    })
                }
                Reply::Hello { version, .. } => Err(Error::VersionMismatch {
                    client: PROTOCOL_VERSION,
                    server: version,
                }),
                Reply::Refused(Refusal::Threads { threads }) => {
                    Err(Error::ServerThreads { threads })
                }
                Reply::Refused(Refusal::Version { server }) => Err(Error::VersionMismatch {
                    client: PROTOCOL_VERSION,
                    server,
                }),
                Reply::Refused(Refusal::Build { .. }) => Err(Error::BuildMismatch),
                other => Err(Error::Protocol(format!(
                    "unexpected handshake reply {other:?}"
                ))),
            };
        }
    }

    /// The server's pid.
    pub fn server_pid(&self) -> i32 {
        self.inner.server_pid
    }

    /// Whether the server has been seen to go away.
    pub fn is_gone(&self) -> bool {
        lock(&self.inner.state).gone.is_some()
    }

    /// Forks a child as `cmd` says and returns once it is set up.
    ///
    /// # Errors
    /// [`Error::SpawnFailed`] when `fork`, `chdir` or `exec` failed in the
    /// server or child; [`Error::ServerGone`] when the server died.
    pub fn spawn(&self, cmd: &Command<'_>) -> Result<Child> {
        self.spawn_attempt(cmd).map_err(|(e, _)| e)
    }

    /// [`ServerConnection::spawn`], also saying whether the request reached the
    /// socket: a request that never left may be retried on a new server,
    /// one in flight when the server died may already have forked a child.
    pub(crate) fn spawn_attempt(
        &self,
        cmd: &Command<'_>,
    ) -> std::result::Result<Child, (Error, bool)> {
        let unsent = |e: Error| (e, false);
        let id = self.start_request().map_err(unsent)?;
        let details = cmd.details(&self.inner.base).map_err(unsent)?;
        let details = match self.spawn_reserved(id, cmd, details) {
            Direct::Done(outcome) => return outcome,
            Direct::Fallback(details) => details,
        };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut slots = Vec::new();
        for (fd, slot) in cmd.all_fds() {
            fds.push(fd);
            slots.push(slot);
        }
        let req = SpawnRequest {
            id,
            slots,
            daemon: cmd.daemon,
            payload: Payload::Inline(details),
        };
        let bulk;
        let req = Request::Spawn(req);
        let bytes = match codec::encode(&req) {
            Ok(b) => b,
            Err(codec::CodecError::TooLarge { .. }) => {
                let Request::Spawn(mut req) = req else {
                    unreachable!("built as a spawn request above")
                };
                let Payload::Inline(details) = &req.payload else {
                    unreachable!("payload is inline before this point")
                };
                let body = codec::encode_limited(details, crate::protocol::MAX_BULK)
                    .map_err(|e| unsent(e.into()))?;
                bulk =
                    sys::sealed_memfd("forkserver-spawn", &body).map_err(|e| unsent(e.into()))?;
                req.payload = Payload::Memfd {
                    len: body.len() as u32,
                };
                fds.push(bulk.as_fd());
                codec::encode(&Request::Spawn(req)).map_err(|e| unsent(e.into()))?
            }
            Err(e) => return Err(unsent(e.into())),
        };
        if fds.len() > MAX_FDS {
            return Err(unsent(Error::TooManyFds { count: fds.len() }));
        }
        self.inner.flush_claims().map_err(unsent)?;
        sys::send_frame(self.inner.sock.as_fd(), &bytes, &fds, false)
            .map_err(|e| unsent(self.inner.sent_failed(e)))?;
        lock(&self.inner.state).last_spawn_sent = Some(Instant::now());
        let (reply, mut rfds) = self.wait_reply(id).map_err(|e| (e, true))?;
        // A connection that spawns (whether or not this one worked) keeps a
        // warm child reserved from now on.
        self.ask_for_reservations();
        match reply {
            Reply::Spawned { pid, pidfd, .. } => {
                let pidfd = if pidfd { rfds.pop() } else { None };
                tracing::debug!(pid, "spawned through the fork server");
                Ok(Child {
                    inner: self.inner.clone(),
                    id,
                    pid,
                    pidfd,
                    status: None,
                })
            }
            other => Err((self.unexpected(other), true)),
        }
    }

    /// Sends `details` straight to the warm child the server reserved for
    /// this connection, if it has one and the spawn fits in a frame, then
    /// tells the server whose child it now is (`Claim`): the server is not
    /// on the way to the child. A set-up that can fail (a `chdir`, an
    /// `exec`) is confirmed by the child as it would be to the server.
    fn spawn_reserved(&self, id: u64, cmd: &Command<'_>, details: SpawnDetails) -> Direct {
        if matches!(details.action, Action::Run { .. }) && !self.inner.server_entry {
            return Direct::Fallback(details);
        }
        let Some(r) = self.take_reservation() else {
            return Direct::Fallback(details);
        };
        let (fds, slots): (Vec<BorrowedFd<'_>>, Vec<u32>) = cmd.all_fds().into_iter().unzip();
        let confirm = details.cwd.is_some() || matches!(details.action, Action::Exec { .. });
        let msg = ToWarm::Spawn(WarmSpawn {
            slots,
            details,
            confirm,
        });
        let take_back = |msg: ToWarm| match msg {
            ToWarm::Spawn(w) => w.details,
            ToWarm::Handover(_) => unreachable!("built as a spawn above"),
        };
        let bytes = match codec::encode(&msg) {
            Ok(b) if fds.len() <= MAX_FDS => b,
            // Too large for a frame, or too many fds: the server's path
            // (a bulk payload, or the error) for this one; the child waits on.
            _ => {
                lock(&self.inner.state).reserved.get_or_insert(r);
                return Direct::Fallback(take_back(msg));
            }
        };
        let mut r = r;
        match r.start(&bytes, &fds, cmd.daemon) {
            Ok(()) => {}
            // Gone: the server reaps it and reserves the next one; this
            // spawn forks afresh.
            Err(Unsent::NotSent(e)) => {
                tracing::debug!(pid = r.pid, error = %e, "reserved warm child gone: forking instead");
                return Direct::Fallback(take_back(msg));
            }
            // Not kicked: the server kills it, and this spawn forks afresh.
            Err(Unsent::NotKicked(e)) => {
                tracing::debug!(pid = r.pid, error = %e, "reserved warm child not kicked: forking instead");
                lock(&self.inner.state)
                    .claims
                    .push(Request::Release { pid: r.pid });
                return Direct::Fallback(take_back(msg));
            }
        }
        let (pid, pidfd) = (r.pid, r.pidfd.take());
        let claim = Request::Claim {
            id,
            pid,
            daemon: cmd.daemon,
        };
        // The claim waits for our next request or wait: sent now, it would
        // wake the server while the child starts, and a server (or child)
        // woken on this CPU can make us wait for a scheduler tick (p99 of
        // `start()` of a computing child 2.7–5.2 ms with it sent here, 0.09 ms
        // deferred). A claim older than this one goes now, so that no more
        // than one is ever pending (and the fds of its reservation close).
        let (older, older_spent) = {
            let mut st = lock(&self.inner.state);
            let older = std::mem::take(&mut st.claims);
            st.claims.push(claim);
            (older, st.spent.take())
        };
        drop(older_spent);
        if let Err(e) = self.inner.send_claims(older) {
            return Direct::Done(Err((e, true)));
        }
        tracing::debug!(pid, "spawned on a reserved warm child");
        let child = Child {
            inner: self.inner.clone(),
            id,
            pid,
            pidfd,
            status: None,
        };
        if confirm && let Some(report) = setup_report(r.sock.as_fd()) {
            // The child exits; dropping the handle forgets its exit report.
            drop(child);
            return Direct::Done(Err((
                Error::from_reply(ErrorKind::SpawnFailed, report),
                true,
            )));
        }
        // Its fds are closed with the claim, not while the child starts.
        lock(&self.inner.state).spent = Some(r);
        Direct::Done(Ok(child))
    }

    /// The reserved warm child, if one has arrived. The socket is looked at
    /// (without waiting) even with one in hand: a server that died since is
    /// found here, at its end of file, before a spawn goes to a warm child
    /// about to die with it (the spawn then relaunches the server, as any
    /// spawn that finds it gone before its request leaves).
    fn take_reservation(&self) -> Option<Reservation> {
        {
            let st = lock(&self.inner.state);
            // None in hand and our last spawn request too recent for the
            // server to have refilled since: nothing to look for (spawns
            // back to back then make no extra system call).
            let too_soon = st
                .last_spawn_sent
                .is_some_and(|t| t.elapsed() < QUIET_BEFORE_REFILL);
            if !st.reserve_asked || (st.reserved.is_none() && too_soon) {
                return None;
            }
        }
        let mut looked = false;
        self.inner
            .wait_until(Some(Instant::now()), |st| {
                if !std::mem::replace(&mut looked, true) || st.gone.is_some() {
                    return None;
                }
                st.reserved.take()
            })
            .ok()
            .flatten()
    }

    /// After this connection's first spawn: asks the server to keep a warm
    /// child reserved for it from now on (a server that keeps none is not
    /// asked).
    fn ask_for_reservations(&self) {
        if !self.inner.server_warm {
            return;
        }
        let mut st = lock(&self.inner.state);
        if std::mem::replace(&mut st.reserve_asked, true) {
            return;
        }
        drop(st);
        let _ = self.send(&Request::Reserve);
    }

    /// Waits until a warm child is reserved for this connection (`true`),
    /// or `timeout` passes (`false`); `false` at once when none will be: the
    /// server keeps no warm children, or this connection has not spawned
    /// yet (it asks for reservations after its first spawn).
    ///
    /// A reservation holds three fds in this process (the child's socket,
    /// its kick, its pidfd), received whenever the server refills its pool;
    /// a spawn that uses it keeps the pidfd in its [`Child`] and closes the
    /// other two with the connection's next request or wait: a program that
    /// counts its fds (a leak test) counts them at a point this makes the
    /// same each time.
    ///
    /// # Errors
    /// [`Error::ServerGone`] when the server died.
    pub fn wait_reserved(&self, timeout: Duration) -> Result<bool> {
        if !self.inner.server_warm || !lock(&self.inner.state).reserve_asked {
            return Ok(false);
        }
        let deadline = Instant::now() + timeout;
        let got = self
            .inner
            .wait_until(Some(deadline), |st| st.reserved.is_some().then_some(()))?;
        Ok(got.is_some())
    }

    /// Opens a new connection to the same server (for another thread or for
    /// a child process). Closing it kills the daemonic children it spawned.
    ///
    /// # Errors
    /// As for any request.
    pub fn connect(&self) -> Result<ServerConnection> {
        let id = self.start_request()?;
        self.send(&Request::Connect { id })?;
        let (reply, mut fds) = self.wait_reply(id)?;
        match reply {
            Reply::Connected { .. } => {
                let sock = fds
                    .pop()
                    .ok_or_else(|| Error::Protocol("Connected without an fd".into()))?;
                ServerConnection::handshake(sock, Duration::from_secs(10))
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// Round trip to the server.
    ///
    /// # Errors
    /// As for any request.
    pub fn ping(&self) -> Result<Duration> {
        let t = Instant::now();
        let id = self.start_request()?;
        self.send(&Request::Ping { id })?;
        match self.wait_reply(id)?.0 {
            Reply::Pong { .. } => Ok(t.elapsed()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Asks the server to stop (root connection only): daemonic children are
    /// terminated, the server exits.
    ///
    /// # Errors
    /// [`Error::Server`] with `NotAllowed` on a non-root connection.
    pub fn shutdown(&self) -> Result<()> {
        self.shutdown_deadline(None)
    }

    /// [`ServerConnection::shutdown`], giving up on the acknowledgement after
    /// `timeout` ([`Error::Timeout`]); the request itself has been sent.
    ///
    /// # Errors
    /// As [`ServerConnection::shutdown`], and [`Error::Timeout`].
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<()> {
        self.shutdown_deadline(Some(Instant::now() + timeout))
    }

    fn shutdown_deadline(&self, deadline: Option<Instant>) -> Result<()> {
        let id = match self.start_request() {
            Err(Error::ServerGone(_)) => return Ok(()),
            other => other?,
        };
        match self.send(&Request::Shutdown { id }) {
            Err(Error::ServerGone(_)) => return Ok(()),
            other => other?,
        }
        match self.inner.wait_until(deadline, |st| st.replies.remove(&id)) {
            Ok(Some((Reply::Done { .. }, _))) | Err(Error::ServerGone(_)) => Ok(()),
            Ok(Some((other, _))) => Err(self.unexpected(other)),
            Ok(None) => Err(Error::Timeout),
            Err(e) => Err(e),
        }
    }

    /// Sends one request frame as is; its reply is filed like any other (for
    /// protocol tests and tools; see also [`raw`]).
    #[cfg(feature = "internals")]
    pub fn raw_request(&self, req: &Request) -> Result<()> {
        self.send(req)
    }

    /// Opens a new connection and returns its socket before any handshake,
    /// for protocol tests that want to speak to the server byte by byte (see
    /// [`raw`]).
    ///
    /// # Errors
    /// As for any request.
    #[cfg(feature = "internals")]
    pub fn connect_raw(&self) -> Result<OwnedFd> {
        let id = self.start_request()?;
        self.send(&Request::Connect { id })?;
        let (reply, mut fds) = self.wait_reply(id)?;
        match reply {
            Reply::Connected { .. } => fds
                .pop()
                .ok_or_else(|| Error::Protocol("Connected without an fd".into())),
            other => Err(self.unexpected(other)),
        }
    }

    /// A fresh request id (for [`ServerConnection::raw_request`] users).
    #[cfg(feature = "internals")]
    pub fn next_id(&self) -> u64 {
        self.fresh_id()
    }

    fn fresh_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn start_request(&self) -> Result<u64> {
        if std::process::id() != self.inner.owner {
            return Err(Error::Forked);
        }
        if let Some(why) = &lock(&self.inner.state).gone {
            return Err(Error::ServerGone(why.clone()));
        }
        Ok(self.fresh_id())
    }

    fn send(&self, req: &Request) -> Result<()> {
        self.inner.flush_claims()?;
        self.inner.send_request(req)
    }

    fn wait_reply(&self, id: u64) -> Result<(Reply, Vec<OwnedFd>)> {
        let got = self
            .inner
            .wait_until(None, |st| st.replies.remove(&id))?
            .ok_or(Error::Timeout)?;
        Ok(got)
    }

    fn unexpected(&self, reply: Reply) -> Error {
        match reply {
            Reply::Error { kind, message, .. } => Error::from_reply(kind, message),
            other => Error::Protocol(format!("unexpected reply {other:?}")),
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    Ok(sys::wait_readable(fd, timeout)?)
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The server hears of every child before the connection closes
        // (a claim lost here would leave it to judge by the child's kick).
        // Not from a forked copy of this process: they are the parent's.
        if std::process::id() == self.owner {
            let _ = self.flush_claims();
        }
    }
}

impl Inner {
    /// Sends the pending claims (see [`State::claims`]), and closes the
    /// fds of the reservation they used.
    fn flush_claims(&self) -> Result<()> {
        let (claims, spent) = {
            let mut st = lock(&self.state);
            (std::mem::take(&mut st.claims), st.spent.take())
        };
        drop(spent);
        self.send_claims(claims)
    }

    fn send_claims(&self, claims: Vec<Request>) -> Result<()> {
        claims.iter().try_for_each(|c| self.send_request(c))
    }

    /// Sends one request frame (no fds).
    fn send_request(&self, req: &Request) -> Result<()> {
        let bytes = codec::encode(req)?;
        sys::send_frame(self.sock.as_fd(), &bytes, &[], false).map_err(|e| self.sent_failed(e))
    }

    /// The error for a send that failed; a server found gone is marked so.
    fn sent_failed(&self, e: std::io::Error) -> Error {
        let err = Error::from_send(e);
        if let Error::ServerGone(why) = &err {
            self.mark_gone(why.clone());
        }
        err
    }

    fn mark_gone(&self, why: String) {
        let mut st = lock(&self.state);
        if st.gone.is_none() {
            tracing::warn!(server = self.server_pid, %why, "fork server gone");
            st.gone = Some(why);
        }
        self.cv.notify_all();
    }

    /// Waits until `take` finds what it wants, reading frames as needed.
    /// `Ok(None)` when the deadline passed.
    fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<Option<T>> {
        self.flush_claims()?;
        let mut st = lock(&self.state);
        let mut tried_read = false;
        loop {
            if let Some(v) = take(&mut st) {
                return Ok(Some(v));
            }
            if let Some(why) = &st.gone {
                return Err(Error::ServerGone(why.clone()));
            }
            let now = Instant::now();
            let expired = deadline.is_some_and(|d| now >= d);
            if expired && tried_read {
                return Ok(None);
            }
            if !st.reading {
                st.reading = true;
                drop(st);
                let timeout = deadline.map(|d| d.saturating_duration_since(now));
                let res = self.read_frames(timeout);
                st = lock(&self.state);
                st.reading = false;
                tried_read = true;
                match res {
                    Ok(frames) => {
                        for f in frames {
                            dispatch(&mut st, f);
                        }
                    }
                    Err(why) => {
                        if st.gone.is_none() {
                            tracing::warn!(server = self.server_pid, %why, "fork server gone");
                            st.gone = Some(why);
                        }
                    }
                }
                // Only a thread that waits needs waking (a notify is a
                // system call even when nobody waits).
                if st.waiters > 0 {
                    self.cv.notify_all();
                }
            } else if expired {
                return Ok(None);
            } else {
                st.waiters += 1;
                st = match deadline {
                    None => self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                    Some(d) => {
                        self.cv
                            .wait_timeout(st, d.saturating_duration_since(now))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                st.waiters -= 1;
            }
        }
    }

    /// Waits up to `timeout` for the socket, then reads every frame queued.
    /// `Err` means the server is gone.
    fn read_frames(
        &self,
        timeout: Option<Duration>,
    ) -> std::result::Result<Vec<(Reply, Vec<OwnedFd>)>, String> {
        // Not waiting at all (a look for what is there): the non-blocking
        // receive below answers that, without a `poll` first.
        if timeout != Some(Duration::ZERO) {
            match wait_readable(self.sock.as_fd(), timeout) {
                Ok(true) => {}
                Ok(false) => return Ok(Vec::new()),
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut out = Vec::new();
        // Only the reader (one thread at a time) takes this lock.
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let buf = &mut buf[..];
        loop {
            match sys::recv_frame(self.sock.as_fd(), buf, true) {
                Ok(r) if r.len == 0 && !r.truncated => {
                    if out.is_empty() {
                        return Err("connection closed by the server".into());
                    }
                    return Ok(out);
                }
                Ok(r) => {
                    if r.truncated {
                        tracing::warn!("oversized reply from the fork server dropped");
                        continue;
                    }
                    if r.ctrunc {
                        // The bytes are whole but not every fd could be
                        // installed (our fd table is full): deliver the reply
                        // with the fds that came, so that its waiter learns
                        // the outcome (a child without its pidfd, or an
                        // error for a missing socket) instead of waiting
                        // for a reply that was dropped.
                        tracing::warn!(
                            fds = r.fds.len(),
                            "a reply's fds were cut short (fd table full?)"
                        );
                    }
                    match codec::decode::<Reply>(&buf[..r.len]) {
                        // A look for a reservation (no waiting) that found
                        // one ends here: the spawn waiting on it is spared a
                        // receive that would find nothing more.
                        Ok(reply @ Reply::Reserved { .. }) if timeout == Some(Duration::ZERO) => {
                            out.push((reply, r.fds));
                            return Ok(out);
                        }
                        Ok(reply) => out.push((reply, r.fds)),
                        Err(e) => tracing::warn!(error = %e, "undecodable reply dropped"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Waits for a warm child's set-up report on its socket: `None` at EOF
/// (set-up worked: the child closed it, or `exec` did), the report when it
/// failed.
fn setup_report(sock: BorrowedFd<'_>) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        if sys::wait_readable(sock, None).is_err() {
            return None;
        }
        match sys::recv_frame(sock, &mut buf, true) {
            Ok(r) if r.len == 0 && !r.truncated => return None,
            Ok(r) => {
                return Some(String::from_utf8_lossy(&buf[..r.len.min(buf.len())]).into_owned());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

fn dispatch(st: &mut State, (reply, mut fds): (Reply, Vec<OwnedFd>)) {
    if let Reply::Reserved { pid, pidfd } = reply {
        if fds.len() != 2 + usize::from(pidfd) {
            // Our fd table was full: the server kills it and sends another.
            tracing::warn!(
                pid,
                fds = fds.len(),
                "a reservation without its fds dropped"
            );
            st.claims.push(Request::Release { pid });
            return;
        }
        let pidfd = pidfd.then(|| fds.pop()).flatten();
        let (Some(kick), Some(sock)) = (fds.pop(), fds.pop()) else {
            return;
        };
        tracing::debug!(pid, "warm child reserved");
        st.reserved = Some(Reservation {
            pid,
            sock,
            kick,
            pidfd,
            used: false,
        });
        return;
    }
    match &reply {
        Reply::Spawned { id, .. }
        | Reply::Done { id }
        | Reply::Connected { id }
        | Reply::Pong { id }
        | Reply::Error { id: Some(id), .. } => {
            st.replies.insert(*id, (reply, fds));
        }
        Reply::Exited {
            id,
            pid,
            status,
            rusage,
        } => {
            tracing::debug!(pid, ?status, "child exited");
            if !st.detached.remove(id) {
                st.exits.insert(*id, ExitStatus::new(*status, *rusage));
            }
        }
        Reply::Error {
            id: None,
            kind,
            message,
        } => {
            tracing::warn!(?kind, %message, "fork server reported an error for an unknown request");
        }
        Reply::Hello { .. } | Reply::Refused(_) => {
            tracing::warn!("unexpected handshake frame after the handshake");
        }
        Reply::Reserved { .. } => {}
    }
}

/// A child started by a fork server.
///
/// Dropping a `Child` does not kill it; the server still reaps it.
///
/// ```rust,standalone_crate
/// use std::time::Duration;
///
/// use forkserver::{Command, ForkServer, LaunchConfig};
///
/// forkserver::bootstrap!();
///
/// fn main() -> forkserver::Result<()> {
///     let server = ForkServer::launch(LaunchConfig::new())?;
///     let mut child = server.spawn(&Command::exec("sleep", ["60"]))?;
///     assert!(child.try_wait()?.is_none());
///     assert!(child.wait_timeout(Duration::from_millis(10))?.is_none());
///     child.signal(libc::SIGTERM)?;
///     let status = child.wait()?;
///     assert_eq!(status.signal(), Some(libc::SIGTERM));
///     Ok(())
/// }
/// ```
pub struct Child {
    inner: Arc<Inner>,
    /// The spawn request's id: what exit reports are filed under.
    id: u64,
    pid: i32,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish()
    }
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd for the child (readable once it exits), where the kernel has them.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// The exit status, if the child has ended; never blocks.
    ///
    /// # Errors
    /// [`Error::ServerGone`] when the server died before reporting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.wait_deadline(Some(Instant::now()))
    }

    /// Waits for the child to end.
    ///
    /// # Errors
    /// [`Error::ServerGone`] when the server died before reporting.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.wait_deadline(None)?.ok_or(Error::Timeout)
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running.
    ///
    /// # Errors
    /// [`Error::ServerGone`] when the server died before reporting.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.wait_deadline(Some(Instant::now() + timeout))
    }

    fn wait_deadline(&mut self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        if std::process::id() != self.inner.owner {
            return Err(Error::Forked);
        }
        let id = self.id;
        let got = self.inner.wait_until(deadline, |st| st.exits.remove(&id))?;
        self.status = got;
        Ok(got)
    }

    /// Sends `signal` to the child through the server, which guarantees the
    /// pid still names this child. A child already reaped is left alone.
    ///
    /// # Errors
    /// [`Error::ServerGone`], or an OS error from `kill`.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let conn = ServerConnection {
            inner: self.inner.clone(),
        };
        let id = conn.start_request()?;
        conn.send(&Request::Signal {
            id,
            pid: self.pid,
            signal,
        })?;
        match conn.wait_reply(id)?.0 {
            Reply::Done { .. } => Ok(()),
            // Exited meanwhile: the report is on its way.
            Reply::Error {
                kind: crate::protocol::ErrorKind::NotYourChild,
                ..
            } => Ok(()),
            other => Err(conn.unexpected(other)),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            let mut st = lock(&self.inner.state);
            if st.exits.remove(&self.id).is_none() {
                st.detached.insert(self.id);
            }
        }
    }
}

/// What to spawn: a builder for [`ServerConnection::spawn`].
///
/// By default the child gets the requester's fds 0, 1 and 2, its current
/// working directory and its current environment, all read when `spawn` is
/// called (not when the server started).
///
/// ```rust,standalone_crate
/// use std::io::Read;
/// use std::os::fd::AsFd;
///
/// use forkserver::{Command, ForkServer, LaunchConfig};
///
/// forkserver::bootstrap!();
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let server = ForkServer::launch(LaunchConfig::new())?;
///     let (mut r, w) = std::io::pipe()?;
///     let cmd = Command::exec("/bin/sh", ["-c", "echo $GREETING from $(pwd)"])
///         .fd(w.as_fd(), 1) // the pipe is the child's stdout
///         .cwd("/")
///         .env("GREETING", "hello");
///     let mut child = server.spawn(&cmd)?;
///     drop(w);
///     let mut out = String::new();
///     r.read_to_string(&mut out)?;
///     assert_eq!(out, "hello from /\n");
///     assert!(child.wait()?.success());
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Command<'a> {
    action: Action,
    fds: Vec<(BorrowedFd<'a>, u32)>,
    inherit_stdio: bool,
    cwd: Option<Option<PathBuf>>,
    env: Option<Vec<(OsString, OsString)>>,
    extra_env: Vec<(OsString, OsString)>,
    daemon: bool,
}

impl<'a> Command<'a> {
    fn new(action: Action) -> Self {
        Command {
            action,
            fds: Vec::new(),
            inherit_stdio: true,
            cwd: None,
            env: None,
            extra_env: Vec::new(),
            daemon: false,
        }
    }

    /// Runs the registered child entry with `data`.
    pub fn run(data: impl Into<Vec<u8>>) -> Self {
        Command::new(Action::Run { data: data.into() })
    }

    /// Executes `program` (searched in `PATH` unless it has a `/`) with
    /// `args` (not including `argv[0]`, which is `program`).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        let program = program.as_ref().as_bytes().to_vec();
        let mut argv = vec![program.clone()];
        argv.extend(args.into_iter().map(|a| a.as_ref().as_bytes().to_vec()));
        Command::new(Action::Exec { program, argv })
    }

    /// Installs `fd` at `slot` in the child (0, 1 and 2 replace stdio).
    pub fn fd(mut self, fd: BorrowedFd<'a>, slot: u32) -> Self {
        self.fds.retain(|(_, s)| *s != slot);
        self.fds.push((fd, slot));
        self
    }

    /// Whether the requester's fds 0, 1 and 2 are passed (default: yes);
    /// slots given with [`Command::fd`] win either way.
    pub fn inherit_stdio(mut self, on: bool) -> Self {
        self.inherit_stdio = on;
        self
    }

    /// The child's working directory (default: the requester's, now).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(Some(dir.into()));
        self
    }

    /// Keep the server's working directory instead of sending one.
    pub fn server_cwd(mut self) -> Self {
        self.cwd = Some(None);
        self
    }

    /// The child's whole environment (default: the requester's, now).
    pub fn envs<K: Into<OsString>, V: Into<OsString>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Adds or overrides one variable on top of the environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    /// Daemonic children are killed when their connection closes.
    pub fn daemon(mut self, on: bool) -> Self {
        self.daemon = on;
        self
    }

    fn all_fds(&self) -> Vec<(BorrowedFd<'a>, u32)> {
        let mut v = Vec::with_capacity(self.fds.len() + 3);
        if self.inherit_stdio {
            for slot in 0..3u32 {
                if self.fds.iter().any(|(_, s)| *s == slot) {
                    continue;
                }
                if let Some(fd) = sys::stdio_if_open(slot) {
                    v.push((fd, slot));
                }
            }
        }
        v.extend(self.fds.iter().copied());
        v
    }

    /// What the request carries. A cwd or environment equal to the server's
    /// (`base`) is left out: the child inherits the same from the server.
    fn details(&self, base: &ServerBase) -> Result<SpawnDetails> {
        let cwd = match &self.cwd {
            Some(Some(p)) => {
                base.cwd_unless_same(p.as_os_str().as_bytes().to_vec(), sys::dir_id(p))
            }
            Some(None) => None,
            None if base.in_server_cwd() => None,
            None => std::env::current_dir().ok().and_then(|p| {
                base.cwd_unless_same(p.into_os_string().into_vec(), sys::dir_id(Path::new(".")))
            }),
        };
        // The usual case, our environment unchanged since the server
        // started, is told without copying a variable.
        if self.env.is_none() && self.extra_env.is_empty() && base.env_is_ours() {
            return Ok(SpawnDetails {
                cwd,
                env: None,
                action: self.action.clone(),
            });
        }
        let mut env: Vec<(OsString, OsString)> = match &self.env {
            Some(e) => e.clone(),
            None => std::env::vars_os().collect(),
        };
        for (k, v) in &self.extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let env = env
            .into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        Ok(SpawnDetails {
            cwd,
            env: base.env_unless_same(env),
            action: self.action.clone(),
        })
    }
}

/// Byte-level access to a connection socket, for protocol tests and tools
/// (the `internals` feature: not part of the stable API).
///
/// Nothing here checks what is sent: it exists so that tests can play a
/// hostile client (random bytes, truncated or oversized frames, too many
/// fds) against a real server. Frames are sent with [`crate::fdpass::send`].
#[cfg(feature = "internals")]
pub mod raw {
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};
    use std::time::{Duration, Instant};

    use crate::sys;

    /// One frame as it came off the socket.
    #[derive(Debug)]
    pub struct Frame {
        /// The bytes (at most [`crate::protocol::MAX_FRAME`]).
        pub bytes: Vec<u8>,
        /// The fds that came with it, owned and close-on-exec.
        pub fds: Vec<OwnedFd>,
    }

    /// What [`recv`] got.
    #[derive(Debug)]
    pub enum Recv {
        /// A frame.
        Frame(Frame),
        /// End of stream: the peer closed.
        Eof,
        /// Nothing arrived in time.
        Timeout,
    }

    /// Receives one frame, waiting at most `timeout`.
    ///
    /// # Errors
    /// The OS error of `poll` or `recvmsg`.
    pub fn recv(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<Recv> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; crate::protocol::MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match super::wait_readable(sock, Some(left)) {
                Ok(true) => {}
                Ok(false) => return Ok(Recv::Timeout),
                Err(crate::Error::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
            match sys::recv_frame(sock, &mut buf, true) {
                Ok(r) if r.len == 0 && !r.truncated && r.fds.is_empty() => return Ok(Recv::Eof),
                Ok(r) => {
                    let len = r.len.min(buf.len());
                    return Ok(Recv::Frame(Frame {
                        bytes: buf[..len].to_vec(),
                        fds: r.fds,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServerBase;

    fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn our_own_environment_is_told_in_order_or_as_a_set() {
        use std::os::unix::ffi::OsStringExt;
        let vars: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        let in_order = ServerBase::new(None, None, Some(vars.clone()));
        assert!(in_order.env_in_order());
        assert!(in_order.env_is_ours());
        let keys: std::collections::HashSet<&Vec<u8>> = vars.iter().map(|(k, _)| k).collect();
        if vars.len() > 1 && keys.len() == vars.len() {
            let mut reversed = vars.clone();
            reversed.reverse();
            let reversed = ServerBase::new(None, None, Some(reversed));
            assert!(!reversed.env_in_order());
            assert!(reversed.env_is_ours(), "the same set in another order");
        }
        let mut fewer = vars;
        if fewer.pop().is_some() {
            let fewer = ServerBase::new(None, None, Some(fewer));
            assert!(!fewer.env_in_order());
            assert!(!fewer.env_is_ours());
        }
    }

    #[test]
    fn env_equal_to_the_servers_is_left_out() {
        let base = ServerBase::new(
            Some(b"/srv".to_vec()),
            Some((1, 2)),
            Some(pairs(&[("B", "2"), ("A", "1")])),
        );
        // Same set in another order: left out.
        assert_eq!(base.env_unless_same(pairs(&[("A", "1"), ("B", "2")])), None);
        // A value changed, a variable added or removed, one entry twice in
        // place of another: sent whole.
        for other in [
            pairs(&[("A", "1"), ("B", "3")]),
            pairs(&[("A", "1"), ("B", "2"), ("C", "")]),
            pairs(&[("A", "1")]),
            pairs(&[("A", "1"), ("A", "1")]),
            pairs(&[("A=1", ""), ("B", "2")]),
        ] {
            assert!(base.env_unless_same(other).is_some());
        }
        assert_eq!(base.cwd_unless_same(b"/srv".to_vec(), Some((1, 2))), None);
        assert_eq!(
            base.cwd_unless_same(b"/srv/x".to_vec(), Some((1, 2))),
            Some(b"/srv/x".to_vec())
        );
        // Same path, another directory (removed and made again), or one
        // that cannot be looked at: sent.
        for id in [Some((1, 3)), None] {
            assert_eq!(
                base.cwd_unless_same(b"/srv".to_vec(), id),
                Some(b"/srv".to_vec())
            );
        }
        // A server that did not tell its environment: always sent.
        let unknown = ServerBase::default();
        assert!(!unknown.env_is_ours());
        assert!(unknown.env_unless_same(Vec::new()).is_some());
        assert!(
            unknown
                .cwd_unless_same(b"/".to_vec(), Some((1, 2)))
                .is_some()
        );
    }
}
