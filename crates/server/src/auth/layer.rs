//! The tower layer in front of every service. For each call it resolves
//! the caller's [`Identity`] from the connection, checks that the
//! connection's client certificate is still accepted (a reload may have
//! revoked it since the handshake), checks an instance's API
//! key, applies the role policy and the rate limit, puts the identity into
//! the request's extensions for the handlers, and records the call in the
//! audit log with the status it ended with — refused calls included.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use super::audit::{CountingBody, ReportingBody, status_code};
use super::identity::{Identity, Role};
use super::{AccessControl, keys, policy};
use crate::domain::model::AuditEntry;
use crate::error::{Error, Result};
use crate::log_limit::LogLimit;
use crate::schema;
use crate::transport::{PeerIdentity, PeerInfo};

/// The longest unknown path an audit entry keeps.
const MAX_AUDITED_PATH: usize = 128;

/// Health and reflection: open to every authenticated peer, without a key
/// or the rate limit.
fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// Calls made over and over by machines: audited like health checks, once
/// per window and kind with a count of the rest, so that polling a
/// replica's status, or a peer region's hub pulling every second, neither
/// fills the audit log nor moves the log it reports on (a wake-up that
/// moved the log would wake the caller back, and so on).
fn is_monitoring(path: &str) -> bool {
    matches!(
        path,
        "/learninghub.v1.Admin/GetReplicaStatus"
            | "/learninghub.v1.Federation/Pull"
            | "/learninghub.v1.Federation/Wake"
    )
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Refused calls are logged at `warn`, a burst of 10 and then one a
/// second: the operator sees who is refused and why, a flood does not
/// flood the log.
static REFUSED_CALLS: LogLimit = LogLimit::new(10, std::time::Duration::from_secs(1));

fn log_refused_call(peer: Option<&PeerInfo>, status: &tonic::Status) {
    let Some(held_back) = REFUSED_CALLS.admit() else {
        return;
    };
    let peer = peer
        .and_then(|p| p.remote_addr)
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::warn!(
        %peer,
        code = ?status.code(),
        reason = status.message(),
        more_refused_since_last_line = held_back,
        "call refused"
    );
}

pub use learning_hub_proto::INSECURE_IDENTITY_HEADER;

/// Installs [`AuthService`] around a service.
#[derive(Clone)]
pub struct AuthLayer {
    insecure_dev: bool,
    access: Arc<dyn AccessControl>,
}

impl AuthLayer {
    /// `insecure_dev` accepts plaintext peers (identity from
    /// [`INSECURE_IDENTITY_HEADER`], no API keys); never use it outside
    /// development.
    pub fn new(insecure_dev: bool, access: Arc<dyn AccessControl>) -> Self {
        AuthLayer {
            insecure_dev,
            access,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            insecure_dev: self.insecure_dev,
            access: self.access.clone(),
        }
    }
}

/// Authenticates, authorizes, limits and audits each call.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    insecure_dev: bool,
    access: Arc<dyn AccessControl>,
}

fn identify<B>(request: &http::Request<B>, insecure_dev: bool) -> Result<Identity> {
    let Some(peer) = request.extensions().get::<PeerInfo>() else {
        return Err(Error::Unauthenticated(
            "connection carries no peer information".into(),
        ));
    };
    match &peer.identity {
        PeerIdentity::Verified(identity) => Ok(identity.clone()),
        PeerIdentity::Unidentified(why) => Err(Error::PermissionDenied(why.clone())),
        PeerIdentity::Plaintext if insecure_dev => {
            match request.headers().get(INSECURE_IDENTITY_HEADER) {
                Some(value) => {
                    let id = value
                        .to_str()
                        .map_err(|_| Error::invalid(INSECURE_IDENTITY_HEADER, "must be ASCII"))?;
                    super::identity::check_name(Role::Instance, id)
                        .map_err(|e| Error::invalid(INSECURE_IDENTITY_HEADER, e))?;
                    Ok(Identity::instance(id))
                }
                None => Ok(Identity::operator("insecure-dev")),
            }
        }
        PeerIdentity::Plaintext => Err(Error::Unauthenticated(
            "plaintext connections are not accepted".into(),
        )),
    }
}

/// Refusals that carry a retry hint.
enum Refusal {
    Error(Error),
    RateLimited(u64),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Error(e)
    }
}

impl<S> AuthService<S> {
    fn admit<B>(
        &self,
        request: &http::Request<B>,
        identity: &Identity,
    ) -> std::result::Result<(), Refusal> {
        // Checked per call, not per connection: a certificate revoked
        // while its connection is open is refused from the next call on.
        if let Some(peer) = request.extensions().get::<PeerInfo>() {
            peer.check_admitted()?;
        }
        // Health and reflection stay open to any peer the certificate
        // authenticated; everything else — the hub's services, and paths
        // that are none — wants the key and counts against the rate limit.
        let hub_call = !is_infrastructure(request.uri().path());
        if identity.role == Role::Instance && hub_call && !self.insecure_dev {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(keys::bearer);
            self.access.check_key(&identity.name, presented)?;
        }
        policy::authorize(request.uri().path(), identity)?;
        if identity.role == Role::Instance && hub_call {
            self.access
                .take_rate_token(identity)
                .map_err(Refusal::RateLimited)?;
        }
        Ok(())
    }
}

