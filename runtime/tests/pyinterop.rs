//! Interoperation with CPython's `multiprocessing`: `Listener`/`Client`
//! both ways over the three address kinds, with right and wrong authkeys
//! and multi-MiB messages; `SharedMemory` and `ShareableList` made on one
//! side and used on the other; `SharedMemoryManager` clean-up. Tests that
//! need `python3` skip with a message when it is missing. Every wait has a
//! timeout (each Python script also arms `signal.alarm`), and no segment
//! is left in `/dev/shm` (asserted by name).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mproc::Error;
use mproc::connection::{Address, Listener, StreamConnection, connect_timeout};
use mproc::shared_memory::{Item, ShareableList, SharedMemory, SharedMemoryManager};

const T: Duration = Duration::from_secs(60);
const BIG: usize = 4 << 20;

fn has_python() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import multiprocessing.shared_memory"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

macro_rules! need_python {
    () => {
        if !has_python() {
            eprintln!("skipping: python3 (with multiprocessing.shared_memory) not found");
            return;
        }
    };
}

/// Every script dies by itself after a minute, so no read of its output
/// can block for longer.
const PRELUDE: &str = r#"
import os, signal, sys
signal.alarm(60)
from multiprocessing import AuthenticationError, resource_tracker, shared_memory
from multiprocessing.connection import Client, Listener

def address(kind, a):
    if kind == 'tcp':
        host, port = a.rsplit(':', 1)
        return (host, int(port))
    if kind == 'abstract':
        return '\0' + a
    return a

def key(k):
    return None if k == '-' else k.encode()

def attach(name):
    # Attach without letting this process's resource tracker unlink the
    # segment at exit (Python >= 3.13 has track=False; before, unregister).
    try:
        return shared_memory.SharedMemory(name, track=False)
    except TypeError:
        shm = shared_memory.SharedMemory(name)
        resource_tracker.unregister(shm._name, 'shared_memory')
        return shm

def attach_list(name):
    try:
        shm = shared_memory.SharedMemory(name, track=False)
    except TypeError:
        shm = None
    sl = shared_memory.ShareableList(name=name)
    if shm is None:
        resource_tracker.unregister(sl.shm._name, 'shared_memory')
    return sl

