//! The server and client emit `tracing` events for launch, spawn, exit,
//! reap, protocol errors and disconnects. The handler is driven in-process
//! (with an `Os` that records instead of forking) under a subscriber that
//! collects every event's message; the client's events come from a real
//! server.
mod common;

use std::io;
use std::os::fd::OwnedFd;

use forkserver::codec;
use forkserver::protocol::{
    Action, PROTOCOL_VERSION, Payload, Request, Rusage, SpawnDetails, SpawnRequest, WireStatus,
};
use forkserver::server::handler::{ForkedChild, Handler, HandlerConfig, Os, SpawnPlan};
use forkserver::{Command, ForkServer};
use testkit::tracing_capture::Messages;

forkserver::bootstrap!(|_| 0);

struct FakeOs(i32);
impl Os for FakeOs {
    fn spawn(&mut self, _: SpawnPlan) -> io::Result<ForkedChild> {
        self.0 += 1;
        Ok(ForkedChild {
            pid: 10_000 + self.0,
            setup: None,
        })
    }
    fn pidfd(&mut self, _: i32) -> Option<OwnedFd> {
        None
    }
    fn kill(&mut self, _: i32, _: i32) -> io::Result<()> {
        Ok(())
    }
    fn socketpair(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
        Err(io::Error::other("not here"))
    }
    type Bulk = Vec<u8>;
    fn map_memfd(&mut self, _: &OwnedFd, _: usize) -> io::Result<Vec<u8>> {
        Err(io::Error::other("not here"))
    }
}

#[test]
fn server_side_events() {
    let events = Messages::all();
    tracing::subscriber::with_default(events.clone(), || {
        let mut h = Handler::new(HandlerConfig::default());
        let mut os = FakeOs(0);
        let c = h.add_conn(None, false);
        let frame = |r: &Request| codec::encode(r).unwrap();
        let hello = frame(&Request::Hello {
            version: PROTOCOL_VERSION,
            build: 0,
        });
        h.on_frame(&mut os, c, &hello, false, false, Vec::new());
        h.on_frame(&mut os, c, b"\xff\xff garbage", false, false, Vec::new());
        h.on_frame(&mut os, c, &[], true, false, Vec::new());
        let spawn = frame(&Request::Spawn(SpawnRequest {
            id: 1,
            slots: vec![],
            daemon: false,
            payload: Payload::Inline(SpawnDetails {
                cwd: None,
                env: None,
                action: Action::Run { data: vec![] },
            }),
        }));
        h.on_frame(&mut os, c, &spawn, false, false, Vec::new());
        h.on_exit(&mut os, 10_001, WireStatus::Exited(0), Rusage::default());
        h.on_close(&mut os, c);
    });
    for needle in [
        "malformed request",
        "frame over 64 KiB",
        "spawned",
        "reaped",
        "connection closed",
    ] {
        assert!(
            events.has(needle),
            "no {needle:?} event in {:?}",
            events.list()
        );
    }
}

#[test]
fn client_side_events() {
    let _w = common::watchdog("client events", std::time::Duration::from_secs(60));
    let events = Messages::all();
    tracing::subscriber::with_default(events.clone(), || {
        let fs = ForkServer::launch(common::config()).expect("launch");
        let mut c = fs.spawn(&Command::run(Vec::new())).unwrap();
        common::wait(&mut c);
        let server = common::pidfd_open(fs.pid()).unwrap();
        common::pidfd_kill(&server, libc::SIGKILL);
        assert!(common::exited(&server, common::WAIT));
        let _ = fs.connection().unwrap().ping();
        let mut c = fs.spawn(&Command::run(Vec::new())).unwrap();
        common::wait(&mut c);
    });
    for needle in [
        "fork server launched",
        "spawned through the fork server",
        "child exited",
        "fork server gone",
        "relaunching",
    ] {
        assert!(
            events.has(needle),
            "no {needle:?} event in {:?}",
            events.list()
        );
    }
}
