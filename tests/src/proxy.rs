//! A TCP proxy in front of a database that a test can partition: while partitioned it stops
//! forwarding (open connections stall, new ones are accepted and stall), as a network outage
//! or a hung server looks to a client; healing closes every stalled connection and forwards
//! new ones again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    partitioned: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (partitioned, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, watch.clone()));
            }
        });
        Self {
            addr,
            partitioned,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, partitioned: watch::Receiver<bool>) {
    let stall = |mut partitioned: watch::Receiver<bool>| async move {
        // Hold the sockets without reading until healed; then they close.
        let _ = partitioned.wait_for(|p| !*p).await;
    };
    let now_partitioned = *partitioned.borrow();
    if now_partitioned {
        return stall(partitioned).await;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let mut watch = partitioned.clone();
    let partition = async move {
        let _ = watch.wait_for(|p| *p).await;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        () = partition => {}
    }
    stall(partitioned).await
}
