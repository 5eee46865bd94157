//! The sandbox backend: deterministic outcomes chosen by the destination's last four digits, so a
//! client can integrate the API (and CI can test the whole engine) without placing a call.
//!
//! It emits the same `CallEvent`s a PBX backend does, on the same channel, and plays prompts for
//! their real recorded durations. Like a test card number at a payment processor:
//!
//! | last digits | what happens |
//! |---|---|
//! | `0016` | rings, never answers |
//! | `0017` | rings, then busy (486, cause 17) |
//! | `0021` | rings, then rejected (603, cause 21) |
//! | `0031` | rings, then rejected by the operator (403, cause 31) |
//! | `0041` | fails at once: billing problem at the carrier (cause 41) |
//! | `0034` | fails at once: unreachable, no circuit (503, cause 34) |
//! | `0181` | forwarding signalled (181 + Diversion), rings, then answers unless dropped |
//! | anything else | rings, answers about a second later |
//!
//! It never decides outcomes (the engine's machine and cause table do) and holds no state beyond
//! the calls in progress.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use super::{Backend, BackendError, BackendEvent, CallEvent, Command, EventSender, Hangup};
use crate::call::{CallId, EndedBy, Msisdn};
use crate::sounds::Sounds;

/// Timings of the simulated far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// When the phone starts ringing (or the failure arrives) after the call is placed.
    pub ring_after_ms: u64,
    /// When a phone that answers does so.
    pub answer_after_ms: u64,
    /// A far end that answered hangs up on its own after this long.
    pub max_call_ms: u64,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            ring_after_ms: 200,
            answer_after_ms: 1000,
            max_call_ms: 120_000,
        }
    }
}

/// The scripted behaviour of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    RingForever,
    RingThenFail { q850: u16, sip: u16 },
    FailAtOnce { q850: u16, sip: u16 },
    ForwardThenAnswer,
    Answer,
}

impl Script {
    pub fn for_destination(number: Msisdn) -> Script {
        match number.suffix(4) {
            16 => Script::RingForever,
            17 => Script::RingThenFail { q850: 17, sip: 486 },
            21 => Script::RingThenFail { q850: 21, sip: 603 },
            31 => Script::RingThenFail { q850: 31, sip: 403 },
            41 => Script::FailAtOnce { q850: 41, sip: 503 },
            34 => Script::FailAtOnce { q850: 34, sip: 503 },
            181 => Script::ForwardThenAnswer,
            _ => Script::Answer,
        }
    }

    /// The events the far end produces on its own, with their delays from the call's start.
    fn timeline(self, s: &SandboxSettings, destination: Msisdn) -> Vec<(u64, CallEvent)> {
        let ring = CallEvent::Progress { early_media: false };
        let fail = |q850, sip, ended_by| {
            CallEvent::Hangup(Hangup {
                q850,
                sip_status: Some(sip),
                ended_by,
            })
        };
        let bye = CallEvent::Hangup(Hangup {
            q850: 16,
            sip_status: None,
            ended_by: EndedBy::Remote,
        });
        let answer_at = s.answer_after_ms.max(s.ring_after_ms);
        match self {
            Script::RingForever => vec![(s.ring_after_ms, ring)],
            Script::RingThenFail { q850, sip } => {
                vec![
                    (s.ring_after_ms, ring),
                    (answer_at, fail(q850, sip, EndedBy::Remote)),
                ]
            }
            Script::FailAtOnce { q850, sip } => {
                vec![(s.ring_after_ms, fail(q850, sip, EndedBy::Local))]
            }
            Script::ForwardThenAnswer => {
                // The forwarded-to number: the dialled one with its last digits changed, as a
                // Diversion header would name it.
                let to = Msisdn::from_u64(destination.value() - destination.suffix(4) + 9999).ok();
                vec![
                    (s.ring_after_ms / 2, CallEvent::Forwarded { to }),
                    (s.ring_after_ms, ring),
                    (answer_at, CallEvent::Answered),
                    (answer_at + s.max_call_ms, bye),
                ]
            }
            Script::Answer => vec![
                (s.ring_after_ms, ring),
                (answer_at, CallEvent::Answered),
                (answer_at + s.max_call_ms, bye),
            ],
        }
    }
}

enum Input {
    Command(Command),
    /// A scheduled far-end event; dropped if its call has ended meanwhile.
    Fire {
        call: CallId,
        event: CallEvent,
    },
}

pub struct Sandbox {
    name: String,
    input: mpsc::UnboundedSender<Input>,
}

