//! The server loop: one thread, one `poll`, no blocking call anywhere else.
//!
//! The loop polls a signalfd for `SIGCHLD`, every connection (for reading,
//! and for writing while its reply queue is not empty) and the set-up pipe
//! of every child that has one (those that exec or change directory, whose
//! set-up can fail). All decisions are made by [`handler::Handler`]; this module
//! only moves bytes and fds between sockets and the handler:
//!
//! - a readable connection is drained frame by frame (non-blocking) into
//!   [`handler::Handler::on_frame`]; EOF or an error closes it;
//! - a `SIGCHLD` reaps with `wait4(-1, WNOHANG)` until nothing is left, after
//!   draining the child's set-up pipe so that `Spawned` always precedes
//!   `Exited` on the wire;
//! - replies are written with `MSG_DONTWAIT`; a full socket leaves them
//!   queued (bounded per connection) and a connection whose queue overflows is
//!   dropped, so a client that stops reading never stalls another.

pub(crate) mod after_fork;
pub mod handler;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::EntryArgs;
use crate::codec;
use crate::protocol::{Action, MAX_FRAME, SpawnDetails, ToWarm};
use crate::sys;
use handler::{
    ConnId, ForkedChild, HandOverError, Handler, HandlerConfig, Os, SpawnPlan, WarmChild, WarmLink,
};

/// The real [`Os`]: forks, signals, pidfds.
pub(crate) struct RealOs {
    entry: Option<fn(EntryArgs) -> i32>,
    pidfd_works: Option<bool>,
    /// The soft fd limit the server started with, when it raised its own:
    /// children get it back.
    nofile_soft: Option<u64>,
    /// The server's signals, environment and cwd, which children inherit.
    base: after_fork::Baseline,
    /// A bulk payload was mapped (and decoded) since the heap was last
    /// trimmed.
    bulk_seen: bool,
    /// The embedder's per-child warm-up, run by each warm child.
    warm_up: Vec<fn()>,
    /// Our pid, which warm children check their parent against.
    pid: i32,
    /// Handovers decided this turn, sent after the turn's replies
    /// ([`RealOs::send_handovers`]).
    handovers: Vec<Handover>,
}