/// Read-your-writes across replicas: a client sends the highest log
/// position it was answered at ([`MIN_POSITION_HEADER`]); a replica that
/// has not folded that far waits up to this long, then refuses with
/// UNAVAILABLE and `retry-after`.
pub const READ_YOUR_WRITES_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The request header with the lowest log position the caller may be
/// answered from.
pub const MIN_POSITION_HEADER: &str = "x-hub-min-pos";
/// The response header with the log position of the state that answered.
pub const POSITION_HEADER: &str = "x-hub-log-pos";

/// The position a request asks to be answered at or after.
fn min_position<B>(request: &http::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(MIN_POSITION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Says which log position answered.
fn stamp_position(response: &mut http::Response<Body>, position: u64) {
    if let Ok(value) = http::HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert(POSITION_HEADER, value);
    }
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let access = self.access.clone();
        let bytes = Arc::new(AtomicU64::new(0));
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let path = request.uri().path();
        // Labels from the closed set of real RPCs: a caller cannot mint
        // metric series, log fields or stored strings by making paths up.
        let rpc = schema::rpc_label(path);
        let identified = identify(&request, self.insecure_dev);
        let (caller, role) = match &identified {
            Ok(identity) => (identity.name.clone(), identity.role.as_str().to_string()),
            Err(_) => (String::new(), "unknown".to_string()),
        };
        // Everything logged while the call is handled (the handler, the
        // hub core on this task) carries the method and who called it.
        let span = tracing::info_span!("rpc", rpc = %rpc, caller = %caller, role = %role);
        let draft = AuditEntry {
            sequence: 0,
            at: access.now(),
            caller,
            role,
            rpc: rpc.to_string(),
            code: 0,
            request_bytes: 0,
            count: 1,
            peer: peer
                .as_ref()
                .and_then(|p| p.remote_addr)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            serial: peer
                .as_ref()
                .map(|p| p.serial().to_string())
                .unwrap_or_default(),
            path: if rpc == schema::UNKNOWN_RPC {
                truncate(path, MAX_AUDITED_PATH).to_string()
            } else {
                String::new()
            },
        };
        let infrastructure = is_infrastructure(path);
        // The connection is busy until the call ends (its idle timeout).
        let in_progress = peer.as_ref().map(PeerInfo::begin_call);
        let arrived = std::time::Instant::now();
        let decided = identified
            .map_err(Refusal::from)
            .and_then(|identity| self.admit(&request, &identity).map(|()| identity));
        // Admitted calls to the hub's services are rate limited (instances)
        // or trusted (operators), so each is kept; everything else is
        // sampled.
        let sampled =
            decided.is_err() || infrastructure || is_monitoring(path) || rpc == schema::UNKNOWN_RPC;
        let record = {
            let access = access.clone();
            let bytes = bytes.clone();
            let span = span.clone();
            move |code: i32| {
                let elapsed = arrived.elapsed();
                drop(in_progress);
                // Called when the final status is known, which for most
                // calls is after the body, outside the handler's future.
                span.in_scope(|| {
                    tracing::debug!(
                        code,
                        elapsed_us = elapsed.as_micros() as u64,
                        "call finished"
                    )
                });
                access.observe(&draft.rpc, code, elapsed);
                access.audit(
                    AuditEntry {
                        code,
                        request_bytes: bytes.load(Ordering::Relaxed),
                        ..draft
                    },
                    sampled,
                )
            }
        };
        match decided {
            Ok(identity) => {
                let min_position = min_position(&request);
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(identity);
                let request =
                    http::Request::from_parts(parts, Body::new(CountingBody::new(body, bytes)));
                // The service is called once the hub has folded what the
                // caller saw (ready services here are always ready: a
                // clone takes this one's place).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let call_span = span.clone();
                Box::pin(
                    async move {
                        if let Some(position) = min_position {
                            if !access
                                .wait_for_position(position, READ_YOUR_WRITES_WAIT)
                                .await
                            {
                                let mut status = tonic::Status::unavailable(format!(
                                    "this replica has folded the log up to position {}, not yet \
                                     {position} (the caller's last write): retry, or call \
                                     another replica",
                                    access.log_position()
                                ));
                                status
                                    .metadata_mut()
                                    .insert("retry-after", tonic::metadata::MetadataValue::from(1));
                                record(status.code() as i32);
                                let mut response = status.into_http::<Body>();
                                stamp_position(&mut response, access.log_position());
                                return Ok(response);
                            }
                        }
                        let future = call_span.in_scope(|| inner.call(request));
                        let mut response = future.await?;
                        // After the call: a write's answer was installed
                        // before it was sent, so this is at or past it.
                        stamp_position(&mut response, access.log_position());
                        if let Some(code) = status_code(response.headers()) {
                            record(code);
                            return Ok(response);
                        }
                        Ok(response.map(|body| Body::new(ReportingBody::new(body, record))))
                    }
                    .instrument(span),
                )
            }
            Err(refusal) => {
                let _entered = span.enter();
                let status = match refusal {
                    Refusal::Error(e) => tonic::Status::from(e),
                    Refusal::RateLimited(seconds) => {
                        let mut status = tonic::Status::resource_exhausted(format!(
                            "rate limit reached; retry in {seconds} s"
                        ));
                        if let Ok(value) = seconds.to_string().parse() {
                            status.metadata_mut().insert("retry-after", value);
                        }
                        status
                    }
                };
                log_refused_call(peer.as_ref(), &status);
                record(status.code() as i32);
                let response = status.into_http::<Body>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