def big(n):
    return (bytes(range(251)) * (n // 251 + 1))[:n]
"#;

struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

fn py(script: &str, args: &[&str]) -> Py {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 starts");
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    Py {
        child,
        stdin,
        stdout,
    }
}

impl Py {
    /// The next line the script prints ("" at its end).
    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("python's stdout");
        s.trim_end().to_string()
    }

    fn tell(&mut self, s: &str) {
        let w = self.stdin.as_mut().expect("stdin");
        writeln!(w, "{s}").expect("python's stdin");
        w.flush().expect("python's stdin");
    }

    /// Waits for the script to end (at most a minute) and returns its exit
    /// code and the last line it printed.
    fn finish(mut self) -> (i32, String) {
        drop(self.stdin.take());
        let mut last = String::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            last = l;
        }
        let deadline = Instant::now() + T;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return (st.code().unwrap_or(-1), last);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("python did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "mproc-py-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh address of `kind` for a listener (TCP: port 0, 127.0.0.1).
fn fresh(kind: &str) -> Address {
    match kind {
        "tcp" => Address::Tcp("127.0.0.1:0".parse().unwrap()),
        "abstract" => Address::Abstract(unique().into_bytes()),
        _ => Address::Unix(std::env::temp_dir().join(format!("{}.sock", unique()))),
    }
}

/// How a Python script's `address()` spells `a`.
fn py_addr(a: &Address) -> String {
    match a {
        Address::Tcp(t) => t.to_string(),
        Address::Abstract(n) => String::from_utf8(n.clone()).unwrap(),
        Address::Unix(p) => p.to_str().unwrap().to_string(),
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn reversed(m: &[u8]) -> Vec<u8> {
    m.iter().rev().copied().collect()
}

const PY_LISTENER: &str = r#"
kind, a, k = sys.argv[1:4]
where = ('127.0.0.1', 0) if kind == 'tcp' else address(kind, a)
with Listener(where, authkey=key(k)) as l:
    print(l.address[1] if kind == 'tcp' else 'ready', flush=True)
    try:
        c = l.accept()
    except AuthenticationError:
        print('AuthenticationError', flush=True)
        sys.exit(3)
    while True:
        if not c.poll(50):
            sys.exit(4)
        m = c.recv_bytes()
        if m == b'quit':
            break
        c.send_bytes(m[::-1])
    c.close()
print('done', flush=True)
"#;

const PY_CLIENT: &str = r#"
kind, a, k, n = sys.argv[1:5]
try:
    c = Client(address(kind, a), authkey=key(k))
except AuthenticationError:
    print('AuthenticationError', flush=True)
    sys.exit(3)
for m in (b'hello', big(int(n)), b''):
    c.send_bytes(m)
    if not c.poll(50):
        sys.exit(4)
    if c.recv_bytes() != m[::-1]:
        print('mismatch', flush=True)
        sys.exit(5)
c.send_bytes(b'quit')
print('done', flush=True)
"#;

/// Starts a Python listener of `kind` and returns it with its address.
fn python_listener(kind: &str, key: &str) -> (Py, Address) {
    let addr = fresh(kind);
    let mut p = py(PY_LISTENER, &[kind, &py_addr(&addr), key]);
    let first = p.line();
    let addr = match addr {
        Address::Tcp(_) => Address::Tcp(
            format!("127.0.0.1:{first}")
                .parse()
                .unwrap_or_else(|_| panic!("python listener said {first:?}")),
        ),
        other => {
            assert_eq!(first, "ready");
            other
        }
    };
    (p, addr)
}

fn rust_talks_to_python_listener(kind: &str) {
    need_python!();
    let (p, addr) = python_listener(kind, "s3cret");
    let c = connect_timeout(&addr, Some(b"s3cret"), T).unwrap();
    for m in [b"hello".to_vec(), pattern(BIG), Vec::new()] {
        c.send_bytes(&m).unwrap();
        assert_eq!(c.recv_bytes_timeout(T).unwrap(), reversed(&m), "{kind}");
    }
    c.send_bytes(b"quit").unwrap();
    assert_eq!(p.finish(), (0, "done".to_string()), "{kind}");
    if let Address::Unix(path) = &addr {
        assert!(!path.exists(), "python removes its socket file");
    }
}

fn serve_echo(conn: &StreamConnection) {
    loop {
        let m = conn.recv_bytes_timeout(T).unwrap();
        if m == b"quit" {
            return;
        }
        conn.send_bytes(&reversed(&m)).unwrap();
    }
}

fn python_talks_to_rust_listener(kind: &str) {
    need_python!();
    let l = Listener::bind(fresh(kind), Some(b"s3cret")).unwrap();
    let p = py(
        PY_CLIENT,
        &[kind, &py_addr(l.address()), "s3cret", &BIG.to_string()],
    );
    let conn = l.accept_timeout(T).unwrap();
    serve_echo(&conn);
    assert_eq!(p.finish(), (0, "done".to_string()), "{kind}");
}

#[test]
fn rust_client_python_listener_tcp() {
    rust_talks_to_python_listener("tcp");
}

#[test]
fn rust_client_python_listener_unix_path() {
    rust_talks_to_python_listener("unix");
}

#[test]
fn rust_client_python_listener_abstract() {
    rust_talks_to_python_listener("abstract");
}

#[test]
fn python_client_rust_listener_tcp() {
    python_talks_to_rust_listener("tcp");
}

#[test]
fn python_client_rust_listener_unix_path() {
    python_talks_to_rust_listener("unix");
}

#[test]
fn python_client_rust_listener_abstract() {
    python_talks_to_rust_listener("abstract");
}

#[test]
fn python_client_without_a_key_to_an_open_rust_listener() {
    need_python!();
    let l = Listener::bind(fresh("abstract"), None).unwrap();
    let p = py(PY_CLIENT, &["abstract", &py_addr(l.address()), "-", "100"]);
    serve_echo(&l.accept_timeout(T).unwrap());
    assert_eq!(p.finish(), (0, "done".to_string()));
}

#[test]
fn wrong_key_rust_client_python_listener() {
    need_python!();
    for kind in ["tcp", "abstract"] {
        let (p, addr) = python_listener(kind, "right");
        let e = connect_timeout(&addr, Some(b"wrong"), T).unwrap_err();
        assert!(matches!(e, Error::AuthenticationFailed(_)), "{kind}: {e:?}");
        assert_eq!(p.finish(), (3, "AuthenticationError".to_string()), "{kind}");
    }
}

#[test]
fn wrong_key_python_client_rust_listener() {
    need_python!();
    for kind in ["tcp", "unix"] {
        let l = Listener::bind(fresh(kind), Some(b"right")).unwrap();
        let p = py(PY_CLIENT, &[kind, &py_addr(l.address()), "wrong", "10"]);
        let e = l.accept_timeout(T).unwrap_err();
        assert!(matches!(e, Error::AuthenticationFailed(_)), "{kind}: {e:?}");
        assert_eq!(p.finish(), (3, "AuthenticationError".to_string()), "{kind}");
        // The listener goes on serving after a refused peer.
        let p = py(PY_CLIENT, &[kind, &py_addr(l.address()), "right", "10"]);
        serve_echo(&l.accept_timeout(T).unwrap());
        assert_eq!(p.finish(), (0, "done".to_string()), "{kind}");
    }
}

fn in_dev_shm(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

#[test]
fn shared_memory_made_in_rust_used_in_python() {
    need_python!();
    let shm = SharedMemory::create(10_000).unwrap();
    shm.write(0, &pattern(100)).unwrap();
    let script = r#"
shm = attach(sys.argv[1])
assert shm.size == 10000, shm.size
assert bytes(shm.buf[:100]) == big(100)
shm.buf[:11] = b'from python'
shm.close()
print('done', flush=True)
"#;
    let p = py(script, &[shm.name()]);
    assert_eq!(p.finish(), (0, "done".to_string()));
    assert_eq!(shm.read_vec(0, 11).unwrap(), b"from python");
    let name = shm.name().to_string();
    assert!(
        in_dev_shm(&name),
        "python must not unlink what it attached to"
    );
    drop(shm);
    assert!(!in_dev_shm(&name));
}

#[test]
fn shared_memory_made_in_python_used_in_rust() {
    need_python!();
    let script = r#"
shm = shared_memory.SharedMemory(create=True, size=5000)
shm.buf[:5] = b'hello'
print(shm.name, shm.size, flush=True)
sys.stdin.readline()
ok = bytes(shm.buf[5:10]) == b'world'
shm.close()
shm.unlink()
print('done' if ok else 'mismatch', flush=True)
"#;
    let mut p = py(script, &[]);
    let line = p.line();
    let (name, size) = line.split_once(' ').expect("name and size");
    assert!(name.starts_with("psm_"), "{name}");
    assert_eq!(size, "5000");
    let shm = SharedMemory::open(name).unwrap();
    assert_eq!(shm.size(), 5000);
    assert!(!shm.unlinks_on_drop());
    assert_eq!(shm.read_vec(0, 5).unwrap(), b"hello");
    shm.write(5, b"world").unwrap();
    drop(shm);
    p.tell("go");
    assert_eq!(p.finish(), (0, "done".to_string()));
    assert!(!in_dev_shm(name));
}

#[test]
fn shareable_list_made_in_rust_used_in_python() {
    need_python!();
    let items = vec![
        Item::Int(42),
        Item::Float(2.5),
        Item::Bool(true),
        Item::None,
        "héllo wörld".into(),
        Item::Bytes(vec![0, 1, 2]),
    ];
    let list = ShareableList::new(&items).unwrap();
    let script = r#"
sl = attach_list(sys.argv[1])
assert list(sl) == [42, 2.5, True, None, 'héllo wörld', b'\x00\x01\x02'], list(sl)
assert sl.format == 'qdxxxxxxx?xxxxxx?x16s8s', sl.format
sl[0] = -7
sl[2] = False
sl[3] = 1.5
sl[4] = 'yo'
sl[5] = None
sl.shm.close()
print('done', flush=True)
"#;
    let p = py(script, &[list.name()]);
    assert_eq!(p.finish(), (0, "done".to_string()));
    assert_eq!(
        list.to_vec().unwrap(),
        [
            Item::Int(-7),
            Item::Float(2.5),
            Item::Bool(false),
            Item::Float(1.5),
            "yo".into(),
            Item::None
        ]
    );
    let name = list.name().to_string();
    drop(list);
    assert!(!in_dev_shm(&name));
}

#[test]
fn shareable_list_made_in_python_used_in_rust() {
    need_python!();
    let script = r#"
sl = shared_memory.ShareableList([1, -2.25, False, None, 'abc', b'xyz', 'ü', 2**62])
print(sl.shm.name, flush=True)
sys.stdin.readline()
ok = list(sl) == ['rust', -2.25, True, None, 'abc', 99, 'ü', 2**62]
sl.shm.close()
sl.shm.unlink()
print('done' if ok else repr(list(sl)), flush=True)
"#;
    let mut p = py(script, &[]);
    let name = p.line();
    let list = ShareableList::open(&name).unwrap();
    assert_eq!(
        list.to_vec().unwrap(),
        [
            Item::Int(1),
            Item::Float(-2.25),
            Item::Bool(false),
            Item::None,
            "abc".into(),
            Item::Bytes(b"xyz".to_vec()),
            "ü".into(),
            Item::Int(1 << 62),
        ]
    );
    list.set(0, "rust").unwrap();
    list.set(2, true).unwrap();
    list.set(5, Item::Int(99)).unwrap();
    assert!(list.set(4, "longer than 8").is_err());
    drop(list);
    p.tell("go");
    assert_eq!(p.finish(), (0, "done".to_string()));
    assert!(!in_dev_shm(&name));
}

#[test]
fn manager_segments_reach_python_and_go_at_shutdown() {
    need_python!();
    let smm = SharedMemoryManager::start().unwrap();
    let shm = smm.shared_memory(64).unwrap();
    let list = smm.shareable_list(&[Item::Int(1), "x".into()]).unwrap();
    let script = r#"
shm = attach(sys.argv[1])
shm.buf[:2] = b'py'
shm.close()
sl = attach_list(sys.argv[2])
sl[0] = sl[0] + 1
sl.shm.close()
print('done', flush=True)
"#;
    let p = py(script, &[shm.name(), list.name()]);
    assert_eq!(p.finish(), (0, "done".to_string()));
    assert_eq!(shm.read_vec(0, 2).unwrap(), b"py");
    assert_eq!(list.get(0).unwrap(), Item::Int(2));
    let names = [shm.name().to_string(), list.name().to_string()];
    drop((shm, list));
    assert!(names.iter().all(|n| in_dev_shm(n)), "the manager owns them");
    assert_eq!(smm.shutdown().unwrap(), 2);
    assert!(names.iter().all(|n| !in_dev_shm(n)));
}

fn make_segments_then_wait(conn: mproc::connection::Connection<Vec<String>>) {
    let smm = SharedMemoryManager::start().unwrap();
    let a = smm.shared_memory(4096).unwrap();
    let b = smm.shareable_list(&[Item::Int(5)]).unwrap();
    conn.send(&vec![a.name().to_string(), b.name().to_string()])
        .unwrap();
    // Killed here by the test, never shutting the manager down.
    std::thread::sleep(Duration::from_secs(120));
    drop(smm);
}

#[test]
fn manager_unlinks_everything_when_its_parent_is_killed() {
    let ctx = mproc::get_context("forkserver").unwrap();
    let (ours, theirs) = mproc::connection::pipe::<Vec<String>>(true).unwrap();
    let mut p = ctx
        .process(make_segments_then_wait, theirs)
        .start()
        .unwrap();
    let names = ours.recv_timeout(T).unwrap();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| in_dev_shm(n)));
    p.kill().unwrap();
    let _ = p.join_timeout(T);
    assert_eq!(p.exitcode(), Some(-9));
    let deadline = Instant::now() + T;
    while names.iter().any(|n| in_dev_shm(n)) {
        assert!(Instant::now() < deadline, "segments left behind: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropping_a_manager_unlinks_its_segments() {
    let smm = SharedMemoryManager::start().unwrap();
    let shm = smm.shared_memory(100).unwrap();
    let name = shm.name().to_string();
    smm.release(&name).unwrap();
    assert!(!in_dev_shm(&name));
    assert!(smm.release(&name).is_err());
    let other = smm.shared_memory(100).unwrap().name().to_string();
    assert_eq!(smm.list_segments().unwrap(), std::slice::from_ref(&other));
    drop(smm);
    assert!(!in_dev_shm(&other));
}

/// The handshake of Python ≥ 3.12 (`{digest}`-prefixed challenges and
/// answers), written out with Python's `hmac` over a key-less
/// `Client`, so it is exercised whatever Python is installed; with
/// Python ≥ 3.12 the tests above use the real one too.
#[test]
fn prefixed_digest_handshake_as_python_3_12_speaks_it() {
    need_python!();
    let script = r#"
import hmac
def deliver(c, k, digest):
    msg = b'{%s}' % digest.encode() + os.urandom(40)
    c.send_bytes(b'#CHALLENGE#' + msg)
    r = c.recv_bytes(256)
    ok = r == b'{%s}' % digest.encode() + hmac.new(k, msg, digest).digest()
    c.send_bytes(b'#WELCOME#' if ok else b'#FAILURE#')
    return ok
def answer(c, k):
    m = c.recv_bytes(256)
    assert m.startswith(b'#CHALLENGE#{sha256}'), m
    m = m[len(b'#CHALLENGE#'):]
    c.send_bytes(b'{sha256}' + hmac.new(k, m, 'sha256').digest())
    return c.recv_bytes(256) == b'#WELCOME#'
kind, a, k, digest = sys.argv[1:5]
c = Client(address(kind, a))
if not answer(c, k.encode()):
    print('refused', flush=True)
    sys.exit(3)
if not deliver(c, b'secret', digest):
    print('wrong answer', flush=True)
    sys.exit(4)
c.send_bytes(b'hello')
assert c.poll(50) and c.recv_bytes() == b'olleh'
c.send_bytes(b'quit')
print('done', flush=True)
"#;
    for digest in ["sha256", "sha384", "md5"] {
        let l = Listener::bind(fresh("abstract"), Some(b"secret")).unwrap();
        let p = py(
            script,
            &["abstract", &py_addr(l.address()), "secret", digest],
        );
        serve_echo(&l.accept_timeout(T).unwrap());
        assert_eq!(p.finish(), (0, "done".to_string()), "{digest}");
    }
    // A wrong key in the prefixed form is refused too.
    let l = Listener::bind(fresh("abstract"), Some(b"secret")).unwrap();
    let p = py(
        script,
        &["abstract", &py_addr(l.address()), "wrong", "sha256"],
    );
    let e = l.accept_timeout(T).unwrap_err();
    assert!(matches!(e, Error::AuthenticationFailed(_)), "{e:?}");
    assert_eq!(p.finish(), (3, "refused".to_string()));
}

fn signal(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success());
}

#[test]
fn manager_server_ignores_sigint_and_cleans_up_on_sigterm() {
    let smm = SharedMemoryManager::start().unwrap();
    let pid = smm.pid().unwrap();
    let name = smm.shared_memory(10).unwrap().name().to_string();
    // A terminal's Ctrl-C reaches the whole process group: the server
    // stays.
    signal(pid, "INT");
    let other = smm.shared_memory(10).unwrap().name().to_string();
    assert_eq!(smm.list_segments().unwrap().len(), 2);
    // A terminate() of the server: it unlinks what it made and exits.
    signal(pid, "TERM");
    let deadline = Instant::now() + T;
    while in_dev_shm(&name) || in_dev_shm(&other) {
        assert!(Instant::now() < deadline, "segments left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(smm.shutdown().is_err(), "the server is gone");
}