/// A handover to a warm child, encoded, waiting for the turn's replies to
/// go out first.
struct Handover {
    pid: i32,
    sock: OwnedFd,
    kick: OwnedFd,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl RealOs {
    /// Sends the turn's handovers, after its replies. A warm child whose
    /// socket refuses its handover (it died since the last turn, which the
    /// next reap reports) is killed: its requester has `Spawned` already,
    /// and hears of it as of any child killed right after it started.
    fn send_handovers(&mut self) {
        for h in self.handovers.drain(..) {
            let fds: Vec<BorrowedFd<'_>> = h.fds.iter().map(AsFd::as_fd).collect();
            let sent = sys::send_frame(h.sock.as_fd(), &h.bytes, &fds, true);
            match sent.and_then(|()| sys::kick(h.kick.as_fd(), crate::protocol::kick::SPAWN)) {
                Ok(()) => tracing::trace!(pid = h.pid, "handed over to a warm child"),
                Err(e) => {
                    tracing::warn!(pid = h.pid, error = %e, "handover failed: the warm child is killed");
                    let _ = sys::kill(h.pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Whether `spec` can run at all (a `run` needs an entry).
    fn check_entry(&self, action: &Action) -> io::Result<()> {
        if matches!(action, Action::Run { .. }) && self.entry.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no child entry registered",
            ));
        }
        Ok(())
    }
}

impl Os for RealOs {
    #[allow(unsafe_code)] // one call into `sys`, justified at the call
    fn spawn(&mut self, spec: SpawnPlan) -> io::Result<ForkedChild> {
        let plan = self.base.plan(&spec.details);
        let SpawnPlan { fds, details } = spec;
        let action = details.action;
        // Free the rest (the environment: dozens of small allocations) before
        // the fork: freed afterwards, every heap page it touches would be
        // copied, in the server, while the child shares it.
        drop(details.env);
        drop(details.cwd);
        self.check_entry(&action)?;
        // Only a set-up that can fail is waited for (see `child`).
        let confirm = plan.needs_confirmation() || matches!(action, Action::Exec { .. });
        let (setup_r, setup_w) = if confirm {
            let (r, w) = sys::pipe_nonblocking()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        // SAFETY: the server runs on a single thread (checked at start and
        // refused otherwise), so the child may run arbitrary code; see
        // `child`'s module docs.
        match unsafe { sys::fork() }? {
            sys::Forked::Child => {
                drop(setup_r);
                after_fork::run(
                    fds,
                    action,
                    setup_w,
                    self.entry,
                    self.nofile_soft,
                    &self.base,
                    plan,
                    after_fork::Start::Forked,
                )
            }
            sys::Forked::Parent(pid) => {
                // No `yield` to let the child run first: a short child would
                // be gone sooner, but a child that computes would keep the
                // server (and the requester waiting for `Spawned`) off this
                // CPU until the next tick; `start` of a busy `mproc` child
                // took 1.8 ms p50 with it, 0.35 ms without
                // (`docs/benchmarks.md`).
                drop(setup_w);
                drop(fds);
                drop(action);
                drop(plan);
                Ok(ForkedChild {
                    pid,
                    setup: setup_r,
                })
            }
        }
    }

    #[allow(unsafe_code)] // one call into `sys`, justified at the call
    fn fork_warm(&mut self) -> io::Result<WarmChild> {
        let (ours, theirs) = sys::warm_pair()?;
        let kick = sys::eventfd()?;
        // SAFETY: the server runs on a single thread, as for `spawn`.
        match unsafe { sys::fork() }? {
            sys::Forked::Child => {
                drop(ours);
                after_fork::warm(
                    theirs,
                    kick,
                    after_fork::WarmParams {
                        server_pid: self.pid,
                        warm_up: &self.warm_up,
                        entry: self.entry,
                        nofile_soft: self.nofile_soft,
                        base: &self.base,
                    },
                )
            }
            sys::Forked::Parent(pid) => {
                drop(theirs);
                Ok(WarmChild {
                    pid,
                    link: WarmLink { sock: ours, kick },
                })
            }
        }
    }

    fn hand_over(
        &mut self,
        pid: i32,
        link: WarmLink,
        spec: SpawnPlan,
    ) -> Result<ForkedChild, HandOverError> {
        let WarmLink { sock, kick } = link;
        // A waiting warm child never writes: a readable socket means its
        // end closed, the child is gone (killed since the last reap), and
        // the request is forked afresh while that is still possible, before
        // `Spawned` names the dead child.
        let gone = || {
            let waiting = matches!(
                sys::wait_readable(sock.as_fd(), Some(Duration::ZERO)),
                Ok(false)
            );
            (!waiting).then(|| io::Error::new(io::ErrorKind::BrokenPipe, "the warm child is gone"))
        };
        if let Some(error) = self.check_entry(&spec.details.action).err().or_else(gone) {
            return Err(HandOverError::new(error, spec));
        }
        let plan = self.base.plan(&spec.details);
        let SpawnPlan { fds, details } = spec;
        let SpawnDetails { cwd, env, action } = details;
        let confirm = plan.needs_confirmation() || matches!(action, Action::Exec { .. });
        let slots = fds.iter().map(|(_, s)| *s).collect();
        let msg = plan.into_handover(slots, confirm, action);
        // Encoded now, sent after this turn's replies (`send_handovers`):
        // the requester's `Spawned` goes out first, so the requester is
        // woken, and placed on a CPU, before the child that may compute at
        // once, and the child needs no yield before its entry. A handover
        // too large for one frame (a bulk payload) is forked afresh instead.
        let msg = ToWarm::Handover(msg);
        let kept = match (codec::encode(&msg), confirm) {
            (Ok(bytes), false) => Ok((bytes, sock, None)),
            (Ok(bytes), true) => sock.try_clone().map(|dup| (bytes, dup, Some(sock))),
            (Err(e), _) => Err(io::Error::other(e.to_string())),
        };
        match kept {
            Ok((bytes, sock, setup)) => {
                self.handovers.push(Handover {
                    pid,
                    sock,
                    kick,
                    bytes,
                    fds: fds.into_iter().map(|(f, _)| f).collect(),
                });
                Ok(ForkedChild { pid, setup })
            }
            Err(error) => Err(HandOverError::new(
                error,
                SpawnPlan {
                    fds,
                    details: SpawnDetails {
                        cwd,
                        env,
                        action: match msg {
                            ToWarm::Handover(h) => h.action,
                            ToWarm::Spawn(w) => w.details.action,
                        },
                    },
                },
            )),
        }
    }

    fn kicked(&mut self, kick: &OwnedFd) -> Option<u64> {
        sys::kicked(kick.as_fd())
    }

    fn pidfd(&mut self, pid: i32) -> Option<OwnedFd> {
        if self.pidfd_works == Some(false) {
            return None;
        }
        match sys::pidfd_open(pid) {
            Ok(fd) => {
                self.pidfd_works = Some(true);
                Some(fd)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                tracing::info!("pidfd_open unavailable ({e}): children get no pidfd");
                self.pidfd_works = Some(false);
                None
            }
            Err(_) => None,
        }
    }

    fn kill(&mut self, pid: i32, signal: i32) -> io::Result<()> {
        sys::kill(pid, signal)
    }

    fn socketpair(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
        sys::seqpacket_pair()
    }

    type Bulk = sys::SealedMap;

    fn map_memfd(&mut self, fd: &OwnedFd, len: usize) -> io::Result<sys::SealedMap> {
        let map = sys::map_sealed_memfd(fd.as_fd(), len)?;
        self.bulk_seen = true;
        Ok(map)
    }
}

/// Serves `root` until it closes (or a shutdown request), then returns.
pub(crate) fn serve(
    root: OwnedFd,
    mut cfg: HandlerConfig,
    entry: Option<fn(EntryArgs) -> i32>,
    warm_up: Vec<fn()>,
) -> io::Result<()> {
    let sigchld = sys::sigchld_fd()?;
    // Room for many connections, each child's set-up pipe and pidfd, and the
    // fds in flight; connections may take at most a quarter of the table.
    let mut nofile_soft = None;
    let mut max_conns = handler::MAX_CONNS;
    match sys::raise_nofile() {
        Ok((before, after)) => {
            if after != before {
                nofile_soft = Some(before);
            }
            max_conns = max_conns.min((after as usize / 4).saturating_sub(16));
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise RLIMIT_NOFILE"),
    }
    let mut os = RealOs {
        entry,
        pidfd_works: None,
        nofile_soft,
        base: after_fork::Baseline::capture(),
        bulk_seen: false,
        warm_up,
        pid: cfg.pid,
        handovers: Vec::new(),
    };
    // Clients compare their cwd and environment with ours and send them only
    // when they differ (the usual spawn then carries neither).
    cfg.cwd = os.base.cwd().map(<[u8]>::to_vec);
    cfg.cwd_id = os.base.cwd_id();
    cfg.env = os.base.env_for_handshake(MAX_FRAME / 2);
    cfg.entry = os.entry.is_some();
    // Rust's stdout is set up once here, not in every child that flushes it.
    let _ = std::io::stdout();
    let mut h = Handler::new(cfg);
    h.set_max_conns(max_conns);
    h.add_conn(Some(root), true);
    let mut buf = vec![0u8; MAX_FRAME + 1];
    // Reused every turn: after each fork, every heap page the loop writes is
    // a copy-on-write fault, so the loop allocates nothing per turn.
    let mut conn_ids: Vec<ConnId> = Vec::new();
    let mut setup_pids: Vec<i32> = Vec::new();
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut revents: Vec<PollFlags> = Vec::new();
    let mut ids: Vec<ConnId> = Vec::new();
    let pollfd = |fd: BorrowedFd<'_>, ev: PollFlags| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: ev.bits(),
        revents: 0,
    };
    loop {
        // Build the poll set: [sigchld, conns…, setup pipes…].
        conn_ids.clear();
        setup_pids.clear();
        pfds.clear();
        pfds.push(pollfd(sigchld.as_fd(), PollFlags::POLLIN));
        for (id, c) in h.conns() {
            let Some(fd) = &c.fd else { continue };
            let mut ev = PollFlags::POLLIN;
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            pfds.push(pollfd(fd.as_fd(), ev));
            conn_ids.push(id);
        }
        for (pid, fd) in h.pending_setups() {
            pfds.push(pollfd(fd.as_fd(), PollFlags::POLLIN));
            setup_pids.push(pid);
        }
        let now = Instant::now();
        let idle = h.idle_timeout(now);
        let deadline = h.next_deadline().map(|d| d.saturating_duration_since(now));
        let timeout = match (deadline, idle) {
            (Some(d), Some(i)) => Some(d.min(i)),
            (d, i) => d.or(i),
        };
        // The fds stay open while we poll: `h` owns them and is not touched
        // until `poll` returns.
        match sys::poll(&mut pfds, sys::poll_timeout_ms(timeout)) {
            // Nothing happened for the idle time: the one moment a warm
            // child is forked, so no request ever waits behind that fork
            // unless it arrives during it.
            Ok(0) if idle.is_some_and(|i| now.elapsed() >= i) => {
                h.on_idle(&mut os, Instant::now());
                h.on_tick(&mut os, Instant::now());
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        revents.clear();
        revents.extend(
            pfds.iter()
                .map(|p| PollFlags::from_bits_truncate(p.revents)),
        );

        let mut shutdown = false;
        // Set-up pipes first, so Spawned goes out before any Exited.
        for (i, pid) in setup_pids.iter().enumerate() {
            if !revents[1 + conn_ids.len() + i].is_empty() {
                finish_setup(&mut h, &mut os, *pid, false);
            }
        }
        if !revents[0].is_empty() {
            sys::drain_signalfd(sigchld.as_fd());
            reap_all(&mut h, &mut os);
        }
        for (i, id) in conn_ids.iter().enumerate() {
            let ev = revents[1 + i];
            if ev.is_empty() {
                continue;
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                shutdown |= read_conn(&mut h, &mut os, *id, &mut buf);
            }
        }
        h.on_tick(&mut os, Instant::now());
        // Flush every queue we can (replies may come from any event above).
        ids.clear();
        ids.extend(h.conns().map(|(id, _)| id));
        for &id in &ids {
            shutdown |= flush_conn(&mut h, &mut os, id);
        }
        os.send_handovers();
        // A bulk payload (up to 16 MiB, decoded into as many allocations
        // as it has fields) can leave the heap large and resident, and
        // every resident page makes each later fork and exit dearer: give
        // it back now that the request's memory is free (`docs/architecture.md`).
        if std::mem::take(&mut os.bulk_seen) {
            sys::trim_heap();
        }
        if shutdown || h.shutting_down() {
            return finish_shutdown(&mut h, &mut os, &sigchld);
        }
    }
}

/// Reads a set-up pipe to its end and tells the handler (`reaped`: the
/// child has already been waited for).
fn finish_setup(h: &mut Handler, os: &mut RealOs, pid: i32, reaped: bool) {
    let report = {
        let Some(fd) = h.setup_fd(pid) else { return };
        let mut report = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match sys::read(fd, &mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    report.extend_from_slice(&chunk[..n]);
                    if report.len() > 4096 {
                        break;
                    }
                }
                // The child reports a failure with one write (< PIPE_BUF, so
                // atomic) and then exits: data means done, nothing means the
                // child is still setting up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && report.is_empty() => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        report
    };
    if reaped {
        h.on_setup_done_reaped(os, pid, &report);
    } else {
        h.on_setup_done(os, pid, &report);
    }
}

fn reap_all(h: &mut Handler, os: &mut RealOs) {
    while let Some((pid, status, rusage)) = sys::reap_any() {
        let pending = h.pending_setups().any(|(p, _)| p == pid);
        if pending {
            // The child is gone, so its pipe end is closed: this read ends.
            finish_setup(h, os, pid, true);
        }
        h.on_exit(os, pid, status, rusage);
    }
}

/// Drains one readable connection. Returns true when the server must stop.
fn read_conn(h: &mut Handler, os: &mut RealOs, id: ConnId, buf: &mut [u8]) -> bool {
    // Bounded per wake-up, so one busy client cannot starve the others.
    for _ in 0..64 {
        let Some(fd) = h.conn_fd(id) else {
            return false;
        };
        match sys::recv_frame(fd, buf, true) {
            Ok(r) if r.len == 0 && !r.truncated => return h.on_close(os, id).shutdown,
            Ok(r) => {
                let len = r.len.min(buf.len());
                let eff = h.on_frame(
                    os,
                    id,
                    &buf[..len],
                    r.truncated || r.len > MAX_FRAME,
                    r.ctrunc,
                    r.fds,
                );
                if eff.shutdown {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "receive failed: closing");
                return h.on_close(os, id).shutdown;
            }
        }
    }
    false
}

/// Writes queued replies without blocking. Returns true when the server must stop.
fn flush_conn(h: &mut Handler, os: &mut RealOs, id: ConnId) -> bool {
    loop {
        let Some(c) = h.conn_mut(id) else {
            return false;
        };
        if c.overflowed {
            return h.on_close(os, id).shutdown;
        }
        let Some(out) = c.out.front() else {
            if c.close_after_flush {
                return h.on_close(os, id).shutdown;
            }
            return false;
        };
        let Some(fd) = &c.fd else {
            c.out.clear();
            return false;
        };
        let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(|f| f.as_fd()).collect();
        match sys::send_frame(fd.as_fd(), &out.bytes, &fds, true) {
            Ok(()) => {
                c.out.pop_front();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "send failed: closing");
                return h.on_close(os, id).shutdown;
            }
        }
    }
}

/// After the root closed: give daemonic children their grace, SIGKILL the
/// rest, reap what has exited, and return.
fn finish_shutdown(h: &mut Handler, os: &mut RealOs, sigchld: &OwnedFd) -> io::Result<()> {
    tracing::debug!("fork server shutting down");
    let ids: Vec<ConnId> = h.conns().map(|(id, _)| id).collect();
    for id in ids {
        flush_conn(h, os, id);
        h.on_close(os, id);
    }
    while h.has_pending_kills() {
        reap_all(h, os);
        if !h.has_pending_kills() {
            break;
        }
        let left = h.next_deadline().map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let _ = sys::wait_readable(sigchld.as_fd(), Some(left));
        sys::drain_signalfd(sigchld.as_fd());
        h.on_tick(os, Instant::now());
    }
    reap_all(h, os);
    Ok(())
}
