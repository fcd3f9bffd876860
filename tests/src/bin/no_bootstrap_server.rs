//! An embedder of the forkserver crate alone (no mproc) whose `main` forgot
//! `forkserver::bootstrap`: launching must fail with an error that names the
//! fix, and the copy of this program started as the server must not start
//! another copy of itself.

fn main() {
    println!("main runs in {}", std::process::id());
    match forkserver::ForkServer::launch(forkserver::LaunchConfig::new()) {
        Ok(_) => println!("launched"),
        Err(e) => {
            println!("error: {e}");
            std::process::exit(3);
        }
    }
}
