//! The bench's instances. Each connection is its own instance, as in a
//! real fleet: a client certificate issued in memory from the hub's CA, an
//! API key the operator issues over the Admin service, and a Register call
//! before any load. Bulk registration (`--preload-instances`) goes through
//! the same steps, one short-lived connection per instance.

use std::{path::Path, sync::Arc};

use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;

use crate::auth::Identity;
use crate::client::{ClientPem, ClientSettings, HubClient, RetryPolicy};
use crate::error::{Error, Result};
use crate::pb;
use crate::pki::{self, ClientIssuer};

/// One bench instance and its connection.
#[derive(Clone)]
pub struct Member {
    pub instance_id: String,
    pub client: HubClient,
}

/// Issues identities and keys for bench instances.
pub struct Enlister {
    url: String,
    ca: Vec<u8>,
    issuer: Arc<ClientIssuer>,
    operator: HubClient,
}

fn failed(what: &str, status: tonic::Status) -> Error {
    Error::Unavailable(format!("{what}: {:?}: {}", status.code(), status.message()))
}

/// Runs a set-up call (enlisting, preloading) until the hub admits it: a
/// hub started with a small `--max-in-flight` sheds some of a bench's
/// parallel set-up, and a shed call was not applied, so sending it again
/// is safe. Any other answer is returned.
pub async fn until_admitted<T, F, Fut>(mut call: F) -> std::result::Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut wait = std::time::Duration::from_millis(5);
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}

impl Enlister {
    /// Connects as the operator of `certs_dir` to the hub at `url`.
    pub async fn new(url: &str, certs_dir: &Path) -> Result<Self> {
        let mut settings = ClientSettings::new(url, certs_dir, pki::DEFAULT_OPERATOR);
        settings.instance_id = None;
        let operator = HubClient::connect(&settings).await?;
        let ca = std::fs::read(certs_dir.join(pki::CA_CERT))
            .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", pki::CA_CERT)))?;
        Ok(Enlister {
            url: url.to_string(),
            ca,
            issuer: Arc::new(ClientIssuer::load(certs_dir)?),
            operator,
        })
    }

    pub fn operator(&self) -> &HubClient {
        &self.operator
    }

    /// Creates, keys, connects and registers the instance `instance_id`.
    pub async fn enlist(&self, instance_id: &str) -> Result<Member> {
        let identity = Identity::instance(instance_id);
        let issuer = self.issuer.clone();
        // Key generation and signing are CPU work; keep them off the
        // runtime's reactor threads.
        let (cert, key) = tokio::task::spawn_blocking(move || issuer.issue(&identity))
            .await
            .map_err(|e| Error::Internal(format!("certificate task failed: {e}")))??;
        let api_key = until_admitted(|| self.operator.issue_api_key(instance_id))
            .await
            .map_err(|s| failed("issuing an API key", s))?;
        let mut settings = ClientSettings::new(&self.url, Path::new("."), instance_id);
        settings.api_key = Some(api_key);
        let pem = ClientPem {
            ca: self.ca.clone(),
            cert: cert.into_bytes(),
            key: key.into_bytes(),
        };
        // A load generator counts every error as it happens: no retries
        // (and so no generated request ids).
        let client = HubClient::connect_pem(&settings, pem)
            .await?
            .with_retry_policy(RetryPolicy::none());
        let register = pb::RegisterRequest {
            instance_id: instance_id.to_string(),
            region: "bench".into(),
            ..Default::default()
        };
        until_admitted(|| client.register(register.clone()))
            .await
            .map_err(|s| failed("registering", s))?;
        Ok(Member {
            instance_id: instance_id.to_string(),
            client,
        })
    }

    /// Connects `count` clients to a server that asks for nothing but a
    /// client certificate (the bare streaming service, [`crate::bare`]):
    /// certificates from the CA in `certs_dir`, no API key, no Register.
    pub async fn connect_bare(url: &str, certs_dir: &Path, count: usize) -> Result<Vec<Member>> {
        let issuer = ClientIssuer::load(certs_dir)?;
        let ca = std::fs::read(certs_dir.join(pki::CA_CERT))
            .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", pki::CA_CERT)))?;
        let mut members = Vec::with_capacity(count);
        for i in 0..count {
            let instance_id = format!("bare-{i}");
            let (cert, key) = issuer.issue(&Identity::instance(&instance_id))?;
            let settings = ClientSettings::new(url, Path::new("."), &instance_id);
            let pem = ClientPem {
                ca: ca.clone(),
                cert: cert.into_bytes(),
                key: key.into_bytes(),
            };
            let client = HubClient::connect_pem(&settings, pem)
                .await?
                .with_retry_policy(RetryPolicy::none());
            members.push(Member {
                instance_id,
                client,
            });
        }
        Ok(members)
    }

    /// Enlists `count` instances named `<prefix><i>`, `parallel` at a time,
    /// and keeps their connections.
    pub async fn enlist_many(
        &self,
        prefix: &str,
        count: usize,
        parallel: usize,
        progress: &ProgressBar,
    ) -> Result<Vec<Member>> {
        let mut members: Vec<(usize, Member)> = stream::iter(0..count)
            .map(|i| async move {
                let member = self.enlist(&format!("{prefix}{i}")).await;
                progress.inc(1);
                member.map(|m| (i, m))
            })
            .buffer_unordered(parallel.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        members.sort_by_key(|(i, _)| *i);
        Ok(members.into_iter().map(|(_, m)| m).collect())
    }

    /// Registers `count` instances named `<prefix><i>`, each over its own
    /// connection that is closed right after.
    pub async fn register_many(
        &self,
        prefix: &str,
        count: u64,
        parallel: usize,
        progress: &ProgressBar,
    ) -> Result<()> {
        let mut results = stream::iter(0..count)
            .map(|i| async move {
                let done = self.enlist(&format!("{prefix}{i}")).await.map(drop);
                progress.inc(1);
                done
            })
            .buffer_unordered(parallel.max(1));
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }
}
