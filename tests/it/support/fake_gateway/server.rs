//! The accept loop: one task per TCP connection, and the handle's listen/shutdown commands.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::connection::run_conn;
use super::state::{ServerCmd, Shared};

async fn accept_opt(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<ServerCmd>,
) {
    let mut listener = Some(TcpListener::from_std(listener).expect("from_std"));
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None | Some(ServerCmd::Shutdown) => break,
                Some(ServerCmd::Listen(l, ack)) => {
                    listener = l.map(|l| TcpListener::from_std(l).expect("from_std"));
                    let _ = ack.send(());
                }
            },
            res = accept_opt(&listener) => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (tx, rx) = mpsc::unbounded_channel();
                    let n = {
                        let mut st = shared.lock();
                        st.connections_total += 1;
                        st.connect_times.push(std::time::Instant::now());
                        let n = st.connections_total;
                        st.conns.insert(n, tx.clone());
                        n
                    };
                    tokio::spawn(run_conn(stream, n, shared.clone(), tx, rx));
                }
                Err(e) => {
                    eprintln!("fake gateway: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}
