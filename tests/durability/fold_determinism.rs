//! The fold is deterministic: the same command log folds to the same state
//! (equal [`State::digest`]s) in another process — whose hash maps are
//! seeded differently — and from a checkpoint plus the log's tail as from
//! scratch. Replicas rest on this: each folds the shared log on its own.

use crate::common;

use std::process::Command as Process;
use std::sync::Arc;

use common::commands::random_log;
use learning_hub::domain::command::Command;
use learning_hub::domain::fold::fold;
use learning_hub::domain::state::{State, digest_hex};
use learning_hub::store::Store;

const T0: i64 = 1_790_000_000_000;
const COMMANDS: usize = 600;
const SEEDS: [u64; 6] = [1, 2, 3, 17, 99, 4242];

/// Folds `commands` as a shared log does: each at the next position, a
/// command that fails left in place and skipped.
fn fold_log(state: &mut State, commands: &[Command], first_position: u64) -> usize {
    let mut failed = 0;
    for (i, command) in commands.iter().enumerate() {
        let position = first_position + i as u64;
        if fold(state, position, command).is_err() {
            failed += 1;
            state.skip_to(position);
        }
    }
    failed
}

fn digest_of(seed: u64) -> String {
    let mut state = State::default();
    fold_log(&mut state, &random_log(seed, COMMANDS, T0), 1);
    digest_hex(&state.digest())
}

#[test]
fn a_checkpoint_plus_the_tail_folds_to_the_state_folded_from_scratch() {
    for seed in SEEDS {
        let log = random_log(seed, COMMANDS, T0);
        let mut scratch = State::default();
        let failed = fold_log(&mut scratch, &log, 1);
        assert!(
            failed > 0 && failed < COMMANDS / 2,
            "the log exercises failures too: {failed}"
        );
        assert!(scratch.tables.strategies.len() > 3 && !scratch.rows.audit.is_empty());
        let model = scratch.tables.models.get("plateau");
        assert!(
            model.is_some_and(|m| m.version >= 1),
            "model updates made versions: {:?}",
            model.map(|m| (m.version, m.pending.len()))
        );
        for cut in [1, COMMANDS / 3, COMMANDS - 1] {
            let mut head = State::default();
            fold_log(&mut head, &log[..cut], 1);
            // Through a store: written as a checkpoint, read back (indexes
            // rebuilt, rows moved to the store's logs), then the tail.
            let store = Store::in_memory();
            store.checkpoint(&State::default(), &head).unwrap();
            let loaded = store.load(7).unwrap();
            assert!(!loaded.legacy);
            let mut resumed = loaded.state;
            assert_eq!(resumed.digest(), head.digest(), "seed {seed}, cut {cut}");
            fold_log(&mut resumed, &log[cut..], cut as u64 + 1);
            assert_eq!(
                digest_hex(&resumed.digest()),
                digest_hex(&scratch.digest()),
                "seed {seed}, checkpoint after {cut} commands"
            );
            // The rows the checkpoint took out are in the store, in order.
            let stored = store.outcomes_after(0, usize::MAX).unwrap();
            assert!(
                stored.windows(2).all(|w| w[0].sequence < w[1].sequence),
                "outcome rows in order"
            );
        }
    }
}

#[test]
fn a_different_state_has_a_different_digest() {
    let log = random_log(7, 200, T0);
    let mut a = State::default();
    fold_log(&mut a, &log, 1);
    let mut b = State::default();
    fold_log(&mut b, &log[..199], 1);
    assert_ne!(a.digest(), b.digest());
    let mut c = a.clone();
    if let Some((key, record)) = c
        .tables
        .instances
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
    {
        let mut changed = (*record).clone();
        changed.shared_records += 1;
        c.tables.instances.insert(key, Arc::new(changed));
    }
    assert_ne!(a.digest(), c.digest());
}

/// Run by [`the_same_log_folds_to_the_same_digest_in_another_process`] in
/// a child process: prints one `digest <seed> <hex>` line per seed.
#[test]
#[ignore = "run by the_same_log_folds_to_the_same_digest_in_another_process"]
fn print_digests() {
    for seed in SEEDS {
        println!("digest {seed} {}", digest_of(seed));
    }
}

#[test]
fn the_same_log_folds_to_the_same_digest_in_another_process() {
    let ours: Vec<String> = SEEDS
        .iter()
        .map(|seed| format!("digest {seed} {}", digest_of(*seed)))
        .collect();
    // This test binary again, as a new process: std's hash maps there are
    // seeded with other random keys.
    let output = Process::new(std::env::current_exe().unwrap())
        .args([
            "fold_determinism::print_digests",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let theirs: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("digest "))
        .map(str::to_string)
        .collect();
    assert_eq!(theirs, ours);
}
