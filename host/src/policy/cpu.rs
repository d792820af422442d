//! A policy's deadline is a budget of CPU time, not of wall-clock time: on
//! an overloaded machine a call that is preempted must not be blamed (and
//! quarantined) for the time other threads ran.
//!
//! Reading a thread's CPU clock is a system call — about 0.5 µs here, a
//! third of a whole policy call — so the hot path never makes it. A call
//! only marks its thread busy (a generation number, odd while a call runs
//! on it); the epoch ticker, once a millisecond, samples the CPU clock of
//! each thread it finds busy with a call it has not sampled yet. A call
//! that reaches its deadline in wall-clock time (the epoch callback) reads
//! its own thread's CPU clock and compares it with that sample: the CPU
//! time the call used, give or take one tick. Calls that finish within a
//! tick — nearly all — cost two stores and are never sampled.
//!
//! Then [`judge`] decides: a call that used its deadline in CPU time is
//! stopped (the policy's fault); one that did not yet is given the rest of
//! its budget, up to a wall-clock ceiling ([`wall_ceiling`]) past which it
//! is stopped as [`Overloaded`] — failed closed, but not counted against
//! the policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

/// One thread that has run policy calls.
struct ThreadSlot {
    /// Odd while a call runs on the thread; bumped at each start and end.
    generation: AtomicU64,
    /// The CPU clock of the thread as sampled during call `.0`: `.1` ns.
    sample: Mutex<(u64, u64)>,
    #[cfg(target_os = "linux")]
    clock: libc::clockid_t,
}

/// Threads that have run policy calls (dropped ones are pruned by the ticker).
static THREADS: Mutex<Vec<Weak<ThreadSlot>>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: Arc<ThreadSlot> = register();
}

fn register() -> Arc<ThreadSlot> {
    let slot = Arc::new(ThreadSlot {
        generation: AtomicU64::new(0),
        sample: Mutex::new((0, 0)),
        #[cfg(target_os = "linux")]
        clock: {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: `pthread_self` is always valid for the calling thread.
            let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
            if rc == 0 {
                clock
            } else {
                libc::CLOCK_THREAD_CPUTIME_ID
            }
        },
    });
    THREADS.lock().push(Arc::downgrade(&slot));
    slot
}

/// Marks the current thread busy with a call until the guard drops (on the
/// same thread: it is not `Send`).
pub(super) struct Busy(std::marker::PhantomData<*const ()>);

pub(super) fn enter() -> Busy {
    SLOT.with(|slot| {
        let g = slot.generation.load(Ordering::Relaxed);
        slot.generation.store(g | 1, Ordering::Release);
    });
    Busy(std::marker::PhantomData)
}

impl Drop for Busy {
    fn drop(&mut self) {
        SLOT.with(|slot| {
            let g = slot.generation.load(Ordering::Relaxed);
            slot.generation.store((g | 1) + 1, Ordering::Release);
        });
    }
}

/// Starts a new call on this busy thread: the CPU time counted so far
/// (say, a fresh instance's start-up, under a budget of its own) no longer
/// counts against it. The ticker samples the new call at its next tick.
pub(super) fn restart() {
    SLOT.with(|slot| {
        let g = slot.generation.load(Ordering::Relaxed);
        if g & 1 == 1 {
            slot.generation.store(g + 2, Ordering::Release);
        }
    });
}

/// For the epoch ticker: samples the CPU clock of every thread busy with a
/// call not sampled yet, and forgets threads that have ended.
pub(super) fn sample_busy_threads() {
    THREADS.lock().retain(|weak| {
        let Some(slot) = weak.upgrade() else {
            return false;
        };
        let g = slot.generation.load(Ordering::Acquire);
        if g & 1 == 1 {
            let mut sample = slot.sample.lock();
            if sample.0 != g
                && let Some(ns) = thread_cpu_ns(&slot)
            {
                *sample = (g, ns);
            }
        }
        true
    });
}

/// The CPU time the call running on this thread has used since the ticker
/// sampled it (plus one tick, for the time before the sample), or `None`
/// when it was not sampled yet (the caller then counts wall-clock time).
pub(super) fn used_by_current_call(tick: Duration) -> Option<Duration> {
    SLOT.with(|slot| {
        let g = slot.generation.load(Ordering::Relaxed);
        let (sampled_gen, sampled_ns) = *slot.sample.lock();
        if g & 1 == 0 || sampled_gen != g {
            return None;
        }
        let now = thread_cpu_ns(slot)?;
        Some(Duration::from_nanos(now.saturating_sub(sampled_ns)) + tick)
    })
}

