//! Operator surfaces: health, gRPC reflection in both protocol versions (grpcurl 1.8
//! speaks only v1alpha, newer tools v1), and the plaintext development mode.

use crate::common;

use common::*;
use learning_hub::{client::HubClient, pb};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

#[tokio::test]
async fn health_reports_serving() {
    let hub = TestHub::start().await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(hub.operator_channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "learninghub.v1.Hub".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let hub = TestHub::start().await;
    let mut client = ServerReflectionClient::new(hub.operator_channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("learninghub.v1.Hub".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&"learninghub.v1.Hub"), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let hub = TestHub::start().await;
    let mut client = ServerReflectionClient::new(hub.operator_channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "learninghub.v1.Hub"));
}

#[tokio::test]
async fn insecure_dev_mode_takes_identity_from_the_header() {
    let hub = TestHub::start_with(|c| c.insecure_dev = true).await;
    let channel = Endpoint::from_shared(format!("http://{}", hub.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let instance = HubClient::insecure_dev(channel.clone(), Some("dev-1".into()));
    let registered = instance
        .register(pb::RegisterRequest {
            instance_id: "dev-1".into(),
            region: "local".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(registered.instance.unwrap().instance_id, "dev-1");
    // Without the header the caller is an operator: it reads, it does not share.
    let operator = HubClient::insecure_dev(channel, None);
    assert_eq!(
        operator
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .instances,
        1
    );
    let refused = operator
        .share_strategy(strategy_outcome("s", "m", true, 0.1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}
