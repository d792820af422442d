//! `PolicyChain`: the drop-in policies in file-name order, then the
//! built-in default, asked in turn; and the [`Decision`] one message gets.

use std::sync::Arc;

use super::bindings::{Action, Envelope, Verdict};
use super::pool::{CallError, LoadedPolicy};

/// The result of asking the chain about one message.
pub enum Decision {
    /// A policy decided: apply these actions with the (possibly rewritten) envelope.
    Act {
        actions: Vec<Action>,
        envelope: Envelope,
        rewritten: bool,
    },
    /// A policy refused: `error forbidden` to the sender.
    Deny { reason: String },
    /// A policy failed: fail closed, `error internal` to the sender.
    Failed(CallError),
    /// Every policy passed; nobody handles this type.
    Unhandled,
}

/// Policies in file-name order, then the built-in default.
pub struct PolicyChain {
    policies: Vec<Arc<LoadedPolicy>>,
}

impl PolicyChain {
    pub fn new(drop_ins: Vec<Arc<LoadedPolicy>>, default: Arc<LoadedPolicy>) -> Self {
        let mut policies = drop_ins;
        policies.push(default);
        Self { policies }
    }

    pub fn policies(&self) -> &[Arc<LoadedPolicy>] {
        &self.policies
    }

    pub async fn on_message(&self, mut envelope: Envelope) -> Decision {
        let from = envelope.from.clone();
        let mut rewritten = false;
        for policy in &self.policies {
            match policy.on_message(&envelope).await {
                Err(e) => return Decision::Failed(e),
                Ok(Verdict::Next) => {}
                Ok(Verdict::NextWith(mut e)) => {
                    e.from = from.clone();
                    envelope = e;
                    rewritten = true;
                }
                Ok(Verdict::Done(actions)) => {
                    return Decision::Act {
                        actions,
                        envelope,
                        rewritten,
                    };
                }
                Ok(Verdict::Deny(reason)) => return Decision::Deny { reason },
            }
        }
        Decision::Unhandled
    }

    /// Admits a socket unless a policy denies it (or fails: closed).
    pub async fn on_connect(&self, session: &str, peer: &str) -> Result<Vec<Action>, String> {
        for policy in &self.policies {
            match policy.on_connect(session, peer).await {
                Err(e) => return Err(e.to_string()),
                Ok(Verdict::Deny(reason)) => return Err(reason),
                Ok(Verdict::Done(actions)) => return Ok(actions),
                Ok(Verdict::Next | Verdict::NextWith(_)) => {}
            }
        }
        Ok(Vec::new())
    }

    /// Every policy is told; their actions are returned in chain order.
    pub async fn on_disconnect(&self, session: &str) -> Vec<Action> {
        let mut all = Vec::new();
        for policy in &self.policies {
            match policy.on_disconnect(session).await {
                Ok(actions) => all.extend(actions),
                Err(e) => {
                    static LOG: chat_turn::stats::LogBudget = chat_turn::stats::LogBudget::new();
                    if let Some(suppressed) = LOG.take() {
                        tracing::warn!(
                            suppressed,
                            "{e} (on-disconnect; the session is removed anyway)"
                        );
                    }
                }
            }
        }
        all
    }
}
