//! Regional hubs over gRPC, as far as they are built: a peer region's hub
//! pulls this region's knowledge through the Federation service, over
//! mutual TLS with its own hub certificate; instances and operators cannot
//! call it, a peer cannot call anything else, a region not listed is
//! refused, and no instance id crosses.

use crate::common;

use common::*;
use learning_hub::auth::Identity;
use learning_hub::pb;
use learning_hub::pb::federation_client::FederationClient;
use prost::Message;
use tonic::Code;

#[tokio::test]
async fn a_peer_region_pulls_aggregates_and_nothing_else_crosses() {
    let hub = TestHub::start_with(|config| {
        config.hub.region = "us-east".into();
        config.hub.peers = ["eu-west".to_string()].into();
    })
    .await;
    for id in ["secret-alpha", "secret-beta"] {
        let client = hub.registered(id).await;
        for j in 0..3 {
            client
                .share_strategy(strategy_outcome("steady", "lv", j != 0, 0.05))
                .await
                .unwrap();
        }
    }
    let pull = |identity: Identity, held: u64| {
        let hub = &hub;
        async move {
            let mut client = FederationClient::new(hub.channel_as(&identity).await);
            client
                .pull(pb::PullRequest {
                    held: [("us-east".to_string(), held)].into(),
                })
                .await
        }
    };
    let answer = pull(Identity::hub("eu-west"), 0)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.region, "us-east");
    let batch = &answer.batches[0];
    assert_eq!((batch.origin.as_str(), batch.after), ("us-east", 0));
    assert!(batch.through >= 6, "{batch:?}");
    let counted: u64 = batch.entries.iter().map(|e| e.stats.unwrap().count).sum();
    let successes: u64 = batch
        .entries
        .iter()
        .map(|e| e.stats.unwrap().successes)
        .sum();
    assert_eq!((counted, successes), (6, 4));
    let subject = batch.entries[0].strategy.as_ref().unwrap();
    assert_eq!(
        (subject.metric.as_str(), subject.strategy.as_str()),
        ("lv", "steady")
    );
    // What crossed, byte for byte, names no instance.
    let wire = answer.encode_to_vec();
    for id in ["secret-alpha", "secret-beta"] {
        assert!(
            !wire.windows(id.len()).any(|w| w == id.as_bytes()),
            "{id} crossed the region"
        );
    }
    // Holding everything: nothing to send.
    let again = pull(Identity::hub("eu-west"), batch.through)
        .await
        .unwrap()
        .into_inner();
    assert!(again.batches.is_empty(), "{again:?}");

    // A region not among the peers, instances and operators: refused.
    let stranger = pull(Identity::hub("ap-south"), 0).await.unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied, "{stranger:?}");
    assert!(stranger.message().contains("peers"), "{stranger:?}");
    // (An instance without its API key is refused before the policy;
    // the policy's own unit test covers an instance with it.)
    let instance = pull(Identity::instance("secret-alpha"), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            instance.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "{instance:?}"
    );
    let operator = pull(Identity::operator("operator"), 0).await.unwrap_err();
    assert_eq!(operator.code(), Code::PermissionDenied, "{operator:?}");
    assert!(
        operator.message().contains("hubs of other regions"),
        "{operator:?}"
    );
    // A peer hub's certificate opens nothing but the Federation service.
    let peer = hub.channel_as(&Identity::hub("eu-west")).await;
    let refused = pb::hub_client::HubClient::new(peer)
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

#[tokio::test]
async fn a_hub_without_a_region_does_not_federate() {
    let hub = TestHub::start().await;
    let mut client = FederationClient::new(hub.channel_as(&Identity::hub("eu-west")).await);
    let refused = client.pull(pb::PullRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("federation.region"),
        "{refused:?}"
    );
}
