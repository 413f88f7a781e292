//! The tower layer in front of every service: resolves the caller's
//! [`Identity`] from the connection, applies the policy, and puts the
//! identity into the request's extensions for the handlers.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use super::identity::Identity;
use super::policy;
use crate::error::{Error, Result};
use crate::transport::{PeerIdentity, PeerInfo};

/// In `--insecure-dev` mode only: the metadata header that says which
/// instance a plaintext caller is. Without it the caller is an operator.
pub const INSECURE_IDENTITY_HEADER: &str = "x-learning-hub-instance";

/// Installs [`AuthService`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthLayer {
    insecure_dev: bool,
}

impl AuthLayer {
    /// `insecure_dev` accepts plaintext peers (identity from
    /// [`INSECURE_IDENTITY_HEADER`]); never use it outside development.
    pub fn new(insecure_dev: bool) -> Self {
        AuthLayer { insecure_dev }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            insecure_dev: self.insecure_dev,
        }
    }
}

/// Authenticates and authorizes each request before passing it on.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    insecure_dev: bool,
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
                    crate::validate::name(INSECURE_IDENTITY_HEADER, id)?;
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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let decided = identify(&request, self.insecure_dev).and_then(|identity| {
            policy::authorize(request.uri().path(), &identity).map(|()| identity)
        });
        match decided {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                Box::pin(self.inner.call(request))
            }
            Err(e) => {
                tracing::debug!(path = request.uri().path(), error = %e, "request refused");
                let response = tonic::Status::from(e).into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
