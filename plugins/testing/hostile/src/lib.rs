//! A policy that misbehaves on request, for the host's sandbox tests: a
//! message of type `loop` spins forever, `trap` panics, `oom` allocates
//! until it is stopped, `sleep` waits an hour on a WASI clock. Anything else passes to the next policy.

use webrtc_chat_policy::{Envelope, Policy, Verdict, register_policy};

struct Hostile;

impl Policy for Hostile {
    fn on_message(e: &Envelope) -> Verdict {
        match e.kind.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("hostile policy traps on purpose"),
            // Waits on the host (a WASI clock), where the epoch cannot reach.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Verdict::Next
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => Verdict::Next,
        }
    }
}

register_policy!(Hostile);
