//! Who is calling and what they may do. The transport verifies the client
//! certificate and reads the identity out of it ([`identity`]); the
//! [`AuthLayer`] turns that into an [`Identity`] in every request's
//! extensions and enforces the role policy ([`policy`]) before any handler
//! runs, so authorization is decided in one place.

pub mod identity;
mod layer;
pub mod policy;

pub use identity::{Identity, Role};
pub use layer::{AuthLayer, INSECURE_IDENTITY_HEADER};
