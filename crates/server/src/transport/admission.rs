//! What a connection may hold before and after it is trusted.
//!
//! A connection still in its TLS handshake has proved nothing, so it must
//! not be able to take what authenticated clients need: handshakes draw
//! from their own budget ([`Admission::handshake`]), and authenticated
//! connections from theirs ([`Admission::connection`]: `max_connections`,
//! and `max_connections_per_identity` for each certificate's identity).
//!
//! The handshake budget is shaped by how a flood of sockets that never
//! speak (they need no certificate to open) actually hurts. Holding such a
//! socket costs the hub a file descriptor and a few hundred bytes; what
//! costs is *churn*: a socket the hub closes is reopened at once, so
//! closing silent sockets early — with a short deadline, or to make room —
//! turns a few thousand idle sockets into tens of thousands of new
//! connections a second that fill the kernel's accept queue, and a real
//! client's connection attempt then waits a second for its SYN to be
//! retried (measured: p50 1.2 s). So silent sockets are held until their
//! deadline (`handshake_timeout`, 10 s) while there is room — up to
//! `max_handshakes`, and never past the file descriptors the process may
//! still open — and only when there is none is one cut for the newcomer:
//!
//! 1. from the source with the most pending handshakes, if it has more than
//!    `max_handshakes_per_source` (one address cannot take the budget from
//!    the others);
//! 2. the oldest that has not sent its ClientHello (a second handle on each
//!    socket shows whether bytes wait unread, so a client that has spoken
//!    is never taken for a silent one before its task reads the hello);
//! 3. only if every pending handshake has spoken, the oldest.
//!
//! A client that sent its hello holds TLS state while it finishes: past
//! half the budget, it gets the short deadline
//! (`handshake_timeout_under_pressure`) for the rest of its handshake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use tokio::sync::oneshot;

use super::ConnectionLimits;

/// File descriptors kept free of handshakes: sled's files, the listeners,
/// refused handshakes lingering, logs.
const FD_RESERVE: usize = 512;

/// The handshake and connection budgets of one listener.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    /// The process's limit on open files (RLIMIT_NOFILE, soft).
    fd_limit: usize,
    pending: Mutex<Pending>,
    open: Mutex<Open>,
    /// Handshakes cut to make room for newer ones, since start.
    cut: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    /// By age: the first is the oldest.
    all: BTreeMap<u64, Entry>,
    /// The same, split: those that have sent no ClientHello yet…
    silent: BTreeSet<u64>,
    /// …and those that have.
    greeted: BTreeSet<u64>,
    by_source: HashMap<IpAddr, Split>,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    cut: oneshot::Sender<()>,
    /// A second handle on the socket, to look for a ClientHello that has
    /// arrived but not been read yet (dropped once the hello is read).
    probe: Option<std::net::TcpStream>,
}

/// Whether bytes wait unread on `probe`'s socket (without reading them).
fn has_spoken(probe: &std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(probe.peek(&mut byte), Ok(n) if n > 0)
}

/// One source's pending handshakes, split as in [`Pending`].
#[derive(Debug, Default)]
struct Split {
    silent: BTreeSet<u64>,
    greeted: BTreeSet<u64>,
}

impl Split {
    fn len(&self) -> usize {
        self.silent.len() + self.greeted.len()
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_identity: HashMap<String, usize>,
}

/// A place in the handshake budget. Dropping it frees the place.
#[derive(Debug)]
pub struct HandshakeTicket {
    admission: Arc<Admission>,
    id: u64,
    source: IpAddr,
    /// Resolves when the handshake is cut for a newer one.
    pub cut: oneshot::Receiver<()>,
    /// How long this handshake may take.
    pub deadline: Duration,
}

impl HandshakeTicket {
    /// What marks this handshake greeted, apart from the ticket (whose
    /// `cut` is awaited meanwhile).
    pub fn greeter(&self) -> Greeter {
        Greeter {
            admission: self.admission.clone(),
            id: self.id,
        }
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        self.admission.remove_pending(self.id, self.source);
    }
}

/// See [`HandshakeTicket::greeter`].
#[derive(Debug)]
pub struct Greeter {
    admission: Arc<Admission>,
    id: u64,
}

impl Greeter {
    /// The client sent its ClientHello: it is no longer among the first to
    /// be cut. Returns the time it has left for the rest of its handshake
    /// under the current pressure (`None`: the full deadline).
    pub fn greeted(&self) -> Option<Duration> {
        let mut pending = self
            .admission
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Admission::mark_greeted(&mut pending, self.id);
        let open = self.admission.open();
        let pressed = pending.all.len() * 2 > self.admission.room(open);
        pressed.then_some(self.admission.limits.handshake_timeout_under_pressure)
    }
}

/// A connection's slots. Dropping it frees them.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    identity: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.by_identity.remove(&self.identity);
            }
        }
    }
}