#[cfg(target_os = "linux")]
fn thread_cpu_ns(slot: &ThreadSlot) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; a stale clock id fails with EINVAL.
    let rc = unsafe { libc::clock_gettime(slot.clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns(_: &ThreadSlot) -> Option<u64> {
    None
}

/// How long a call may take in wall-clock time, whatever its CPU time: a
/// session waits for its policies, so a preempted call cannot wait forever.
pub(super) fn wall_ceiling(deadline: Duration) -> Duration {
    (deadline * 10).max(Duration::from_secs(1))
}

/// A call stopped at the wall-clock ceiling before it used its CPU budget:
/// the machine was too busy to run it, and the policy is not to blame.
#[derive(Debug, thiserror::Error)]
#[error(
    "was preempted: {} ms passed but it ran only {} ms on the CPU (the machine is overloaded); failed closed, not counted against the policy",
    wall.as_millis(),
    cpu.as_millis()
)]
pub(super) struct Overloaded {
    pub wall: Duration,
    pub cpu: Duration,
}

/// What a call that reached its deadline in wall-clock time gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Judgement {
    /// It used its CPU budget: stop it, the policy's fault.
    Stop,
    /// It has not, but the wall-clock ceiling is reached.
    Overloaded,
    /// It has not: run on for this many more ticks.
    Extend(u64),
}

/// `cpu`: the CPU time the call used, when known (else wall-clock time
/// counts, as if it had run all along).
pub(super) fn judge(
    cpu: Option<Duration>,
    wall: Duration,
    deadline: Duration,
    tick: Duration,
) -> Judgement {
    let cpu = cpu.unwrap_or(wall);
    if cpu >= deadline {
        return Judgement::Stop;
    }
    let ceiling = wall_ceiling(deadline);
    if wall >= ceiling {
        return Judgement::Overloaded;
    }
    let left = (deadline - cpu).min(ceiling - wall);
    Judgement::Extend((left.as_nanos() / tick.as_nanos()).max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(1);
    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_call_is_judged_by_cpu_time() {
        let d = ms(50);
        // Ran the whole time: stopped at the deadline, as before.
        assert_eq!(judge(Some(ms(50)), ms(50), d, TICK), Judgement::Stop);
        assert_eq!(judge(None, ms(50), d, TICK), Judgement::Stop);
        // Preempted: it gets the rest of its CPU budget.
        assert_eq!(judge(Some(ms(5)), ms(50), d, TICK), Judgement::Extend(45));
        assert_eq!(judge(Some(ms(49)), ms(400), d, TICK), Judgement::Extend(1));
        // …but not past the wall-clock ceiling, where it is not blamed.
        assert_eq!(judge(Some(ms(5)), ms(990), d, TICK), Judgement::Extend(10));
        assert_eq!(judge(Some(ms(5)), ms(1000), d, TICK), Judgement::Overloaded);
        // CPU spent still counts past the ceiling.
        assert_eq!(judge(Some(ms(60)), ms(1500), d, TICK), Judgement::Stop);
    }

    #[test]
    fn the_ceiling_is_ten_deadlines_and_at_least_a_second() {
        assert_eq!(wall_ceiling(ms(50)), ms(1000));
        assert_eq!(wall_ceiling(ms(500)), ms(5000));
    }

    /// What the epoch callback returns for a preempted call reaches the
    /// caller as itself (the pool tells it apart from a deadline by
    /// downcasting, to keep it out of the quarantine count).
    #[test]
    fn an_overloaded_stop_reaches_the_caller_as_itself() {
        use wasmtime::{Config, Engine, Instance, Module, Store};
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let module =
            Module::new(&engine, r#"(module (func (export "spin") (loop (br 0))))"#).unwrap();
        let mut store = Store::new(&engine, ());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| {
            Err(Overloaded {
                wall: ms(1000),
                cpu: ms(3),
            }
            .into())
        });
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        engine.increment_epoch();
        let e = spin.call(&mut store, ()).unwrap_err();
        let o = e.downcast_ref::<Overloaded>().expect("an Overloaded error");
        assert_eq!((o.wall, o.cpu), (ms(1000), ms(3)));
        assert!(
            e.downcast_ref::<wasmtime::Trap>().is_none(),
            "not a deadline trap"
        );
    }

    /// The ticker's sample and the callback's reading measure the CPU time
    /// of the call on this thread, not the time it waited.
    #[cfg(target_os = "linux")]
    #[test]
    fn busy_threads_are_sampled_and_measured() {
        let busy = enter();
        assert_eq!(used_by_current_call(TICK), None, "not sampled yet");
        sample_busy_threads();
        std::thread::sleep(ms(30));
        let waited = used_by_current_call(TICK).expect("sampled");
        assert!(waited < ms(10), "sleeping is not CPU time: {waited:?}");
        // Spinning is (however long this loaded machine takes to give it 30 ms).
        let start = std::time::Instant::now();
        while used_by_current_call(TICK).unwrap() < waited + ms(30) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no CPU time counted"
            );
        }
        // A restarted call starts from nothing.
        restart();
        assert_eq!(used_by_current_call(TICK), None, "a new call");
        sample_busy_threads();
        assert!(used_by_current_call(TICK).unwrap() < ms(10));
        drop(busy);
        assert_eq!(used_by_current_call(TICK), None, "no call on this thread");
        // The next call is a new one, sampled afresh.
        let _busy = enter();
        assert_eq!(used_by_current_call(TICK), None);
    }
}
