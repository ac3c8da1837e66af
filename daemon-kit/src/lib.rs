//! The edge every sidestream daemon binary shares, so each `main.rs` only
//! names its daemon: flags parsed with sysexits exit codes, the wait for a stop
//! signal, gRPC server TLS read from files, and the connections a gRPC server
//! accepts (with `TCP_NODELAY`).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Exit code for bad flags or configuration (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line into `C`. `--help` and `--version` print and give
/// `Err(SUCCESS)`; bad flags print the reason and give `Err(EXIT_USAGE)`.
pub fn parse_flags<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|error| {
        let _ = error.print();
        if error.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Why a daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or Ctrl-C: stop in order.
    Signal,
    /// One of the daemon's own tasks ended: exit with failure.
    TaskEnded,
}

/// Waits for SIGTERM, Ctrl-C or `tasks` (the daemon's servers) to end.
/// `Err` when SIGTERM cannot be listened for.
pub async fn wait_for_stop(tasks: impl Future<Output = ()>) -> std::io::Result<Stop> {
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        () = tasks => {
            tracing::error!("A server task stopped; exiting");
            Stop::TaskEnded
        }
        _ = tokio::signal::ctrl_c() => Stop::Signal,
        _ = terminate.recv() => Stop::Signal,
    })
}

/// Server TLS from PEM files: `None` without a certificate and key; client
/// certificates required when `client_ca` is given. The error names the file.
pub fn server_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// The connections a gRPC server accepts on `listener`, each with
/// `TCP_NODELAY` set (before TLS, so TLS connections have it too). Pass it to
/// `serve_with_incoming*`: those ignore `Server::tcp_nodelay`, and a socket
/// left with Nagle's algorithm holds a small response until the client's
/// delayed ACK, about 40 ms on Linux.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpStream;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_grpc_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // What a plain accept gives, so the assertion below can fail.
        let _client = TcpStream::connect(addr).await.unwrap();
        let (plain, _) = listener.accept().await.unwrap();
        assert!(!plain.nodelay().unwrap());

        let mut incoming = grpc_incoming(listener);
        for _ in 0..2 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let accepted = incoming.next().await.unwrap().unwrap();
            assert!(accepted.nodelay().unwrap());
        }
    }

    #[test]
    fn tls_needs_both_files_and_names_a_missing_one() {
        assert!(server_tls(None, None, None).unwrap().is_none());
        assert!(server_tls(Some(Path::new("/x")), None, None)
            .unwrap()
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "pem").unwrap();
        let missing = dir.path().join("key.pem");
        let error = server_tls(Some(&cert), Some(&missing), None).unwrap_err();
        assert!(
            error.starts_with(&format!("cannot read {}", missing.display())),
            "{error}"
        );
        let key = dir.path().join("key2.pem");
        std::fs::write(&key, "pem").unwrap();
        assert!(server_tls(Some(&cert), Some(&key), None).unwrap().is_some());
        let error = server_tls(Some(&cert), Some(&key), Some(&missing)).unwrap_err();
        assert!(error.contains("key.pem"), "{error}");
    }
}
