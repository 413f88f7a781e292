//! Measuring a call for the audit log: how many bytes the request carried
//! and which gRPC status it ended with. A call's status arrives either in
//! the response headers (errors answered at once) or in the trailers at the
//! end of the body (every other call, including streams that run for
//! hours), so the response body is wrapped to catch the trailers; a body
//! dropped before its end means the client went away (CANCELLED).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A request body that counts the bytes passing through it.
pub struct CountingBody<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        CountingBody { inner, bytes }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC status code in a header map, if there is one.
pub fn status_code(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// gRPC's CANCELLED and UNKNOWN codes.
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

/// A response body that reports the call's status once: from its
/// trailers, at its end without trailers (UNKNOWN), or when dropped early
/// (CANCELLED).
pub struct ReportingBody<B, F: FnOnce(i32)> {
    inner: B,
    report: Option<F>,
}

impl<B, F: FnOnce(i32)> ReportingBody<B, F> {
    pub fn new(inner: B, report: F) -> Self {
        ReportingBody {
            inner,
            report: Some(report),
        }
    }

    fn finish(&mut self, code: i32) {
        if let Some(report) = self.report.take() {
            report(code);
        }
    }
}

impl<B, F> Body for ReportingBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce(i32) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(UNKNOWN),
            Poll::Ready(None) => self.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F: FnOnce(i32)> Drop for ReportingBody<B, F> {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}