/// Why an authenticated connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Every connection slot is taken.
    Full(usize),
    /// The identity already holds its share.
    IdentityFull(usize),
}

impl Admission {
    /// Budgets for `limits` in a process that may open `fd_limit` files.
    pub fn new(limits: ConnectionLimits, fd_limit: usize) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            fd_limit,
            pending: Mutex::default(),
            open: Mutex::default(),
            cut: AtomicU64::new(0),
        })
    }

    /// Handshakes that may be pending now, with `open` connections.
    fn room(&self, open: usize) -> usize {
        let by_fds = self.fd_limit.saturating_sub(open + FD_RESERVE);
        self.limits.max_handshakes.min(by_fds).max(1)
    }

    /// A place for a new handshake from `source`, cutting a pending one
    /// when there is no room (see the module docs). `probe`, a second
    /// handle on the new socket, lets a later cut see whether it has
    /// spoken.
    pub fn handshake(
        self: &Arc<Self>,
        source: IpAddr,
        probe: Option<std::net::TcpStream>,
    ) -> HandshakeTicket {
        let (tx, rx) = oneshot::channel();
        let room = self.room(self.open());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.all.len() >= room {
            if let Some(victim) = self.victim(&mut pending) {
                if let Some(entry) = pending.all.remove(&victim) {
                    Self::forget(&mut pending, victim, entry.source);
                    // The victim's task sees its receiver resolve.
                    let _ = entry.cut.send(());
                    self.cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let id = pending.next;
        pending.next += 1;
        pending.all.insert(
            id,
            Entry {
                source,
                cut: tx,
                probe,
            },
        );
        pending.silent.insert(id);
        pending
            .by_source
            .entry(source)
            .or_default()
            .silent
            .insert(id);
        HandshakeTicket {
            admission: self.clone(),
            id,
            source,
            cut: rx,
            deadline: self.limits.handshake_timeout,
        }
    }

    /// The handshake to cut: of the biggest source if it is over its
    /// share, else of anyone; the oldest that has not spoken (those found
    /// to have spoken on the way are moved among the greeted), else the
    /// oldest.
    fn victim(&self, pending: &mut Pending) -> Option<u64> {
        let hog = pending
            .by_source
            .iter()
            .max_by_key(|(_, split)| split.len())
            .filter(|(_, split)| split.len() > self.limits.max_handshakes_per_source)
            .map(|(source, _)| *source);
        loop {
            let silent = match hog {
                Some(source) => pending.by_source.get(&source)?.silent.first().copied(),
                None => pending.silent.first().copied(),
            };
            let Some(id) = silent else { break };
            let spoke = pending
                .all
                .get(&id)
                .and_then(|e| e.probe.as_ref())
                .is_some_and(has_spoken);
            if !spoke {
                return Some(id);
            }
            Self::mark_greeted(pending, id);
        }
        match hog {
            Some(source) => pending.by_source.get(&source)?.greeted.first().copied(),
            None => pending.greeted.first().copied(),
        }
    }

    fn mark_greeted(pending: &mut Pending, id: u64) {
        if pending.silent.remove(&id) {
            pending.greeted.insert(id);
            if let Some(entry) = pending.all.get_mut(&id) {
                entry.probe = None;
                let source = entry.source;
                if let Some(split) = pending.by_source.get_mut(&source) {
                    split.silent.remove(&id);
                    split.greeted.insert(id);
                }
            }
        }
    }

    /// Removes `id` (already out of `all`) from the split sets.
    fn forget(pending: &mut Pending, id: u64, source: IpAddr) {
        pending.silent.remove(&id);
        pending.greeted.remove(&id);
        if let Some(split) = pending.by_source.get_mut(&source) {
            split.silent.remove(&id);
            split.greeted.remove(&id);
            if split.len() == 0 {
                pending.by_source.remove(&source);
            }
        }
    }

    fn remove_pending(&self, id: u64, source: IpAddr) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.all.remove(&id).is_some() {
            Self::forget(&mut pending, id, source);
        }
    }

    /// Slots for an authenticated connection of `identity`.
    pub fn connection(self: &Arc<Self>, identity: &str) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.max_connections.max(1) {
            return Err(Refused::Full(self.limits.max_connections));
        }
        let held = open.by_identity.get(identity).copied().unwrap_or(0);
        if held >= self.limits.max_connections_per_identity.max(1) {
            return Err(Refused::IdentityFull(
                self.limits.max_connections_per_identity,
            ));
        }
        open.total += 1;
        *open.by_identity.entry(identity.to_string()).or_insert(0) += 1;
        Ok(ConnectionSlot {
            admission: self.clone(),
            identity: identity.to_string(),
        })
    }

    /// The limits this admission enforces.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Handshakes in progress now.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .len()
    }

    /// Authenticated connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Handshakes cut for newer ones since start.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }
}

