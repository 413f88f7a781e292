//! Who is calling. An identity comes from the client certificate the TLS
//! handshake verified: its URI SAN `spiffe://learning-hub/instance/<id>`
//! names an instance, `spiffe://learning-hub/operator/<name>` an operator,
//! `spiffe://learning-hub/hub/<region>` the hub of another region (a
//! federation peer); the server reads it out of the certificate. Nothing a client puts in a
//! request can change it. Here: the identity, the naming rules, the URI.

use std::fmt;

/// The URI prefix every hub identity starts with.
pub const SPIFFE_PREFIX: &str = "spiffe://learning-hub/";

/// What a caller may do depends on its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An ML/agent instance: shares its own records, reads aggregates.
    Instance,
    /// A person or tool operating the hub.
    Operator,
    /// Another region's hub: calls the Federation service, nothing else.
    Hub,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Instance => "instance",
            Role::Operator => "operator",
            Role::Hub => "hub",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// The instance id or operator name.
    pub name: String,
}

impl Identity {
    pub fn instance(id: impl Into<String>) -> Self {
        Identity {
            role: Role::Instance,
            name: id.into(),
        }
    }

    /// The hub of region `region` (a federation peer).
    pub fn hub(region: impl Into<String>) -> Self {
        Identity {
            role: Role::Hub,
            name: region.into(),
        }
    }

    pub fn operator(name: impl Into<String>) -> Self {
        Identity {
            role: Role::Operator,
            name: name.into(),
        }
    }

    /// The SPIFFE-style URI that carries this identity in a certificate.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_PREFIX}{}/{}", self.role.as_str(), self.name)
    }

    /// Parses a URI made by [`Identity::uri`]; a name that
    /// [`check_name`] refuses is no identity.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "instance" => Role::Instance,
            "operator" => Role::Operator,
            "hub" => Role::Hub,
            _ => return None,
        };
        check_name(role, name).ok()?;
        Some(Identity {
            role,
            name: name.to_string(),
        })
    }

    pub fn instance_id(&self) -> Option<&str> {
        (self.role == Role::Instance).then_some(self.name.as_str())
    }
}

/// Names no instance may have: the hub's own certificate files (`ca.pem`,
/// `server.pem`, `crl.pem` share the directory with `<id>.pem`), the
/// default operator's (an instance named `operator` would be mixed up with
/// it in the audit log and in `certs issue`), and `hub`, for the hubs of
/// other regions.
pub const RESERVED_INSTANCE_IDS: &[&str] = &["ca", "server", "crl", "operator", "hub"];

/// Names no operator may have: the hub's own certificate files.
pub const RESERVED_OPERATOR_NAMES: &[&str] = &["ca", "server", "crl"];

/// Whether `name` may name a caller of `role`: a valid name (characters,
/// length), not `.` or `..` (the SPIFFE ID rules forbid them as path
/// segments, and `certs issue ..` would write `...pem`), and not reserved.
pub fn check_name(role: Role, name: &str) -> crate::error::Result<()> {
    let field = match role {
        Role::Instance => "instance id",
        Role::Operator => "operator name",
        Role::Hub => "region",
    };
    crate::validate::name(field, name)?;
    if name == "." || name == ".." {
        return Err(crate::error::Error::invalid(
            field,
            format!("{name:?} is not a name (a SPIFFE ID path segment may not be . or ..)"),
        ));
    }
    let reserved = match role {
        Role::Instance => RESERVED_INSTANCE_IDS,
        Role::Operator | Role::Hub => RESERVED_OPERATOR_NAMES,
    };
    if reserved.contains(&name) {
        return Err(crate::error::Error::invalid(
            field,
            format!(
                "{name:?} is reserved (reserved {}s: {})",
                field,
                reserved.join(", ")
            ),
        ));
    }
    Ok(())
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = Identity::instance("us-east-1");
        assert_eq!(id.uri(), "spiffe://learning-hub/instance/us-east-1");
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        let op = Identity::operator("alice");
        assert_eq!(Identity::from_uri(&op.uri()), Some(op));
        assert_eq!(Identity::from_uri("spiffe://learning-hub/admin/x"), None);
        assert_eq!(Identity::from_uri("spiffe://other/instance/x"), None);
        assert_eq!(
            Identity::from_uri("spiffe://learning-hub/instance/a b"),
            None
        );
    }
}
