//! `wss://`: a gateway behind TLS signed by a private CA is reached only when
//! that CA is configured; verification is never skipped.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::support::app::spawn_app_env;
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

/// A CA and a server certificate for 127.0.0.1/localhost, made with openssl.
fn make_certs(dir: &Path) {
    // Each command is one line of whitespace-separated arguments.
    let run = |cmdline: &str| {
        let args: Vec<&str> = cmdline.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
         -keyout ca.key -out ca.pem -days 2 -subj /CN=bridge-test-ca",
    );
    run("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
         -keyout srv.key -out srv.csr -subj /CN=localhost");
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
         -out srv.pem -days 2 -extfile ext",
    );
}

/// A TLS terminator in front of `backend_port`; returns its port.
async fn tls_proxy(dir: &Path, backend_port: u16) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    actix_rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            actix_rt::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    port
}

#[actix_rt::test]
async fn wss_with_the_private_ca_connects_and_without_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let gw = FakeGateway::start(FakeOptions::default());
    let port = tls_proxy(dir.path(), gw.port()).await;
    let url = format!("wss://127.0.0.1:{port}/");

    // Without the CA: the certificate does not verify; never connected.
    let app = spawn_app_env(&url, None, &[]).await;
    assert!(app.wait_state("backoff", Duration::from_secs(5)).await);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let e = app.status().await.last_error.expect("an error");
    assert_eq!(e.code, "connect_failed");
    assert!(
        e.message.to_lowercase().contains("certificate") || e.message.contains("UnknownIssuer"),
        "{}",
        e.message
    );
    assert_eq!(gw.handshakes_total(), 0);
    app.stop().await;

    // With it: connected over TLS.
    let ca = dir.path().join("ca.pem").display().to_string();
    let app = spawn_app_env(
        &url,
        None,
        &[("OPENCLAW_BRIDGE__GATEWAY__TLS_CA_FILE", &ca)],
    )
    .await;
    assert!(
        app.wait_connected(Duration::from_secs(5)).await,
        "{:?}",
        app.status().await
    );
    let (status, body) = app.rpc(serde_json::json!({"method": "health"})).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}