/// Raises this process's limit on open files to the most it may have
/// (the hard limit) and returns it: every connection and every socket
/// still in its handshake holds one.
pub fn raise_fd_limit() -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_handshakes: 4,
            max_handshakes_per_source: 2,
            max_connections: 3,
            max_connections_per_identity: 2,
            ..ConnectionLimits::default()
        }
    }

    fn admission() -> Arc<Admission> {
        Admission::new(limits(), 1_000_000)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    impl Admission {
        fn handshake_at(self: &Arc<Self>, source: IpAddr) -> HandshakeTicket {
            self.handshake(source, None)
        }
    }

    #[test]
    fn silent_handshakes_are_held_while_there_is_room() {
        let admission = admission();
        let mut held: Vec<_> = (0..4).map(|_| admission.handshake_at(ip(1))).collect();
        assert!(held.iter_mut().all(|t| t.cut.try_recv().is_err()));
        assert_eq!((admission.pending(), admission.cut()), (4, 0));
        assert_eq!(held[0].deadline, limits().handshake_timeout);
    }

    #[test]
    fn without_room_the_biggest_source_over_its_share_gives_up_its_oldest_silent_one() {
        let admission = admission();
        let mut other = admission.handshake_at(ip(2));
        let mut hog: Vec<_> = (0..3).map(|_| admission.handshake_at(ip(1))).collect();
        // Full. ip(1) holds 3, over its share of 2: its oldest goes, not
        // the older handshake of ip(2).
        let _new = admission.handshake_at(ip(3));
        assert!(hog[0].cut.try_recv().is_ok());
        assert!(other.cut.try_recv().is_err());
        assert!(hog[1..].iter_mut().all(|t| t.cut.try_recv().is_err()));
        assert_eq!(admission.cut(), 1);
    }

    #[test]
    fn a_handshake_that_spoke_goes_only_when_every_other_has_too() {
        let admission = admission();
        let mut first = admission.handshake_at(ip(1));
        first.greeter().greeted();
        let mut silent = admission.handshake_at(ip(2));
        let mut b = admission.handshake_at(ip(3));
        let mut c = admission.handshake_at(ip(4));
        // No source over its share: the oldest silent one overall.
        let _d = admission.handshake_at(ip(5));
        assert!(silent.cut.try_recv().is_ok());
        assert!(first.cut.try_recv().is_err());
        for t in [&b, &c] {
            t.greeter().greeted();
        }
        // Now only `_d` is silent.
        let mut e = admission.handshake_at(ip(6));
        assert!(e.cut.try_recv().is_err());
        assert!(first.cut.try_recv().is_err());
        e.greeter().greeted();
        let _f = admission.handshake_at(ip(7));
        let _g = admission.handshake_at(ip(8));
        assert!(first.cut.try_recv().is_ok(), "all spoke: the oldest goes");
        assert!(b.cut.try_recv().is_err() && c.cut.try_recv().is_err());
    }

    #[test]
    fn a_hello_past_half_the_room_gets_the_short_deadline() {
        let admission = admission();
        let calm = admission.handshake_at(ip(1));
        assert_eq!(calm.greeter().greeted(), None);
        let _b = admission.handshake_at(ip(2));
        let pressed = admission.handshake_at(ip(3));
        assert_eq!(
            pressed.greeter().greeted(),
            Some(limits().handshake_timeout_under_pressure)
        );
    }

    #[test]
    fn room_never_passes_the_open_files_left() {
        let admission = Admission::new(
            ConnectionLimits {
                max_handshakes: 100,
                ..limits()
            },
            FD_RESERVE + 3,
        );
        let mut first = admission.handshake_at(ip(1));
        let _b = admission.handshake_at(ip(2));
        let _c = admission.handshake_at(ip(3));
        let _d = admission.handshake_at(ip(4));
        assert!(first.cut.try_recv().is_ok(), "3 files left: 3 handshakes");
    }

    #[test]
    fn connections_are_capped_overall_and_per_identity() {
        let admission = admission();
        let a1 = admission.connection("instance a").unwrap();
        let _a2 = admission.connection("instance a").unwrap();
        assert_eq!(
            admission.connection("instance a").unwrap_err(),
            Refused::IdentityFull(2)
        );
        let _b = admission.connection("instance b").unwrap();
        assert_eq!(
            admission.connection("instance c").unwrap_err(),
            Refused::Full(3)
        );
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _a3 = admission.connection("instance a").unwrap();
    }
}
