//! The bulk lane: a worker thread at a lower OS priority for the heavy,
//! throughput-bound work a client can ask of the relay, so it never takes
//! CPU time from interactive traffic while both want it.
//!
//! Two kinds of work go there: reading the rest of a message once its head
//! announces [`BULK_FROM`] bytes or more (a 4K keyframe, an oversized
//! upload), and checking costly source messages (large ZRLE deltas, large
//! signal JSON). Everything else, including every receiver's fan-out,
//! stays on the runtime's workers. With the relay on one core, the kernel
//! then gives the workers ~90 % of it whenever they have work (nice 0
//! against nice 10), and the bulk lane every cycle they leave.

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// Messages from this size up are read on the bulk lane.
pub(crate) const BULK_FROM: usize = 4 << 20;

/// How much nicer than the relay's own threads the bulk lane runs.
const NICE: libc::c_int = 10;

/// The nicest a thread can be.
const NICEST: libc::c_int = 19;

/// The bulk lane. See the module docs.
#[derive(Debug)]
pub(crate) struct Bulk {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Bulk {
    /// Starts the lane's thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay-bulk")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// A handle to spawn tasks on the lane with.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs CPU-bound `work` on one of the lane's blocking threads.
    pub(crate) fn spawn_blocking<F, R>(&self, work: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle.spawn_blocking(work)
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // May run inside the main runtime (tests): never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Makes the calling thread [`NICE`] steps nicer than it was (best effort:
/// a relay that may not change priorities still works, only without the
/// preference).
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICE).min(NICEST)) };
    if rc != 0 {
        tracing::debug!("bulk lane: cannot lower its priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn niceness() -> libc::c_int {
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
    }

    #[tokio::test]
    async fn work_runs_on_threads_at_a_lower_priority() {
        let bulk = Bulk::start().unwrap();
        let here = niceness();
        let task = bulk.handle().spawn(async { niceness() }).await.unwrap();
        let blocking = bulk.spawn_blocking(niceness).await.unwrap();
        assert_eq!(task, (here + NICE).min(NICEST));
        assert_eq!(blocking, (here + NICE).min(NICEST));
        assert_eq!(niceness(), here, "the caller's thread is unchanged");
    }
}
