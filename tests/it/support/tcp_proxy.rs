//! A loopback TCP proxy between the bridge and a gateway that can cut every
//! connection on demand: [`TcpProxy::cut`] closes all live connections and
//! refuses new ones (accepted, then closed at once) until [`TcpProxy::restore`].
//! Runs on its own thread and runtime, so it works whatever the test blocks on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

struct Shared {
    cut: AtomicBool,
    accepted: AtomicUsize,
    /// Bumped on every cut: live connections end when it changes.
    epoch: watch::Sender<u64>,
}

pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listen on 127.0.0.1 (OS-chosen port) and forward to `127.0.0.1:target`.
    pub fn start(target: u16) -> TcpProxy {
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            epoch,
        });
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("proxy bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("proxy addr").port();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tcp-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    tokio::select! {
                        _ = accept_loop(listener, target, s) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("proxy thread");
        TcpProxy {
            port,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `ws://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Close every live connection (no close frame: like a network cut) and
    /// refuse new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, target: u16, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut epoch = shared.epoch.subscribe();
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let (mut a, mut b) = (client, upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = epoch.changed() => {}
            }
            // Both sockets drop here: the peers see the connection end.
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
