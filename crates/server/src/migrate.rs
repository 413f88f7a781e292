//! `learning-hub migrate`: a hub's whole state copied from one storage
//! into another — a sled data directory into PostgreSQL when one hub grows
//! into replicas, and back — and checked.
//!
//! The source is read as a start reads it (the newest checkpoint and the
//! command log folded after it); the target, which must hold nothing yet,
//! gets the outcome and audit row logs in pages, then one checkpoint of
//! every record, counter and the rows folded since, at the source's log
//! position, and a log that continues after that position. The copy is
//! then loaded from the target as a hub would load it and compared with
//! the source: the state digests (every record, counter and the running
//! digest of the rows) and a digest of every stored row must be equal. A
//! copy that fails halfway leaves a target that is not empty: drop it and
//! run again (the source is only read).

use ring::digest::{Context, SHA256};

use crate::domain::state::{State, digest_hex};
use crate::error::{Error, Result};
use crate::hub::{Hub, HubSettings};
use crate::store::{Checkpoint, RowLog, RowWrite, Store};

/// Rows copied per page.
const PAGE: usize = 4096;

/// What a migration copied, as checked in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The command-log position the copy is as of.
    pub position: u64,
    /// Records in the state's tables.
    pub records: usize,
    /// Stored outcome and audit rows (besides those folded since the
    /// source's last checkpoint, which the checkpoint carries).
    pub outcome_rows: u64,
    pub audit_rows: u64,
    /// The state digest both sides have.
    pub digest: String,
}

/// Whether `store` holds nothing: no checkpoint, no log, no rows.
fn is_empty(store: &Store) -> Result<bool> {
    let backend = store.backend();
    Ok(backend.checkpoint_position()?.is_none()
        && backend.log_head()? == 0
        && backend.rows_after(RowLog::Outcomes, 0, 1)?.is_empty()
        && backend.rows_after(RowLog::Audit, 0, 1)?.is_empty()
        && store.load(7)?.state.tables == Default::default())
}

/// Every stored row of `log`, hashed in order, and how many.
fn rows_digest(store: &Store, log: RowLog) -> Result<(u64, [u8; 32])> {
    let mut hash = Context::new(&SHA256);
    let (mut after, mut count) = (0, 0u64);
    loop {
        let page = store.backend().rows_after(log, after, PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (sequence, bytes) in &page {
            hash.update(&sequence.to_be_bytes());
            hash.update(&(bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
            count += 1;
        }
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hash.finish().as_ref());
    Ok((count, digest))
}

/// Copies the stored rows of `log` from `from` to `to` in pages, each
/// written as a checkpoint of rows only.
fn copy_rows(from: &Store, to: &Store, log: RowLog) -> Result<u64> {
    let (mut after, mut copied) = (0, 0u64);
    loop {
        let page = from.backend().rows_after(log, after, PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(copied);
        };
        after = *last;
        copied += page.len() as u64;
        to.backend().checkpoint(Checkpoint {
            position: 0,
            rows: page
                .into_iter()
                .map(|(sequence, bytes)| RowWrite {
                    log,
                    sequence,
                    bytes,
                })
                .collect(),
            ..Default::default()
        })?;
    }
}

/// Copies the state in `from` into `to` (which must be empty), then
/// `continue_log_after(position)` makes the target's command log go on
/// after the copy's position; checks the copy (see the module).
pub fn migrate(
    from: &Store,
    to: &Store,
    settings: &HubSettings,
    continue_log_after: impl FnOnce(u64) -> Result<()>,
) -> Result<Copied> {
    if !is_empty(to)? {
        return Err(Error::FailedPrecondition(
            "the target already holds a hub's state: migrate into an empty data directory \
             or database"
                .into(),
        ));
    }
    let (_, state, _) = Hub::load_state(from, settings)?;
    let outcome_rows = copy_rows(from, to, RowLog::Outcomes)?;
    let audit_rows = copy_rows(from, to, RowLog::Audit)?;
    // Every record, the counters and the rows folded since the source's
    // checkpoint, at its position: the difference from an empty state.
    to.checkpoint(&State::default(), &state)?;
    continue_log_after(state.position)?;

    let (_, copied, _) = Hub::load_state(to, settings)?;
    let digest = digest_hex(&state.digest());
    let copied_digest = digest_hex(&copied.digest());
    if copied.position != state.position || copied_digest != digest {
        return Err(Error::Internal(format!(
            "the copy differs from the source: position {} digest {copied_digest}, \
             source position {} digest {digest}",
            copied.position, state.position
        )));
    }
    for log in [RowLog::Outcomes, RowLog::Audit] {
        let (source, target) = (rows_digest(from, log)?, rows_digest(to, log)?);
        // The target also stored the source's unstored rows.
        let unstored = match log {
            RowLog::Outcomes => state.rows.outcomes.len(),
            RowLog::Audit => state.rows.audit.len(),
        } as u64;
        if target.0 != source.0 + unstored || (unstored == 0 && target.1 != source.1) {
            return Err(Error::Internal(format!(
                "the {log:?} rows differ: {} in the source (+{unstored} not yet stored), {} copied",
                source.0, target.0
            )));
        }
    }
    Ok(Copied {
        position: state.position,
        records: count_records(&state),
        outcome_rows: outcome_rows + state.rows.outcomes.len() as u64,
        audit_rows: audit_rows + state.rows.audit.len() as u64,
        digest,
    })
}

fn count_records(state: &State) -> usize {
    struct Count(usize);
    impl crate::domain::state::TableVisitor for Count {
        type Error = std::convert::Infallible;
        fn record<K: crate::domain::state::TableKey, V: serde::Serialize>(
            &mut self,
            _: &'static str,
            _: &K,
            _: Option<&V>,
        ) -> std::result::Result<(), Self::Error> {
            self.0 += 1;
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = state.tables.visit(&mut count);
    count.0
}
