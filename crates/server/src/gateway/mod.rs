//! The JSON gateway: the design's REST paths (`POST /api/v1/hub/register`,
//! `GET /api/v1/hub/strategies`, …) on the hub's own listener, for callers
//! that speak HTTP and JSON rather than gRPC.
//!
//! Which path serves which RPC is said in the `.proto`, with the
//! ecosystem's `google.api.http` method option; the gateway reads those
//! annotations from the descriptor set at start-up ([`RouteTable`]). A
//! request is turned into the RPC's own message with the protobuf JSON
//! mapping (a POST's body; a GET's query string, field by field) and sent,
//! as a gRPC call, through the same stack a gRPC caller meets: the auth
//! layer takes the identity from the connection's client certificate and
//! the API key from `Authorization: Bearer`, then rate limits and audits
//! it, and the handler validates it. The answer comes back as JSON; a
//! refusal as `{"code": "INVALID_ARGUMENT", "message": "delta: …"}` with
//! the HTTP status of its gRPC code (400, 401, 403, 404, 409, 429, 503 …).
//! Nothing here decides anything: it only converts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions, Value,
};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::pb;

mod openapi;

/// Where the gateway serves its OpenAPI document.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Where the gateway's paths start: anything else is gRPC.
pub const PREFIX: &str = "/api/";

/// The most a JSON body may hold.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// One annotated RPC.
#[derive(Debug, Clone)]
struct Route {
    method: http::Method,
    path: String,
    /// `/learninghub.v1.Hub/Register`.
    rpc: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    /// A server stream: answered as Server-Sent Events.
    streaming: bool,
    /// The RPC, for its documentation.
    method_descriptor: prost_reflect::MethodDescriptor,
}

/// Every annotated RPC, read from the descriptor set, and the OpenAPI
/// document made from them.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    openapi: Bytes,
}

impl RouteTable {
    /// The routes the `.proto` annotates.
    pub fn from_descriptors() -> Result<RouteTable, String> {
        let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("the descriptor set does not decode: {e}"))?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptor set has no google.api.http option")?;
        let mut routes = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                    continue;
                };
                for (verb, method_kind) in [
                    ("get", http::Method::GET),
                    ("post", http::Method::POST),
                    ("put", http::Method::PUT),
                    ("delete", http::Method::DELETE),
                    ("patch", http::Method::PATCH),
                ] {
                    let Some(Value::String(path)) = rule
                        .get_field_by_name(verb)
                        .map(|v| v.into_owned())
                        .filter(|_| rule.has_field_by_name(verb))
                    else {
                        continue;
                    };
                    routes.push(Route {
                        method: method_kind,
                        path,
                        rpc: format!("/{}/{}", service.full_name(), method.name()),
                        input: method.input(),
                        output: method.output(),
                        streaming: method.is_server_streaming(),
                        method_descriptor: method.clone(),
                    });
                }
            }
        }
        let openapi = Bytes::from(openapi::document(&routes).to_string());
        Ok(RouteTable { routes, openapi })
    }

    /// The OpenAPI 3 document of the routes (JSON).
    pub fn openapi(&self) -> &[u8] {
        &self.openapi
    }

    /// (method, path, RPC) of every route, for documentation and tests.
    pub fn list(&self) -> Vec<(String, String, String)> {
        self.routes
            .iter()
            .map(|r| (r.method.to_string(), r.path.clone(), r.rpc.clone()))
            .collect()
    }
}

/// Puts the gateway in front of a gRPC stack.
#[derive(Clone)]
pub struct GatewayLayer {
    routes: Arc<RouteTable>,
}

