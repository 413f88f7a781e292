//! The compute pool: the CPU-bound part of the hub's queries (ranking
//! strategies, matching patterns, checking an action, choosing a
//! combination) runs here, on one thread per core, not on the async
//! runtime's threads.
//!
//! Why: the runtime's threads read requests off the connections, and only
//! a request that has been read can be admitted or refused by the load
//! shedder (`overload`). When queries ran on them, a flood of queries kept
//! those threads busy computing, new requests waited unread in the socket
//! buffers where no bound could see them, and every admitted call waited
//! behind that invisible queue: at 3× capacity (open loop, one core)
//! admitted p99 went from ~20 ms to over 2 s and nothing was refused.
//! With the work here, the scheduler shares the core between the threads
//! that read and refuse and the threads that compute, so the excess is
//! refused instead of queued (RELIABILITY.md, overload).
//!
//! Writes need no pool: they already leave the runtime for the writer
//! thread. The pool is not bounded on its own: the load shedder's bound on
//! calls in progress bounds what can wait here.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex, mpsc},
    thread,
};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running closures, answering through futures.
#[derive(Debug)]
pub struct ComputePool {
    jobs: Mutex<mpsc::Sender<Job>>,
    threads: usize,
}

impl ComputePool {
    /// One thread per core this process may run on (at least one).
    pub fn per_core() -> Result<Arc<Self>> {
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(threads)
    }

    /// `threads` workers; they end when the pool is dropped.
    pub fn new(threads: usize) -> Result<Arc<Self>> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("hub-compute-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // pool dropped
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start compute thread: {e}")))?;
        }
        Ok(Arc::new(ComputePool {
            jobs: Mutex::new(jobs),
            threads,
        }))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on a pool thread and resolves to its result. A panic in
    /// `work` is caught there (the thread lives on) and becomes an
    /// internal error.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(catch_unwind(AssertUnwindSafe(work)));
        });
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.send(job).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(Error::Internal("the compute pool has stopped".into()));
        }
        match answered.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(Error::Internal("a query panicked".into())),
            Err(_) => Err(Error::Internal("the compute pool dropped a query".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_off_the_caller_and_survives_a_panic() {
        let pool = ComputePool::new(2).unwrap();
        assert_eq!(pool.threads(), 2);
        let caller = thread::current().id();
        let (value, worker) = pool
            .run(|| (6 * 7, thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(value, 42);
        assert!(worker.unwrap().starts_with("hub-compute-"));
        assert_ne!(pool.run(|| thread::current().id()).await.unwrap(), caller);

        let panicked = pool.run(|| -> u32 { panic!("a bug in a query") }).await;
        assert_eq!(panicked, Err(Error::Internal("a query panicked".into())));
        // Both threads still serve.
        let many: Vec<u32> =
            futures_util::future::join_all((0..100u32).map(|i| pool.run(move || i)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert_eq!(many, (0..100).collect::<Vec<_>>());
    }
}
