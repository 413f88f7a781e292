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
//! the reason ([`PeerInfo::check_admitted`], applied by the auth layer)
//! and, after a grace period that lets the client read that reason, the
//! connection is closed, which also ends its streams.
//!
//! What a connection may hold is decided in [`admission`]: handshakes
//! draw from their own budget, and when it is full the oldest pending one
//! is cut, so sockets that never finish a handshake cannot starve the
//! clients that do; authenticated connections have their own budget and a
//! cap per identity. A connection with no call in progress for
//! `idle_timeout` is closed.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::domain::identity::Identity;
use crate::error::{Error, Result};
use crate::log_limit::LogLimit;

pub mod admission;
use crate::tls::TlsMaterial;
pub use admission::Admission;
use admission::{ConnectionSlot, Refused};

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
    /// Set when the connection was refused a slot (its identity holds its
    /// share of connections): every call on it is refused with this, and
    /// it closes after a moment.
    pub over_limit: Option<String>,
    /// Calls in progress on the connection, and when the last one ended.
    pub activity: Arc<Activity>,
}

impl PeerInfo {
    /// A plaintext or test connection's facts.
    pub fn new(remote_addr: Option<SocketAddr>, identity: PeerIdentity) -> Self {
        PeerInfo {
            remote_addr,
            identity,
            certificate: None,
            over_limit: None,
            activity: Arc::default(),
        }
    }

    /// Whether calls on this connection are still accepted:
    /// RESOURCE_EXHAUSTED when the connection was refused a slot, and
    /// UNAUTHENTICATED, with the reason, once the TLS material the hub has
    /// loaded since the handshake refuses its client certificate.
    pub fn check_admitted(&self) -> Result<()> {
        if let Some(why) = &self.over_limit {
            return Err(Error::ResourceExhausted(why.clone()));
        }
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

    /// Marks a call in progress until the guard is dropped (a connection
    /// with a call in progress is not idle).
    pub fn begin_call(&self) -> CallGuard {
        self.activity.calls.fetch_add(1, Ordering::Relaxed);
        CallGuard {
            activity: self.activity.clone(),
        }
    }

    /// The serial of the client certificate ("" without one).
    pub fn serial(&self) -> &str {
        self.certificate.as_ref().map_or("", |c| c.serial.as_str())
    }
}

/// What a connection is doing, for its idle timeout.
#[derive(Debug)]
pub struct Activity {
    calls: AtomicUsize,
    /// Milliseconds after `EPOCH` when the last call ended (or the
    /// connection opened).
    last: AtomicU64,
}

/// The transport's own time origin for idle accounting.
fn since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            calls: AtomicUsize::new(0),
            last: AtomicU64::new(since_epoch()),
        }
    }
}

impl Activity {
    /// How long the connection has been without a call (zero while one is
    /// in progress).
    fn idle_for(&self) -> Duration {
        if self.calls.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(since_epoch().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// A call in progress; see [`PeerInfo::begin_call`].
#[derive(Debug)]
pub struct CallGuard {
    activity: Arc<Activity>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.activity.last.store(since_epoch(), Ordering::Relaxed);
        self.activity.calls.fetch_sub(1, Ordering::Relaxed);
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
    /// A TLS handshake not finished within this is dropped…
    pub handshake_timeout: Duration,
    /// …and one whose ClientHello arrived with more than half the
    /// handshake budget in use has this for the rest.
    pub handshake_timeout_under_pressure: Duration,
    /// Handshakes in progress at most (and never more than the open files
    /// left allow); with no room, one is cut for the new one (`admission`).
    pub max_handshakes: usize,
    /// A source with more handshakes in progress than this is the first to
    /// give one up when there is no room.
    pub max_handshakes_per_source: usize,
    /// Authenticated connections open at most; one more is closed after
    /// its handshake.
    pub max_connections: usize,
    /// Authenticated connections of one identity at most; one more has
    /// its calls refused (RESOURCE_EXHAUSTED) and closes after
    /// `over_limit_grace`.
    pub max_connections_per_identity: usize,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// How long a connection whose client certificate was refused by a
    /// reload stays open (its calls refused with the reason) before it is
    /// closed.
    pub refused_certificate_grace: Duration,
    /// How long a connection over its identity's cap stays open (its calls
    /// refused with the reason) before it is closed.
    pub over_limit_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshake_timeout: Duration::from_secs(10),
            handshake_timeout_under_pressure: Duration::from_secs(1),
            max_handshakes: 16_384,
            max_handshakes_per_source: 4096,
            max_connections: 10_000,
            max_connections_per_identity: 64,
            idle_timeout: Duration::from_secs(600),
            refused_certificate_grace: Duration::from_secs(5),
            over_limit_grace: Duration::from_secs(1),
        }
    }
}

/// Told of each connection the transport refused after its handshake
/// (over a budget or a cap), with the peer's facts and why — for the
/// audit log.
pub type RefusalSink = Arc<dyn Fn(&PeerInfo, &str) + Send + Sync>;

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
    /// Closes the connection once it has had no call for the idle timeout.
    idle: Option<IdleWatch>,
    /// Frees the connection's slots when it is dropped.
    _slot: Option<ConnectionSlot>,
}