impl GatewayLayer {
    pub fn new(routes: RouteTable) -> Self {
        GatewayLayer {
            routes: Arc::new(routes),
        }
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = Gateway<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gateway {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// Answers the gateway's paths; passes everything else on untouched.
#[derive(Clone)]
pub struct Gateway<S> {
    inner: S,
    routes: Arc<RouteTable>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Gateway<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !request.uri().path().starts_with(PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        // A ready clone takes this one's place (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let routes = self.routes.clone();
        Box::pin(async move { answer(&routes, inner, request).await })
    }
}

/// A refusal as the gateway answers it: the gRPC code's name and message.
fn refusal(code: tonic::Code, message: &str) -> http::Response<Body> {
    let body = serde_json::json!({
        "code": code_name(code),
        "message": message,
    });
    json_response(http_status(code), body.to_string().into_bytes())
}

fn json_response(status: http::StatusCode, body: Vec<u8>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The HTTP status of a gRPC code, as gateways conventionally map them.
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as H;
    use tonic::Code as C;
    match code {
        C::Ok => H::OK,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => H::BAD_REQUEST,
        C::Unauthenticated => H::UNAUTHORIZED,
        C::PermissionDenied => H::FORBIDDEN,
        C::NotFound => H::NOT_FOUND,
        C::AlreadyExists | C::Aborted => H::CONFLICT,
        C::ResourceExhausted => H::TOO_MANY_REQUESTS,
        C::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        C::Unimplemented => H::NOT_IMPLEMENTED,
        C::Unavailable => H::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        C::Unknown | C::Internal | C::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// `INVALID_ARGUMENT` and the like: the code as the protobuf JSON of
/// `google.rpc.Code` spells it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves one gateway request through `inner`.
async fn answer<S>(
    routes: &RouteTable,
    mut inner: S,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let path = request.uri().path().to_string();
    // The API's description: no RPC behind it, nothing to authorize
    // beyond the connection's certificate.
    if path == OPENAPI_PATH && request.method() == http::Method::GET {
        return Ok(json_response(http::StatusCode::OK, routes.openapi.to_vec()));
    }
    let on_path: Vec<&Route> = routes.routes.iter().filter(|r| r.path == path).collect();
    // A path may serve a unary RPC and a stream alike (the design's
    // `GET /api/v1/hub/insights`): `new=true` asks for the stream.
    let wants_stream = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .any(|(k, v)| k == "new" && v == "true");
    let for_method: Vec<&Route> = on_path
        .iter()
        .copied()
        .filter(|r| r.method == request.method())
        .collect();
    let chosen = for_method
        .iter()
        .find(|r| r.streaming == wants_stream)
        .or(for_method.first())
        .copied();
    let Some(route) = chosen else {
        if on_path.is_empty() {
            let known: Vec<String> = routes
                .routes
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            return Ok(refusal(
                tonic::Code::NotFound,
                &format!(
                    "no such path: {path} (the gateway serves {})",
                    known.join(", ")
                ),
            ));
        }
        let mut response = refusal(
            tonic::Code::Unimplemented,
            &format!(
                "{path} takes {}",
                on_path
                    .iter()
                    .map(|r| r.method.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        return Ok(response);
    };
    let (mut parts, body) = request.into_parts();
    if route.streaming {
        resume_from_last_event(&mut parts);
    }
    let message = match read_request(route, &parts, body).await {
        Ok(message) => message,
        Err(why) => return Ok(refusal(tonic::Code::InvalidArgument, &why)),
    };
    // The call as a gRPC client would make it, on this connection: the
    // auth layer finds the client certificate in the extensions and the
    // API key in the authorization header.
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let mut call = http::Request::new(Body::new(Full::new(frame.freeze())));
    *call.method_mut() = http::Method::POST;
    *call.version_mut() = http::Version::HTTP_2;
    *call.uri_mut() = match route.rpc.parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(refusal(tonic::Code::Internal, "a route names no RPC")),
    };
    *call.extensions_mut() = parts.extensions;
    let headers = call.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    if let Some(key) = parts.headers.get(http::header::AUTHORIZATION) {
        headers.insert(http::header::AUTHORIZATION, key.clone());
    }
    let response = inner.call(call).await?;
    if route.streaming {
        return Ok(events(route, response));
    }
    Ok(render(route, response).await)
}

/// A reconnecting event source's `Last-Event-ID` (the last sequence it
/// saw) as the stream's `after_sequence`, and `new=true` dropped (it only
/// chose the stream).
fn resume_from_last_event(parts: &mut http::request::Parts) {
    let last = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .map(str::to_string);
    let query = parts.uri.query().unwrap_or("");
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "new")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(last) = last {
        pairs.retain(|(k, _)| k != "after_sequence" && k != "afterSequence");
        pairs.push(("after_sequence".into(), last));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let path = parts.uri.path().to_string();
    if let Ok(uri) = format!("{path}?{query}").parse() {
        parts.uri = uri;
    }
}

/// A server stream as Server-Sent Events: one event per message (`id:`
/// the insight's sequence when it has one), and a refusal as an `error`
/// event; a refusal before anything was sent is a plain JSON refusal.
fn events(route: &Route, response: http::Response<Body>) -> http::Response<Body> {
    let (parts, body) = response.into_parts();
    if let Some(status) =
        tonic::Status::from_header_map(&parts.headers).filter(|s| s.code() != tonic::Code::Ok)
    {
        return refusal(status.code(), status.message());
    }
    let output = route.output.clone();
    let state = (body, BytesMut::new(), false);
    let stream = futures_util::stream::unfold(state, move |(mut body, mut buffer, done)| {
        let output = output.clone();
        async move {
            if done {
                return None;
            }
            loop {
                // A whole message buffered: its event.
                if buffer.len() >= 5 {
                    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
                    let len = len as usize;
                    if buffer.len() >= 5 + len {
                        let frame = buffer.split_to(5 + len);
                        let event = message_event(&output, &frame[5..]);
                        return Some((
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(event)),
                            (body, buffer, false),
                        ));
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => buffer.extend_from_slice(&data),
                        Err(frame) => {
                            // The trailers: the stream's end, and why.
                            let status = frame
                                .trailers_ref()
                                .and_then(tonic::Status::from_header_map)
                                .filter(|s| s.code() != tonic::Code::Ok);
                            let event = match status {
                                Some(status) => error_event(status.code(), status.message()),
                                None => return None,
                            };
                            return Some((Ok(http_body::Frame::data(event)), (body, buffer, true)));
                        }
                    },
                    Some(Err(e)) => {
                        let event = error_event(tonic::Code::Unavailable, &e.to_string());
                        return Some((Ok(http_body::Frame::data(event)), (body, buffer, true)));
                    }
                    None => return None,
                }
            }
        }
    });
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// One message as an event: `id:` the sequence of the insight it carries.
fn message_event(output: &MessageDescriptor, bytes: &[u8]) -> Bytes {
    let message = match DynamicMessage::decode(output.clone(), bytes) {
        Ok(message) => message,
        Err(e) => {
            return error_event(
                tonic::Code::Internal,
                &format!("a message does not decode: {e}"),
            );
        }
    };
    // The event is the message's one field (the insight), as JSON.
    let (payload, sequence) = match message.fields().next() {
        Some((_, Value::Message(inner))) => {
            let sequence = inner.get_field_by_name("sequence").and_then(|v| v.as_u64());
            (inner.clone(), sequence)
        }
        _ => (message.clone(), None),
    };
    let mut json = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut json);
    let options = SerializeOptions::new().skip_default_fields(false);
    if payload
        .serialize_with_options(&mut serializer, &options)
        .is_err()
    {
        return error_event(tonic::Code::Internal, "a message is not JSON");
    }
    let mut event = String::new();
    if let Some(sequence) = sequence {
        event.push_str(&format!("id: {sequence}\n"));
    }
    event.push_str("event: insight\ndata: ");
    event.push_str(&String::from_utf8_lossy(&json));
    event.push_str("\n\n");
    Bytes::from(event)
}

fn error_event(code: tonic::Code, message: &str) -> Bytes {
    let data = serde_json::json!({"code": code_name(code), "message": message});
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The RPC's request message, encoded, from the body (with one) or the
/// query string; or why not, naming the field.
async fn read_request(
    route: &Route,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Vec<u8>, String> {
    let json: serde_json::Value = if route.method == http::Method::GET {
        query_json(&route.input, parts.uri.query().unwrap_or(""))?
    } else {
        let bytes = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).map_err(|e| format!("body: not JSON: {e}"))?
        }
    };
    let message =
        DynamicMessage::deserialize(route.input.clone(), json).map_err(|e| format!("body: {e}"))?;
    Ok(message.encode_to_vec())
}

/// A GET's query string as the JSON of its request message: `name=value`
/// for a field (by its proto or JSON name), `name.key=value` for an entry
/// of a map field, a repeated field's name once per item; a message,
/// list or map field may also take a JSON value whole.
fn query_json(input: &MessageDescriptor, query: &str) -> Result<serde_json::Value, String> {
    let mut object = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (name, entry) = match key.split_once('.') {
            Some((name, entry)) => (name, Some(entry)),
            None => (key.as_ref(), None),
        };
        let field = input
            .get_field_by_name(name)
            .or_else(|| input.get_field_by_json_name(name))
            .ok_or_else(|| format!("{name}: {} has no such field", input.name()))?;
        let json_name = field.json_name().to_string();
        let whole = || serde_json::from_str::<serde_json::Value>(&value);
        if let Some(entry) = entry {
            if !field.is_map() {
                return Err(format!("{name}.{entry}: {name} is not a map"));
            }
            let map = object
                .entry(json_name)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let serde_json::Value::Object(map) = map {
                map.insert(
                    entry.to_string(),
                    serde_json::Value::String(value.to_string()),
                );
            }
            continue;
        }
        if field.is_map() || matches!(field.kind(), Kind::Message(_)) {
            let parsed = whole().map_err(|e| format!("{name}: not JSON: {e}"))?;
            object.insert(json_name, parsed);
            continue;
        }
        // Every scalar but a boolean as a string: the JSON mapping takes
        // numbers (64-bit integers and floats) as strings too.
        let scalar = match (field.kind(), value.as_ref()) {
            (Kind::Bool, "true") => serde_json::Value::Bool(true),
            (Kind::Bool, "false") => serde_json::Value::Bool(false),
            (Kind::Bool, other) => {
                return Err(format!("{name}: must be true or false, got {other:?}"));
            }
            _ => serde_json::Value::String(value.to_string()),
        };
        if field.is_list() {
            let list = object
                .entry(json_name)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(list) = list {
                list.push(scalar);
            }
        } else {
            object.insert(json_name, scalar);
        }
    }
    Ok(serde_json::Value::Object(object))
}

/// The gRPC answer as JSON, or its refusal.
async fn render(route: &Route, response: http::Response<Body>) -> http::Response<Body> {
    let (parts, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => return refusal(tonic::Code::Internal, &format!("the answer broke off: {e}")),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    // A refusal before any message comes in the headers (trailers-only).
    let status = tonic::Status::from_header_map(&trailers)
        .or_else(|| tonic::Status::from_header_map(&parts.headers));
    let retry_after = trailers
        .get("retry-after")
        .or_else(|| parts.headers.get("retry-after"))
        .cloned();
    if let Some(status) = status.filter(|s| s.code() != tonic::Code::Ok) {
        let mut response = refusal(status.code(), status.message());
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, after);
        }
        return response;
    }
    let data = collected.to_bytes();
    if data.len() < 5 {
        return refusal(tonic::Code::Internal, "the answer carried no message");
    }
    let message = match DynamicMessage::decode(route.output.clone(), &data[5..]) {
        Ok(message) => message,
        Err(e) => {
            return refusal(
                tonic::Code::Internal,
                &format!("the answer does not decode: {e}"),
            );
        }
    };
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    let options = SerializeOptions::new().skip_default_fields(false);
    if let Err(e) = message.serialize_with_options(&mut serializer, &options) {
        return refusal(
            tonic::Code::Internal,
            &format!("the answer is not JSON: {e}"),
        );
    }
    json_response(http::StatusCode::OK, out)
}
