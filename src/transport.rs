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
//!
//! Each handshake uses the TLS material current when the connection was
//! accepted ([`crate::tls`]), so a certificate rotation affects new
//! connections only. An open connection's client certificate is checked
//! again against each new material: once it would be refused (revoked,
//! its CA removed), every further call on the connection is refused with
//! the reason ([`PeerInfo::check_certificate`], applied by the auth layer)
//! and, after a grace period that lets the client read that reason, the
//! connection is closed, which also ends its streams.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
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
use crate::log_limit::LogLimit;
use crate::tls::TlsMaterial;

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
    /// The verified client certificate (TLS connections).
    pub certificate: Option<PeerCertificate>,
}

impl PeerInfo {
    /// UNAUTHENTICATED, with the reason, once the TLS material the hub
    /// has loaded since this connection's handshake refuses its client
    /// certificate.
    pub fn check_certificate(&self) -> Result<()> {
        match &self.certificate {
            Some(certificate) => match certificate.refusal() {
                Some(why) => Err(Error::Unauthenticated(format!(
                    "the client certificate (serial {}) is no longer accepted: {why}",
                    certificate.serial
                ))),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// A connection's client certificate and whether it still stands.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The leaf's serial number, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Set once, when a reloaded material refuses the certificate.
    refused: Arc<OnceLock<String>>,
}

impl PeerCertificate {
    fn new(serial: String) -> Self {
        PeerCertificate {
            serial,
            refused: Arc::default(),
        }
    }

    /// Why the current TLS material refuses this certificate, if it does.
    pub fn refusal(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }
}

/// Limits on connections before and while they are trusted.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A TLS handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// Open connections at most; further peers wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection whose client certificate was refused by a
    /// reload stays open (its calls refused with the reason) before it is
    /// closed.
    pub refused_certificate_grace: Duration,
}

/// Resolves, with the reason, when the connection must close.
type Closing = Pin<Box<dyn Future<Output = String> + Send>>;

/// An accepted (and, with TLS, authenticated) connection.
pub struct Connection {
    stream: Stream,
    info: PeerInfo,
    /// TLS: watches the loaded material for a refusal of this
    /// connection's certificate (polled with the connection's I/O, so it
    /// needs no task of its own).
    closing: Option<Closing>,
    /// Set when `closing` resolved: every later read and write fails.
    closed: Option<String>,
    /// Frees a connection slot when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Polls the certificate watch; an error once the connection must
    /// close. The I/O methods call this first, so the watch is polled with
    /// the task that drives the connection and wakes it.
    fn poll_standing(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.is_none() {
            if let Some(closing) = &mut self.closing {
                if let Poll::Ready(why) = closing.as_mut().poll(cx) {
                    self.closing = None;
                    self.closed = Some(why);
                }
            }
        }
        match &self.closed {
            Some(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone())),
            None => Ok(()),
        }
    }
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
        let this = self.get_mut();
        if let Err(e) = this.poll_standing(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
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
        let this = self.get_mut();
        if let Err(e) = this.poll_standing(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_standing(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
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
        let this = self.get_mut();
        if let Err(e) = this.poll_standing(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
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

/// Accepts connections until `shutdown` turns true (or the receiver of the
/// returned stream is dropped). With `tls`, only peers that complete a
/// mutual-TLS handshake within the timeout are yielded.
pub fn incoming(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<TlsMaterial>>>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
            match &tls {
                None => {
                    let info = PeerInfo {
                        remote_addr: Some(remote_addr),
                        identity: PeerIdentity::Plaintext,
                        certificate: None,
                    };
                    let connection = Connection {
                        stream: Stream::Plain(socket),
                        info,
                        closing: None,
                        closed: None,
                        _slot: slot,
                    };
                    let _ = tx.send(Ok(connection)).await;
                }
                Some(materials) => {
                    // The material of this handshake, marked as seen: the
                    // connection's watch wakes only for later ones.
                    let mut materials = materials.clone();
                    let material = materials.borrow_and_update().clone();
                    tokio::spawn(async move {
                        let acceptor = TlsAcceptor::from(material.server_config());
                        let handshake = acceptor.accept(socket).into_fallible();
                        match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                let connection =
                                    authenticated(stream, remote_addr, materials, limits, slot);
                                let _ = tx.send(Ok(connection)).await;
                            }
                            Ok(Err((error, socket))) => {
                                log_refused_handshake(remote_addr, &error);
                                // The alert is written; let the client read it
                                // before the socket goes.
                                drop(slot);
                                linger(socket).await;
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

/// The connection a completed mutual-TLS handshake yields: the identity
/// and serial read from the client certificate, and a watch that closes
/// it once a reloaded material refuses that certificate.
fn authenticated(
    stream: TlsStream<TcpStream>,
    remote_addr: SocketAddr,
    materials: watch::Receiver<Arc<TlsMaterial>>,
    limits: ConnectionLimits,
    slot: OwnedSemaphorePermit,
) -> Connection {
    let identity = peer_identity(&stream);
    let chain: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let certificate = chain.first().map(|leaf| {
        PeerCertificate::new(
            crate::pki::certificate_serial(leaf).unwrap_or_else(|| "unknown".into()),
        )
    });
    let closing = certificate.clone().map(|certificate| {
        Box::pin(watch_certificate(
            materials,
            chain,
            certificate,
            identity.clone(),
            limits.refused_certificate_grace,
        )) as Closing
    });
    Connection {
        stream: Stream::Tls(Box::new(stream)),
        info: PeerInfo {
            remote_addr: Some(remote_addr),
            identity,
            certificate,
        },
        closing,
        closed: None,
        _slot: slot,
    }
}

/// Refused handshakes are logged at `warn` — the operator's only view of a
/// client with the wrong certificate — but at most 10 at once and then one
/// a second, so a scanner cannot flood the log.
static REFUSED_HANDSHAKES: LogLimit = LogLimit::new(10, Duration::from_secs(1));

fn log_refused_handshake(remote_addr: SocketAddr, error: &io::Error) {
    let Some(held_back) = REFUSED_HANDSHAKES.admit() else {
        return;
    };
    let reason = handshake_refusal(error);
    if held_back > 0 {
        tracing::warn!(
            peer = %remote_addr,
            %reason,
            more_refused_since_last_line = held_back,
            "TLS handshake refused"
        );
    } else {
        tracing::warn!(peer = %remote_addr, %reason, "TLS handshake refused");
    }
}

/// Why a handshake failed, in the operator's terms: what is wrong with the
/// client's certificate, when that is the reason.
pub fn handshake_refusal(error: &io::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return error.to_string();
    };
    match tls {
        E::NoCertificatesPresented => "the client presented no certificate".into(),
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "the client certificate is not signed by a CA in {} (alert unknown_ca)",
            crate::pki::CA_CERT
        ),
        E::InvalidCertificate(C::Revoked) => format!(
            "the client certificate is revoked: {} lists its serial (alert certificate_revoked)",
            crate::pki::CRL
        ),
        E::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "the client certificate is not for client authentication (no clientAuth extended \
             key usage: a server certificate?) (alert unsupported_certificate)"
                .into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the client certificate has expired (alert certificate_expired)".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the client certificate is not valid yet (alert certificate_expired)".into()
        }
        other => other.to_string(),
    }
}

/// After a refused handshake: half-close (the alert is already written),
/// then read and discard what the client sends for a moment. Closing a
/// socket with unread data makes the kernel send a reset, and a client that
/// already sent its first request with its certificate (TLS 1.3 clients
/// do) would then see "connection reset" or "broken pipe" instead of the
/// alert saying what is wrong.
async fn linger(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = socket.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Re-checks a connection's client certificate `chain` against each new
/// TLS material; once one refuses it, marks `certificate` refused (the
/// auth layer then refuses every call with the reason), waits `grace`
/// and resolves with the reason to close the connection.
async fn watch_certificate(
    mut materials: watch::Receiver<Arc<TlsMaterial>>,
    chain: Vec<CertificateDer<'static>>,
    certificate: PeerCertificate,
    identity: PeerIdentity,
    grace: Duration,
) -> String {
    let why = loop {
        if materials.changed().await.is_err() {
            // The hub is gone; the connection goes with it.
            std::future::pending::<()>().await;
        }
        let material = materials.borrow_and_update().clone();
        if let Some(why) = material.refusal(&chain) {
            break why;
        }
    };
    let caller = match &identity {
        PeerIdentity::Verified(identity) => identity.to_string(),
        PeerIdentity::Unidentified(_) | PeerIdentity::Plaintext => "unidentified".into(),
    };
    tracing::info!(
        %caller,
        serial = %certificate.serial,
        reason = %why,
        ?grace,
        "client certificate no longer accepted: refusing its calls, closing its connection"
    );
    let _ = certificate.refused.set(why.clone());
    tokio::time::sleep(grace).await;
    format!(
        "client certificate (serial {}) no longer accepted: {why}",
        certificate.serial
    )
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
