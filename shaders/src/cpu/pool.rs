//! A small thread pool for the matrix products of decode, whose workers spin briefly between
//! jobs before sleeping.
//!
//! A decode step runs ~150 short parallel products one after another. Waking sleeping threads for
//! each costs tens of microseconds, a large share of a step of a few milliseconds, so the workers
//! stay hot while steps keep coming and sleep on a condition variable when they stop.
//!
//! The caller never waits for a worker that has not started a job: once the caller is through
//! its own share, the job is closed, and a worker that was asleep or lost its core to another
//! thread (the node's network tasks share the cores) finds it closed and leaves the work to
//! the threads that ran it. Spinning threads yield now and then, so that those other threads
//! get a core.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// A raw pointer that the threads of one job share because each writes a disjoint part of the
/// buffer behind it.
#[derive(Clone, Copy)]
pub struct SharedOut(pub *mut f32);
// SAFETY: users write disjoint ranges only, and the buffer outlives the job (`Pool::run` returns
// after every thread is done).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `i` elements in. Going through a method makes closures capture the whole
    /// (shareable) wrapper rather than its raw pointer field.
    pub fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

type Job = &'static (dyn Fn() + Sync);

/// Set in [`Shared::joined`] once the caller is through: no worker joins the job any more.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Spins between two yields of the processor.
const SPINS_PER_YIELD: u32 = 256;

