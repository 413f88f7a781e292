//! Accepting connections: TCP, then (unless in insecure dev mode) a mutual
//! TLS handshake, before tonic sees the connection.
//!
//! The hub does its own TLS rather than using tonic's so that it controls
//! what a connection costs before it is trusted: every handshake runs in
//! its own task under a timeout (a silent peer cannot stall the accept
//! loop), TCP_NODELAY is set on each accepted socket (tonic ignores it for
//! custom listeners, and without it small responses wait ~40 ms for
//! Nagle), the number of open connections is bounded, and the caller's
//! identity is read out of its certificate once per connection, not per
//! request. The identity travels to the request layer as tonic "connect
//! info" ([`PeerInfo`]).

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::auth::identity::Identity;
use crate::error::{Error, Result};

/// What the transport learned about a peer.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// Verified client certificate with a hub identity.
    Verified(Identity),
    /// Verified client certificate, but without a usable hub identity.
    Unidentified(String),
    /// Plaintext connection (`--insecure-dev`): no identity.
    Plaintext,
}

/// Per-connection facts, available to every request on the connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    pub identity: PeerIdentity,
}

/// Limits on connections before and while they are trusted.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A TLS handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// Open connections at most; further peers wait in the listen backlog.
    pub max_connections: usize,
}

/// An accepted (and, with TLS, authenticated) connection.
pub struct Connection {
    stream: Stream,
    info: PeerInfo,
    /// Frees a connection slot when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))
}

/// Builds the server's TLS configuration: its certificate and key, and
/// client certificates required and verified against `ca`.
pub fn server_tls_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |path: &Path, e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("invalid PEM in {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read_pem(ca)?) {
        roots
            .add(cert.map_err(|e| bad(ca, &e))?)
            .map_err(|e| bad(ca, &e))?;
    }
    let chain = CertificateDer::pem_slice_iter(&read_pem(cert)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key)?).map_err(|e| bad(key, &e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(ca, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS protocol setup: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections until `shutdown` turns true (or the receiver of the
/// returned stream is dropped). With `tls`, only peers that complete a
/// mutual-TLS handshake within the timeout are yielded.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                () = stopped(&mut shutdown) => break,
                _ = tx.closed() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let (socket, remote_addr) = tokio::select! {
                () = stopped(&mut shutdown) => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically EMFILE or a peer that reset before accept;
                        // back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = socket.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let tx = tx.clone();
            match &acceptor {
                None => {
                    let info = PeerInfo {
                        remote_addr: Some(remote_addr),
                        identity: PeerIdentity::Plaintext,
                    };
                    let connection = Connection {
                        stream: Stream::Plain(socket),
                        info,
                        _slot: slot,
                    };
                    let _ = tx.send(Ok(connection)).await;
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(
                            limits.handshake_timeout,
                            acceptor.accept(socket),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => {
                                let identity = peer_identity(&stream);
                                let connection = Connection {
                                    stream: Stream::Tls(Box::new(stream)),
                                    info: PeerInfo {
                                        remote_addr: Some(remote_addr),
                                        identity,
                                    },
                                    _slot: slot,
                                };
                                let _ = tx.send(Ok(connection)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%remote_addr, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%remote_addr, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
        tracing::debug!("stopped accepting connections");
    });
    ReceiverStream::new(rx)
}

/// Resolves once `shutdown` turns true (never, if its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn peer_identity(stream: &TlsStream<TcpStream>) -> PeerIdentity {
    let (_, session) = stream.get_ref();
    match session.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => match Identity::from_certificate(leaf) {
            Ok(identity) => PeerIdentity::Verified(identity),
            Err(why) => PeerIdentity::Unidentified(why),
        },
        // Unreachable with a verifier that requires client certificates.
        None => PeerIdentity::Unidentified("no client certificate".into()),
    }
}