/// The timer of a connection's idle timeout, polled with its I/O.
struct IdleWatch {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleWatch {
    fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        IdleWatch {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// The reason to close, once the connection has been idle long enough.
    fn poll(&mut self, cx: &mut Context<'_>) -> Option<String> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let idle = self.activity.idle_for();
            if idle >= self.timeout {
                return Some(format!(
                    "closed after {} s without a call (limits.idle_timeout_seconds)",
                    self.timeout.as_secs()
                ));
            }
            let next = tokio::time::Instant::now() + (self.timeout - idle);
            self.timer.as_mut().reset(next);
        }
        None
    }
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
        if self.closed.is_none() {
            if let Some(why) = self.idle.as_mut().and_then(|idle| idle.poll(cx)) {
                tracing::debug!(peer = ?self.info.remote_addr, "{why}");
                self.closed = Some(why);
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
/// mutual-TLS handshake within their deadline, and get a connection slot,
/// are yielded; `refusals` hears of those refused a slot.
pub fn incoming(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<TlsMaterial>>>,
    admission: Arc<Admission>,
    refusals: Option<RefusalSink>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let limits = *admission.limits();
    // Refused handshakes linger a moment so their client reads the alert;
    // past this many at once, they close at once.
    let lingering = Arc::new(Semaphore::new(256));
    tokio::spawn(async move {
        loop {
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
                    let connection = Connection {
                        stream: Stream::Plain(socket),
                        info: PeerInfo::new(Some(remote_addr), PeerIdentity::Plaintext),
                        closing: None,
                        closed: None,
                        idle: None,
                        _slot: None,
                    };
                    let _ = tx.send(Ok(connection)).await;
                }
                Some(materials) => {
                    // The material of this handshake, marked as seen: the
                    // connection's watch wakes only for later ones.
                    let mut materials = materials.clone();
                    let material = materials.borrow_and_update().clone();
                    // A second handle on the socket, for the budget to see
                    // whether the client has spoken (a dup of the
                    // descriptor, closed once its hello is read).
                    let probe = std::os::fd::AsFd::as_fd(&socket)
                        .try_clone_to_owned()
                        .ok()
                        .map(std::net::TcpStream::from);
                    let ticket = admission.handshake(remote_addr.ip(), probe);
                    let admission = admission.clone();
                    let lingering = lingering.clone();
                    let refusals = refusals.clone();
                    tokio::spawn(async move {
                        let mut ticket = ticket;
                        let deadline = tokio::time::Instant::now() + ticket.deadline;
                        // The hello first: once it is in, this handshake is
                        // not among the first to be cut (`admission`).
                        let greeter = ticket.greeter();
                        let handshake = async {
                            let mut hello = tokio_rustls::LazyConfigAcceptor::new(
                                rustls::server::Acceptor::default(),
                                socket,
                            );
                            let start = match tokio::time::timeout_at(deadline, &mut hello).await {
                                Ok(Ok(start)) => start,
                                Ok(Err(error)) => return Ok(Err((error, hello.take_io()))),
                                Err(elapsed) => return Err(elapsed),
                            };
                            // Under pressure, what is left of the handshake
                            // gets the short deadline.
                            let deadline = match greeter.greeted() {
                                Some(left) => deadline.min(tokio::time::Instant::now() + left),
                                None => deadline,
                            };
                            let rest = start.into_stream(material.server_config()).into_fallible();
                            tokio::time::timeout_at(deadline, rest)
                                .await
                                .map(|done| done.map_err(|(error, socket)| (error, Some(socket))))
                        };
                        let done = tokio::select! {
                            done = handshake => done,
                            _ = &mut ticket.cut => {
                                log_cut_handshake(remote_addr, &admission);
                                return;
                            }
                        };
                        drop(ticket);
                        match done {
                            Ok(Ok(stream)) => {
                                let connection = authenticated(
                                    stream,
                                    remote_addr,
                                    materials,
                                    limits,
                                    &admission,
                                    refusals.as_ref(),
                                );
                                if let Some(connection) = connection {
                                    let _ = tx.send(Ok(connection)).await;
                                }
                            }
                            Ok(Err((error, socket))) => {
                                log_refused_handshake(remote_addr, &error);
                                // The alert is written; let the client read it
                                // before the socket goes.
                                if let (Some(socket), Ok(_lingering)) =
                                    (socket, lingering.try_acquire_owned())
                                {
                                    linger(socket).await;
                                }
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
/// and serial read from the client certificate, its slots, a watch that
/// closes it once a reloaded material refuses that certificate, and its
/// idle timer. `None` when every connection slot is taken.
fn authenticated(
    stream: TlsStream<TcpStream>,
    remote_addr: SocketAddr,
    materials: watch::Receiver<Arc<TlsMaterial>>,
    limits: ConnectionLimits,
    admission: &Arc<Admission>,
    refusals: Option<&RefusalSink>,
) -> Option<Connection> {
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
    let mut info = PeerInfo::new(Some(remote_addr), identity.clone());
    info.certificate = certificate.clone();
    // Connections are counted by the identity the certificate proves, or
    // by the certificate itself when it proves none.
    let owner = match &identity {
        PeerIdentity::Verified(identity) => identity.to_string(),
        _ => format!("certificate {}", info.serial()),
    };
    let (slot, closing) = match admission.connection(&owner) {
        Ok(slot) => {
            let closing = certificate.clone().map(|certificate| {
                Box::pin(watch_certificate(
                    materials,
                    chain,
                    certificate,
                    identity,
                    limits.refused_certificate_grace,
                )) as Closing
            });
            (Some(slot), closing)
        }
        Err(Refused::IdentityFull(cap)) => {
            // Served just long enough to tell its calls why.
            let why = format!(
                "{owner} already has {cap} connections open to this hub \
                 (limits.max_connections_per_identity); close some or reuse one"
            );
            log_refused_connection(remote_addr, &why);
            if let Some(sink) = refusals {
                sink(&info, &why);
            }
            info.over_limit = Some(why.clone());
            let grace = limits.over_limit_grace;
            let closing = Box::pin(async move {
                tokio::time::sleep(grace).await;
                why
            }) as Closing;
            (None, Some(closing))
        }
        Err(Refused::Full(max)) => {
            let why = format!(
                "all {max} connection slots are taken (limits.max_connections); closed after \
                 the handshake"
            );
            log_refused_connection(remote_addr, &why);
            if let Some(sink) = refusals {
                sink(&info, &why);
            }
            return None;
        }
    };
    Some(Connection {
        stream: Stream::Tls(Box::new(stream)),
        idle: Some(IdleWatch::new(info.activity.clone(), limits.idle_timeout)),
        info,
        closing,
        closed: None,
        _slot: slot,
    })
}

/// Handshakes cut to make room and connections refused a slot: logged at
/// `warn` like refused handshakes, each kind under its own limit.
static CUT_HANDSHAKES: LogLimit = LogLimit::new(3, Duration::from_secs(10));
static REFUSED_CONNECTIONS: LogLimit = LogLimit::new(10, Duration::from_secs(1));

fn log_cut_handshake(remote_addr: SocketAddr, admission: &Admission) {
    if let Some(held_back) = CUT_HANDSHAKES.admit() {
        tracing::warn!(
            peer = %remote_addr,
            pending = admission.pending(),
            cut_since_start = admission.cut(),
            more_cut_since_last_line = held_back,
            "TLS handshake cut to make room for a newer one: the handshake budget \
             (limits.max_handshakes, limits.max_handshakes_per_source) is full"
        );
    }
}

fn log_refused_connection(remote_addr: SocketAddr, why: &str) {
    if let Some(held_back) = REFUSED_CONNECTIONS.admit() {
        tracing::warn!(
            peer = %remote_addr,
            reason = why,
            more_refused_since_last_line = held_back,
            "connection refused"
        );
    }
}

/// Refused handshakes are logged at `warn` — the operator's only view of a
/// client with the wrong certificate — but at most 10 at once and then one
/// a second, so a scanner cannot flood the log.
static REFUSED_HANDSHAKES: LogLimit = LogLimit::new(10, Duration::from_secs(1));

fn log_refused_handshake(remote_addr: SocketAddr, error: &io::Error) {
    // A client that went away mid-handshake was not refused.
    if matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        tracing::debug!(peer = %remote_addr, %error, "client left during the TLS handshake");
        return;
    }
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
        Some(leaf) => match crate::pki::from_certificate(leaf) {
            Ok(identity) => PeerIdentity::Verified(identity),
            Err(why) => PeerIdentity::Unidentified(why),
        },
        // Unreachable with a verifier that requires client certificates.
        None => PeerIdentity::Unidentified("no client certificate".into()),
    }
}