struct Shared {
    /// The number of the latest job.
    epoch: AtomicUsize,
    /// The job in place, with its number.
    job: Mutex<Option<(usize, Job)>>,
    /// Workers running the job, and [`CLOSED`].
    joined: AtomicUsize,
    /// Set by a worker whose run of the job panicked; the caller panics in turn.
    panicked: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// One job at a time: callers from several threads take turns.
    turn: Mutex<()>,
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of threads (the caller included) before the pool is first used.
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// The process-wide pool.
pub fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = match THREADS.load(Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Pool::new(n)
    })
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            joined: AtomicUsize::new(CLOSED),
            panicked: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        // A thread the system refuses leaves the pool smaller, not the process dead.
        let mut spawned = 1;
        for i in 1..threads {
            let s = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("baton-cpu-{i}"))
                .spawn(move || worker(&s));
            if thread.is_ok() {
                spawned += 1;
            }
        }
        Pool {
            shared,
            threads: spawned,
            turn: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this thread and on every worker that takes it up before this thread is done
    /// with it, and returns when all of those are done. `f` shares out its work itself (for
    /// example through an atomic counter), so that the calling thread alone would do all of
    /// it. If `f` panics on any thread, `run` waits for the others and then panics on the
    /// caller's thread; the pool stays usable.
    pub fn run(&self, f: &(dyn Fn() + Sync)) {
        if self.threads == 1 {
            f();
            return;
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: workers use the reference only between joining the job (while it is open)
        // and leaving it, and this function closes the job and waits for every worker that
        // joined to leave before it returns or unwinds (a panic of `f` here is caught until
        // then; workers catch theirs and leave all the same), so `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(f) };
        // The job is in place before it opens: a worker that joins reads this one.
        let number = self.shared.epoch.load(Ordering::SeqCst).wrapping_add(1);
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((number, job));
        self.shared.joined.store(0, Ordering::SeqCst);
        self.shared.epoch.store(number, Ordering::SeqCst);
        if *self
            .shared
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            > 0
        {
            self.shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(f));
        // No one joins from now on; wait for those who did.
        self.shared.joined.fetch_or(CLOSED, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.shared.joined.load(Ordering::Acquire) != CLOSED {
            spin_or_yield(&mut spins);
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let theirs = self.shared.panicked.swap(false, Ordering::SeqCst);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if theirs {
            panic!("a compute thread panicked running a job");
        }
    }
}

impl Pool {
    /// Calls `f(i, scratch)` for every `i` in `0..n`, shared out across the pool's threads as
    /// they come free; each thread makes its scratch space once with `init`.
    pub fn for_each<S>(
        &self,
        n: usize,
        init: impl Fn() -> S + Sync,
        f: impl Fn(usize, &mut S) + Sync,
    ) {
        let next = AtomicUsize::new(0);
        self.run(&|| {
            let mut scratch = init();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i, &mut scratch);
            }
        });
    }
}

/// One turn of a wait: a spin, and every [`SPINS_PER_YIELD`] spins a yield of the processor.
fn spin_or_yield(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(SPINS_PER_YIELD) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Joins the open job, if there is one.
fn join(s: &Shared) -> bool {
    let mut now = s.joined.load(Ordering::SeqCst);
    loop {
        if now & CLOSED != 0 {
            return false;
        }
        match s
            .joined
            .compare_exchange_weak(now, now + 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return true,
            Err(actual) => now = actual,
        }
    }
}

fn worker(s: &Shared) {
    // Workers exist before the first job, whose epoch is 1.
    let mut seen = 0;
    let mut last = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::SeqCst) == seen {
            spin_or_yield(&mut spins);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
            }
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
        }
        seen = s.epoch.load(Ordering::SeqCst);
        if !join(s) {
            // The caller finished the job without this thread.
            continue;
        }
        // Joined while the job was open: it is the one in place (perhaps a newer one than the
        // epoch seen), and it stays valid until this thread leaves. Each job runs once here.
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((number, f)) = job.filter(|(n, _)| *n != last) {
            last = number;
            if catch_unwind(AssertUnwindSafe(f)).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.joined.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_runs_once_across_many_jobs() {
        let pool = Pool::new(3);
        for n in [0usize, 1, 7, 1000] {
            let next = AtomicUsize::new(0);
            let done: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                done[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
        }
        // After the workers fall asleep, a job still wakes them: each joins a job that waits
        // for all, once.
        std::thread::sleep(SPIN * 3);
        let count = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        pool.run(&|| {
            count.fetch_add(1, Ordering::SeqCst);
            while count.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    /// A worker that never gets to start a job (asleep, or without a core while other threads
    /// hold them) is not waited for: the caller does all the work and returns. Here the pool
    /// counts a worker that does not exist.
    #[test]
    fn the_caller_does_not_wait_for_a_worker_that_never_starts() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut pool = Pool::new(1);
            pool.threads = 2;
            let n = AtomicUsize::new(0);
            pool.for_each(
                100,
                || (),
                |_, _| {
                    n.fetch_add(1, Ordering::Relaxed);
                },
            );
            let _ = tx.send(n.into_inner());
        });
        let done = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            done,
            Ok(100),
            "the caller waited for a worker that never came"
        );
    }

    /// A panic on any thread reaches the caller once every thread is done with the job, and the
    /// pool runs the next job. A worker's panic once left the caller spinning forever, and the
    /// caller's own left workers on a closure that no longer existed.
    #[test]
    fn a_panic_on_any_thread_reaches_the_caller_and_the_pool_goes_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = Pool::new(3);
            let caller = std::thread::current().id();
            // The caller stays in the job until a worker has entered it.
            let entered = AtomicBool::new(false);
            let deadline = Instant::now() + Duration::from_secs(20);
            let on_workers = catch_unwind(AssertUnwindSafe(|| {
                pool.run(&|| {
                    if std::thread::current().id() != caller {
                        entered.store(true, Ordering::SeqCst);
                        panic!("worker");
                    }
                    while !entered.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            }));
            let on_caller = catch_unwind(AssertUnwindSafe(|| {
                pool.run(&|| {
                    if std::thread::current().id() == caller {
                        panic!("caller");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                })
            }));
            let count = AtomicUsize::new(0);
            let deadline = Instant::now() + Duration::from_secs(20);
            pool.run(&|| {
                count.fetch_add(1, Ordering::SeqCst);
                while count.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            let _ = tx.send((on_workers.is_err(), on_caller.is_err(), count.into_inner()));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the pool hung after a panic");
        assert_eq!(got, (true, true, 3));
    }
}