impl Sandbox {
    /// Starts the sandbox's driver task.
    pub fn start(
        name: &str,
        settings: SandboxSettings,
        sounds: Arc<Sounds>,
        events: EventSender,
    ) -> Sandbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            settings,
            sounds,
            events,
            input: tx.clone(),
            calls: HashMap::new(),
        };
        tokio::spawn(driver.run(rx));
        Sandbox {
            name: name.to_string(),
            input: tx,
        }
    }
}

impl Backend for Sandbox {
    fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, command: Command) -> Result<(), BackendError> {
        self.input
            .send(Input::Command(command))
            .map_err(|_| BackendError::Unavailable(self.name.clone()))
    }

    fn is_available(&self) -> bool {
        !self.input.is_closed()
    }
}

struct SandboxCall {
    language: Arc<str>,
    answered: bool,
}

struct Driver {
    settings: SandboxSettings,
    sounds: Arc<Sounds>,
    events: EventSender,
    input: mpsc::UnboundedSender<Input>,
    calls: HashMap<CallId, SandboxCall>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Command(c) => self.command(c).await,
                Input::Fire { call, event } => self.fire(call, event).await,
            }
        }
    }

    fn schedule(&self, call: CallId, after: Duration, event: CallEvent) {
        let input = self.input.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = input.send(Input::Fire { call, event });
        });
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Originate(o) => {
                let script = Script::for_destination(o.destination);
                debug!(call = %o.call, to = %o.destination, ?script, "sandbox call placed");
                self.calls.insert(
                    o.call,
                    SandboxCall {
                        language: o.language.clone(),
                        answered: false,
                    },
                );
                for (at, event) in script.timeline(&self.settings, o.destination) {
                    self.schedule(o.call, Duration::from_millis(at), event);
                }
            }
            Command::Play { call, seq, prompt } => {
                let Some(c) = self.calls.get(&call) else {
                    return;
                };
                if !c.answered {
                    return;
                }
                let duration = self
                    .sounds
                    .language(&c.language)
                    .map(|l| l.duration(prompt))
                    .unwrap_or(Duration::from_millis(500));
                self.schedule(call, duration, CallEvent::PromptDone { seq });
            }
            // Sandbox calls die with the process: nothing survives a restart.
            Command::Release { .. } => {}
            Command::Hangup { call, q850 } => {
                if self.calls.remove(&call).is_some() {
                    let ended = CallEvent::Hangup(Hangup {
                        q850,
                        sip_status: None,
                        ended_by: EndedBy::Us,
                    });
                    self.emit(call, ended).await;
                }
            }
        }
    }

    async fn fire(&mut self, call: CallId, event: CallEvent) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match event {
            CallEvent::Answered => c.answered = true,
            CallEvent::Hangup(_) => {
                self.calls.remove(&call);
            }
            _ => {}
        }
        self.emit(call, event).await;
    }

    async fn emit(&self, call: CallId, event: CallEvent) {
        let _ = self.events.send(BackendEvent { call, event }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(n: &str) -> Script {
        Script::for_destination(n.parse().unwrap())
    }

    #[test]
    fn outcomes_follow_the_last_four_digits() {
        assert_eq!(script("79990000016"), Script::RingForever);
        assert_eq!(
            script("79990000017"),
            Script::RingThenFail { q850: 17, sip: 486 }
        );
        assert_eq!(
            script("79990000021"),
            Script::RingThenFail { q850: 21, sip: 603 }
        );
        assert_eq!(
            script("79990000031"),
            Script::RingThenFail { q850: 31, sip: 403 }
        );
        assert_eq!(
            script("79990000041"),
            Script::FailAtOnce { q850: 41, sip: 503 }
        );
        assert_eq!(
            script("79990000034"),
            Script::FailAtOnce { q850: 34, sip: 503 }
        );
        assert_eq!(script("79990000181"), Script::ForwardThenAnswer);
        assert_eq!(script("79991234567"), Script::Answer);
        // Only the last four digits count.
        assert_eq!(
            script("79995550017"),
            Script::RingThenFail { q850: 17, sip: 486 }
        );
        assert_eq!(script("79990001700"), Script::Answer);
        assert_eq!(script("79990011810"), Script::Answer);
    }

    #[test]
    fn forwarding_comes_before_ringing_and_names_a_different_number() {
        let dest: Msisdn = "79990000181".parse().unwrap();
        let t = Script::ForwardThenAnswer.timeline(&SandboxSettings::default(), dest);
        let CallEvent::Forwarded { to: Some(to) } = t[0].1 else {
            panic!("{t:?}")
        };
        assert_ne!(to, dest);
        assert!(t[0].0 < t[1].0);
        assert_eq!(t[2].1, CallEvent::Answered);
    }
}
