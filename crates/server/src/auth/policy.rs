//! Which role may call which RPC. Instances write their own records and
//! read aggregates; operators read everything but share nothing (they are
//! not instances, and a record must be attributable to the instance whose
//! learning it describes) and alone may use the Admin service. The
//! Federation service is for other regions' hubs alone, and they for it
//! alone. Health and reflection are open to any authenticated peer.

use super::identity::{Identity, Role};
use crate::error::{Error, Result};

/// The Hub RPCs that add to the fleet's knowledge (or, RecordInsightUse,
/// report an instance's own use of it).
const INSTANCE_ONLY: &[&str] = &[
    "Register",
    "SharePattern",
    "RecordPatternOutcome",
    "ShareStrategy",
    "ShareInsight",
    "RecordInsightUse",
    "ShareFailure",
    "ShareConfiguration",
    "ShareModelUpdate",
];

const HUB_SERVICE: &str = "learninghub.v1.Hub";
/// Every RPC of this service is for operators.
const ADMIN_SERVICE: &str = "learninghub.v1.Admin";
/// Every RPC of this service is for other regions' hubs.
const FEDERATION_SERVICE: &str = "learninghub.v1.Federation";

/// Decides whether `identity` may call the gRPC method at `path`
/// (`/package.Service/Method`).
pub fn authorize(path: &str, identity: &Identity) -> Result<()> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if service == FEDERATION_SERVICE && identity.role != Role::Hub {
        return Err(Error::PermissionDenied(format!(
            "{method} is for the hubs of other regions; {identity} cannot call it"
        )));
    }
    if identity.role == Role::Hub && (service == HUB_SERVICE || service == ADMIN_SERVICE) {
        return Err(Error::PermissionDenied(format!(
            "{identity} is a federation peer: it may call the Federation service only"
        )));
    }
    if service == ADMIN_SERVICE && identity.role != Role::Operator {
        return Err(Error::PermissionDenied(format!(
            "{method} is for operators; {identity} cannot call it"
        )));
    }
    if service == HUB_SERVICE && INSTANCE_ONLY.contains(&method) && identity.role != Role::Instance
    {
        return Err(Error::PermissionDenied(format!(
            "{method} is for instances; {identity} cannot call it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_is_for_peer_hubs_alone_and_they_for_it_alone() {
        let peer = Identity::hub("eu-west");
        let pull = "/learninghub.v1.Federation/Pull";
        assert!(authorize(pull, &peer).is_ok());
        for other in [Identity::instance("a"), Identity::operator("ops")] {
            assert!(matches!(
                authorize(pull, &other),
                Err(Error::PermissionDenied(_))
            ));
        }
        for path in [
            "/learninghub.v1.Hub/GetStrategies",
            "/learninghub.v1.Hub/ShareStrategy",
            "/learninghub.v1.Admin/ListAnomalies",
        ] {
            assert!(
                matches!(authorize(path, &peer), Err(Error::PermissionDenied(_))),
                "{path}"
            );
        }
        assert!(authorize("/grpc.health.v1.Health/Check", &peer).is_ok());
    }

    #[test]
    fn operators_read_but_do_not_share() {
        let op = Identity::operator("ops");
        let inst = Identity::instance("a");
        for method in INSTANCE_ONLY {
            let path = format!("/learninghub.v1.Hub/{method}");
            assert!(authorize(&path, &inst).is_ok());
            assert!(matches!(
                authorize(&path, &op),
                Err(Error::PermissionDenied(_))
            ));
        }
        // Reporting the use of an insight is an instance's own record too.
        assert!(matches!(
            authorize("/learninghub.v1.Hub/RecordInsightUse", &op),
            Err(Error::PermissionDenied(_))
        ));
        assert!(authorize("/learninghub.v1.Admin/GenerateInsights", &op).is_ok());
        assert!(matches!(
            authorize("/learninghub.v1.Admin/GenerateInsights", &inst),
            Err(Error::PermissionDenied(_))
        ));
        for path in [
            "/learninghub.v1.Hub/GetStrategies",
            "/learninghub.v1.Hub/SubscribeInsights",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(authorize(path, &op).is_ok(), "{path}");
            assert!(authorize(path, &inst).is_ok(), "{path}");
        }
    }
}
