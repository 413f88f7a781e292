//! Replicas of one hub in this process: a PostgreSQL database of the
//! test's own, and hubs on 127.0.0.1:0 that share it, each with its own
//! data directory and a copy of one PKI (so any client certificate is
//! good on every replica).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use learning_hub::{
    auth::Identity,
    client::{ClientSettings, HubClient},
    config::{Config, StorageBackend},
    pb, pki,
};

use super::{TestHub, pg::TestDb};

/// Replicas sharing one database.
/// Changes the configuration of the replica started `i`-th.
type Adjust = dyn Fn(usize, &mut Config) + Send + Sync;

/// Fields drop in order: the hubs before their database.
pub struct Cluster {
    pub hubs: Vec<TestHub>,
    pub db: TestDb,
    keys: Arc<Mutex<HashMap<String, String>>>,
    adjust: Arc<Adjust>,
    started: usize,
    /// Where the first replica's PKI comes from (`None`: made for it).
    pki_from: Option<std::path::PathBuf>,
}

impl Cluster {
    /// `n` replicas, or `None` when PostgreSQL is missing and the run may
    /// skip `test`. `adjust` changes the configuration of replica `i` (the
    /// `i`-th started).
    pub async fn start(
        test: &str,
        n: usize,
        adjust: impl Fn(usize, &mut Config) + Send + Sync + 'static,
    ) -> Option<Cluster> {
        Self::start_with_pki(test, n, None, adjust).await
    }

    /// [`Cluster::start`] with the PKI of the directory `pki_from` (the
    /// same CA as other hubs the test runs: regions that trust each
    /// other).
    pub async fn start_with_pki(
        test: &str,
        n: usize,
        pki_from: Option<&std::path::Path>,
        adjust: impl Fn(usize, &mut Config) + Send + Sync + 'static,
    ) -> Option<Cluster> {
        let db = TestDb::create(test)?;
        let mut cluster = Cluster {
            hubs: Vec::new(),
            db,
            keys: Arc::default(),
            adjust: Arc::new(adjust),
            started: 0,
            pki_from: pki_from.map(std::path::Path::to_path_buf),
        };
        for _ in 0..n {
            cluster.add().await;
        }
        Some(cluster)
    }

    /// Starts one more replica; its index in `hubs`.
    pub async fn add(&mut self) -> usize {
        let data = tempfile::tempdir().unwrap();
        let certs = tempfile::tempdir().unwrap();
        match (self.hubs.first(), &self.pki_from) {
            (Some(first), _) => copy_dir(first.certs_dir(), certs.path()),
            (None, Some(from)) => copy_dir(from, certs.path()),
            (None, None) => pki::generate_dev_pki(certs.path()).unwrap(),
        }
        let mut config = Config::new(data.path().join("data"), certs.path());
        config.generate_dev_pki = false;
        config.limits.drain_timeout = Duration::from_secs(3);
        config.storage.backend = StorageBackend::Postgres;
        config.storage.postgres_url = Some(self.db.url.clone());
        config.storage.replica_name = Some(format!("r{}", self.started));
        config.storage.lease = Duration::from_secs(2);
        config.hub.write_timeout = Duration::from_secs(5);
        (self.adjust)(self.started, &mut config);
        self.started += 1;
        let hub = TestHub::launch(
            config,
            Arc::new((data, certs)),
            None,
            None,
            self.keys.clone(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await;
        self.hubs.push(hub);
        self.hubs.len() - 1
    }

    /// Every replica's URL, comma-separated (a failing-over client's).
    pub fn urls(&self) -> String {
        self.hubs
            .iter()
            .map(TestHub::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client of instance `id` (registered in region "test") that knows
    /// every replica, starting with `first`.
    pub async fn client(&self, id: &str, first: usize) -> HubClient {
        let hub = &self.hubs[first];
        let mut settings = hub.instance_settings(id).await;
        let mut urls = vec![hub.url()];
        urls.extend(
            self.hubs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, h)| h.url()),
        );
        settings.url = urls.join(",");
        let client = HubClient::connect(&settings).await.unwrap();
        client
            .register(pb::RegisterRequest {
                instance_id: id.into(),
                region: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        client
    }

    /// Operator settings for every replica.
    pub fn operator_settings(&self) -> ClientSettings {
        let mut settings = self.hubs[0].settings(&Identity::operator("operator"));
        settings.url = self.urls();
        settings
    }

    /// Each replica's (log position, state digest), once all are at the
    /// same position and the log has not moved for a moment.
    pub async fn settled(&self) -> Vec<(u64, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut reports = Vec::new();
            for hub in &self.hubs {
                let status = hub
                    .operator()
                    .await
                    .admin()
                    .get_replica_status(pb::GetReplicaStatusRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                reports.push((status.log_position, status.state_digest));
            }
            if reports.iter().all(|r| r.0 == reports[0].0) {
                return reports;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas did not reach one position: {reports:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
