//! A server process that has more than one thread refuses to fork, and the
//! client gets a typed error naming the thread count.
//!
//! This binary provokes it the way it happens in real programs: a
//! constructor that runs before the bootstrap starts a thread. (Here it
//! does so only in a process started in the server role.) The bootstrap
//! counts two threads, and the server refuses every handshake.
#![allow(unsafe_code)]

mod common;

use std::time::Duration;

use forkserver::{Error, ForkServer, Hooks, LaunchConfig};

extern "C" fn start_a_thread_then_bootstrap() {
    if std::env::var_os(forkserver::ROLE_VAR).is_some() {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
    forkserver::bootstrap_or_exit(Hooks { entry: None });
}

#[used]
#[unsafe(link_section = ".init_array")]
static CTOR: extern "C" fn() = start_a_thread_then_bootstrap;

#[test]
fn a_server_with_two_threads_refuses_with_server_threads() {
    let _w = common::watchdog("server threads", Duration::from_secs(60));
    match ForkServer::launch(LaunchConfig::new()) {
        Err(Error::ServerThreads { threads }) => {
            assert_eq!(threads, 2);
            let msg = Error::ServerThreads { threads }.to_string();
            assert!(msg.contains("2 threads"), "{msg}");
        }
        Ok(_) => panic!("a two-threaded server must refuse"),
        Err(e) => panic!("expected ServerThreads, got {e}"),
    }
    // No server process is left behind by the failed launch.
    assert!(common::eventually(common::WAIT, || {
        common::children_of(std::process::id() as i32).is_empty()
    }));
}
