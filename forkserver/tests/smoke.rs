//! Smoke test while bringing the server up.
use std::time::Duration;

use forkserver::{ChildStart, Command, ForkServer, LaunchConfig};

fn entry(start: ChildStart) -> i32 {
    match start.data.as_slice() {
        b"exit3" => 3,
        b"sleep" => {
            std::thread::sleep(Duration::from_secs(30));
            0
        }
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

#[test]
fn smoke() {
    let fs = ForkServer::launch(LaunchConfig::new()).unwrap();
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(
        c.wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap()
            .code(),
        Some(3)
    );
    let mut c = fs.spawn(&Command::run(b"sleep".to_vec())).unwrap();
    assert!(c.wait_timeout(Duration::from_millis(50)).unwrap().is_none());
    c.signal(9).unwrap();
    assert_eq!(
        c.wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap()
            .signal(),
        Some(9)
    );
    let mut c = fs
        .spawn(&Command::exec("/bin/sh", ["-c", "exit 7"]))
        .unwrap();
    assert_eq!(
        c.wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap()
            .code(),
        Some(7)
    );
    let e = fs.spawn(&Command::exec("/nonexistent/x", [""; 0]));
    println!("{e:?}");
    if let Ok(mut c) = e {
        println!("{:?}", c.wait());
    }
    let t = std::time::Instant::now();
    for _ in 0..200 {
        let mut c = fs.spawn(&Command::run(b"".to_vec())).unwrap();
        c.wait().unwrap();
    }
    println!("200 spawns {:?}", t.elapsed() / 200);
}
