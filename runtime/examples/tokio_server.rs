//! A tokio TCP server that answers every request from a process of its own.
//!
//! The server listens on 127.0.0.1 (an ephemeral port). For each
//! connection it reads a number, starts a child that counts the steps of
//! its Collatz sequence, awaits the child with `join_async` — no runtime
//! thread blocks while children run, so two workers serve any number of
//! them — and writes the answer back. The example runs a few clients
//! itself, checks their answers and exits.
//!
//! ```text
//! cargo run -p mproc --example tokio_server
//! ```
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn Error + Send + Sync>;

const LIMIT: Duration = Duration::from_secs(30);

/// Steps of the Collatz sequence from `n` down to 1 (the child's work).
fn collatz_steps(n: u64) -> u64 {
    let (mut n, mut steps) = (n.max(1), 0);
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// One request: a number on a line in, its step count on a line out.
async fn handle(sock: TcpStream) -> Result<(), BoxError> {
    let (read, mut write) = sock.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let n: u64 = line.trim().parse()?;
    let mut p = mproc::default_context().process(collatz_steps, n).start()?;
    let steps = p.join_async().await?;
    write.write_all(format!("{steps}\n").as_bytes()).await?;
    Ok(())
}

async fn serve(listener: TcpListener) -> Result<(), BoxError> {
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = handle(sock).await {
                eprintln!("request failed: {e}");
            }
        });
    }
}

/// A client: sends `n`, reads the answer.
async fn ask(addr: SocketAddr, n: u64) -> Result<u64, BoxError> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.write_all(format!("{n}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).await?;
    Ok(line.trim().parse()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let _rt = mproc::init()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener));

    let inputs = [27u64, 97, 871, 6171, 77_031, 837_799, 8_400_511, 63_728_127];
    let clients: Vec<_> = inputs.iter().map(|&n| tokio::spawn(ask(addr, n))).collect();
    for (n, client) in inputs.into_iter().zip(clients) {
        let steps = tokio::time::timeout(LIMIT, client).await???;
        assert_eq!(steps, collatz_steps(n));
        println!("{n}: {steps} steps (computed by a child process)");
    }
    server.abort();
    Ok(())
}
