//! Thread per core: with worker threads started, the accept loop hands
//! each connection to the next worker, and the connection is served there.
//! (Its own test binary: the workers are process-wide.)

use sane_proxy::drain::Drain;
use sane_proxy::listener::{accept_loop, bind_tcp, AcceptLimits};
use sane_proxy::workers;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn connections_are_served_by_the_workers_in_turn() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        workers::start(3).unwrap();
        let (socket, addr) = bind_tcp("test", "127.0.0.1:0").unwrap();
        let drain = Drain::default();
        let limits = AcceptLimits {
            max_connections: 16,
            rejected: prometheus::IntCounter::new("rejected", "rejected").unwrap(),
            overload: None,
        };
        let accept = {
            let drain = drain.clone();
            tokio::spawn(async move {
                accept_loop(&socket, "test", limits, &drain, |mut stream, _peer| {
                    // Runs on the worker: answers with the worker's index
                    // and the thread's name, from the connection's task.
                    Some(async move {
                        let who = format!(
                            "{} {}",
                            workers::current(),
                            std::thread::current().name().unwrap_or("?")
                        );
                        let mut byte = [0u8; 1];
                        let _ = stream.read_exact(&mut byte).await;
                        let _ = stream.write_all(who.as_bytes()).await;
                    })
                })
                .await
            })
        };
        let mut answers = Vec::new();
        for _ in 0..6 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"?").await.unwrap();
            let mut who = String::new();
            tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut who))
                .await
                .expect("the connection is served")
                .unwrap();
            answers.push(who);
        }
        let main = std::thread::current().name().unwrap_or("?").to_string();
        let expected: Vec<String> = [0, 1, 2, 0, 1, 2]
            .iter()
            .map(|&i| match i {
                0 => format!("0 {main}"),
                i => format!("{i} sane-worker-{i}"),
            })
            .collect();
        assert_eq!(answers, expected);
        drain.start();
        accept.await.unwrap();
    });
}
