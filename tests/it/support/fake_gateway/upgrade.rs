//! The HTTP upgrade request: reading and parsing it, refusing it, or hanging on it.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::state::ConnCmd;

/// Cap on the HTTP upgrade request head.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// The HTTP upgrade request of a connection.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Read and parse the HTTP upgrade request. Returns the request and any bytes read past it.
pub(super) async fn read_upgrade(
    stream: &mut TcpStream,
) -> Result<(UpgradeRequest, BytesMut), &'static str> {
    let mut buf = BytesMut::with_capacity(2048);
    let end = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() > MAX_HTTP_HEAD {
            return Err("431 Request Header Fields Too Large");
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(""),
            Ok(_) => {}
        }
    };
    let head = buf.split_to(end + 4);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((
        UpgradeRequest {
            method,
            path,
            headers,
        },
        buf,
    ))
}

pub(super) async fn http_status(stream: &mut TcpStream, status: &str) {
    let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Wait for a command that ends a not-upgraded connection.
pub(super) async fn hang(rx: &mut mpsc::UnboundedReceiver<ConnCmd>, stream: TcpStream) {
    loop {
        match rx.recv().await {
            None | Some(ConnCmd::DropTcp) | Some(ConnCmd::Close(..)) => return,
            Some(ConnCmd::Reset) => {
                let _ = stream.set_zero_linger();
                return;
            }
            Some(_) => {}
        }
    }
}
