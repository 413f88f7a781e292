//! Load shedding: a bound on the unary calls the hub works on at once,
//! with calls beyond it refused at the door.
//!
//! Why refuse instead of queueing: past its capacity a server that queues
//! only grows latency for everyone (every queued call waits behind all the
//! others, and callers time out and retry into the same queue). Refusing at
//! once, before authentication, decoding or any work, costs microseconds
//! and tells a client to back off (RESOURCE_EXHAUSTED with `retry-after`),
//! so the calls that are admitted keep the latency of an unloaded hub.
//!
//! Insight streams are not counted: they live for hours, and what bounds
//! them is the per-connection stream limit and the connection limit.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

/// The one streaming RPC, which is exempt from the bound.
const STREAM_PATH: &str = "/learninghub.v1.Hub/SubscribeInsights";

/// Shared between the layer's clones: the permits and what was shed.
#[derive(Debug)]
pub struct Shedder {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: AtomicU64,
}

impl Shedder {
    /// At most `limit` unary calls in progress.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Shedder {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: AtomicU64::new(0),
        })
    }

    /// Calls refused since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// Installs [`LoadShedService`] around a service.
#[derive(Clone)]
pub struct LoadShedLayer {
    shedder: Arc<Shedder>,
}

impl LoadShedLayer {
    pub fn new(shedder: Arc<Shedder>) -> Self {
        LoadShedLayer { shedder }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShedService {
            inner,
            shedder: self.shedder.clone(),
        }
    }
}

/// Admits a unary call only while a permit is free.
#[derive(Clone)]
pub struct LoadShedService<S> {
    inner: S,
    shedder: Arc<Shedder>,
}

impl<S> Service<http::Request<Body>> for LoadShedService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
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
        if request.uri().path() == STREAM_PATH {
            return Box::pin(self.inner.call(request));
        }
        match self.shedder.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    // Held until the handler has produced its (unary, so
                    // complete) response.
                    let response = future.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                self.shedder.shed.fetch_add(1, Ordering::Relaxed);
                let mut status = tonic::Status::resource_exhausted(format!(
                    "hub overloaded: {} calls in progress; retry after a short backoff",
                    self.shedder.limit
                ));
                status.metadata_mut().insert(
                    "retry-after",
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                let response = status.into_http::<Body>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
