//! Load shedding: a bound on the unary calls the hub works on at once,
//! with calls beyond it refused at the door.
//!
//! Why refuse instead of queueing: past its capacity a server that queues
//! only grows latency for everyone (every queued call waits behind all the
//! others, and callers time out and retry into the same queue). Refusing
//! on arrival, before authentication, decoding or any work, costs
//! microseconds and tells a client to back off (RESOURCE_EXHAUSTED with
//! `retry-after`), so the calls that are admitted keep the latency of an
//! unloaded hub.
//!
//! The refusal is held for a short pause (`refusal_pause`, 20 ms by
//! default) before it is sent. It costs a timer, not CPU, and it is what
//! keeps a client that ignores `retry-after` and calls again the moment it
//! is refused from turning refusals into a busy loop: at 3× capacity such
//! callers refused at once took half the hub's core and tripled the
//! admitted calls' p99 (RELIABILITY.md, overload).
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
    time::Duration,
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
    refusal_pause: Duration,
    shed: AtomicU64,
}

impl Shedder {
    /// At most `limit` unary calls in progress; a refusal is answered
    /// after `refusal_pause`.
    pub fn new(limit: usize, refusal_pause: Duration) -> Arc<Self> {
        Arc::new(Shedder {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            refusal_pause,
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
                let pause = self.shedder.refusal_pause;
                Box::pin(async move {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    Ok(response)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::time::Instant;

    /// Holds its permit for 300 ms, then answers OK.
    #[derive(Clone)]
    struct Slow;

    impl Service<http::Request<Body>> for Slow {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(http::Response::new(Body::empty()))
            })
        }
    }

    fn unary() -> http::Request<Body> {
        http::Request::builder()
            .uri("/learninghub.v1.Hub/ShareStrategy")
            .body(Body::empty())
            .unwrap()
    }

    fn refusal(response: &http::Response<Body>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn a_refusal_is_held_for_the_pause_and_the_bound_frees_up() {
        let shedder = Shedder::new(1, Duration::from_millis(40));
        let mut service = LoadShedLayer::new(shedder.clone()).layer(Slow);

        let admitted = service.call(unary());
        let started = Instant::now();
        let refused = service.call(unary()).await.unwrap();
        // Held at least the pause (a timer, so never sooner).
        assert!(started.elapsed() >= Duration::from_millis(40));
        let status = refusal(&refused).expect("a refusal carries its status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(shedder.shed(), 1);

        assert!(refusal(&admitted.await.unwrap()).is_none());
        assert!(refusal(&service.call(unary()).await.unwrap()).is_none());
        assert_eq!(shedder.shed(), 1);
    }
}
