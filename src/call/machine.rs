//! The per-call state machine: `(state, event, now) → actions`.
//!
//! One `Machine` follows one verification call from dialling to its final outcome. It is pure: it
//! never reads a clock (time is an argument), never does I/O and never allocates — actions come back
//! in a fixed-size `ArrayVec`. The engine executes the actions (dial, play, hang up, persist) and
//! arms one timer per call at `deadline()`.
//!
//! ```text
//! Idle ─► Dialing ─► Early (ringing / early media) ─► Speaking(prompt i) ─► HangingUp ─► Done
//!            │          │ flash: drop after the ring time ───────────────────►│
//!            │          │ forwarding seen and the request asked for the check: drop ─►│
//!            └─ hang-up / failure at any point ──────────────────────────────────────► Done
//! ```
//!
//! Every state has a deadline, so a call whose PBX goes silent still ends.

use std::time::{Duration, Instant};

use arrayvec::ArrayVec;

use super::cause::{classify, EndedBy, Ending, Outcome};
use super::{Code, Method, Msisdn, Prompt};
use crate::backend::{CallEvent, Hangup};

/// Q.850 normal clearing: what we send for every drop. Never 26 ("call completed elsewhere"): phones
/// hide a missed call with that cause, and the missed call is the flash call's whole point.
pub const DROP_CAUSE: u16 = 16;
/// Q.850 no answer: what we send when we give up waiting for an answer.
pub const NO_ANSWER_CAUSE: u16 = 19;

/// Timers of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Flash call: how long it rings before we drop it.
    pub flash_ring: Duration,
    /// From dialling to answer (voice) or to ringing (flash) before we give up.
    pub answer_timeout: Duration,
    /// Added to each prompt's duration before we stop waiting for its completion.
    pub prompt_slack: Duration,
    /// How long the PBX may take to confirm our hang-up before we close the call ourselves.
    pub hangup_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            flash_ring: Duration::from_millis(4000),
            answer_timeout: Duration::from_secs(40),
            prompt_slack: Duration::from_millis(2000),
            hangup_timeout: Duration::from_secs(5),
        }
    }
}

/// What the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSpec {
    pub method: Method,
    pub code: Code,
    /// Voice: speak the code twice.
    pub repeat: bool,
    /// Drop the call before any code is delivered if forwarding is detected.
    pub check_redirect: bool,
    pub timings: Timings,
    /// Prompt durations in milliseconds, indexed by `Prompt::index()`.
    pub prompt_ms: [u32; 11],
}

/// What the engine must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Originate the call.
    Dial,
    /// Play one prompt; its completion comes back as `CallEvent::PromptDone { seq }`.
    Play { seq: u16, prompt: Prompt },
    /// Hang up (or cancel, before answer) with this Q.850 cause.
    Hangup { q850: u16 },
    /// The call is over: persist, bill, report. No action follows.
    Finished(Final),
}

pub type Actions = ArrayVec<Action, 2>;

/// How the call ended, with everything the call record and the dialects need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub outcome: Outcome,
    pub q850: u16,
    pub sip_status: Option<u16>,
    pub ended_by: EndedBy,
    /// Forwarding was detected (whether or not the call was dropped for it).
    pub redirected: bool,
    pub redirect_to: Option<Msisdn>,
    pub started_at: Instant,
    pub progress_at: Option<Instant>,
    pub answered_at: Option<Instant>,
    pub ended_at: Instant,
    /// Prompts whose completion was confirmed.
    pub prompts_played: u16,
    /// The PBX never confirmed our hang-up; the machine closed the call on its own.
    pub hangup_unconfirmed: bool,
}

impl Final {
    /// Connected time (zero when never answered).
    pub fn billable(&self) -> Duration {
        self.answered_at
            .map(|a| self.ended_at.saturating_duration_since(a))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Dialing,
    Early,
    Speaking { seq: u16 },
    HangingUp,
    Done,
}

/// Why we asked for the hang-up: decides the outcome when the PBX confirms it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// Flash call rang for the ring time.
    FlashRang,
    /// Flash call answered before the ring time ran out.
    FlashAnswered,
    Redirect,
    NoAnswer,
    PromptsDone,
    /// Shutdown or cancel: the given outcome unless the call was already answered.
    Cancel(Outcome),
}

#[derive(Debug, Clone)]
pub struct Machine {
    spec: CallSpec,
    state: State,
    drop: Option<Drop>,
    deadline: Option<Instant>,
    started_at: Option<Instant>,
    progress_at: Option<Instant>,
    answered_at: Option<Instant>,
    redirected: bool,
    redirect_to: Option<Msisdn>,
    prompts_played: u16,
}

impl Machine {
    pub fn new(spec: CallSpec) -> Machine {
        Machine {
            spec,
            state: State::Idle,
            drop: None,
            deadline: None,
            started_at: None,
            progress_at: None,
            answered_at: None,
            redirected: false,
            redirect_to: None,
            prompts_played: 0,
        }
    }

    /// When the engine must call `on_timer` next; `None` once the call is done.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Forwarding has been detected.
    pub fn redirected(&self) -> bool {
        self.redirected
    }

    /// Whether forwarding is known by now: the far end gave a provisional answer (forwarding
    /// signals come before or with it), answered, or the call ended.
    pub fn redirect_known(&self) -> bool {
        self.redirected
            || self.progress_at.is_some()
            || self.answered_at.is_some()
            || self.state == State::Done
    }

    /// Prompts in the whole message: "your code is" and each digit, twice with `repeat`.
    pub fn prompt_count(&self) -> u16 {
        let per_round = 1 + self.spec.code.len() as u16;
        per_round * if self.spec.repeat { 2 } else { 1 }
    }

    /// The prompt with this sequence number.
    pub fn prompt(&self, seq: u16) -> Prompt {
        let per_round = 1 + self.spec.code.len() as u16;
        match seq % per_round {
            0 => Prompt::YourCodeIs,
            i => Prompt::Digit(self.spec.code.digits()[usize::from(i - 1)]),
        }
    }

    /// Starts the call: dial, and wait for progress or an answer.
    pub fn start(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        if self.state != State::Idle {
            return out;
        }
        self.started_at = Some(now);
        self.state = State::Dialing;
        self.deadline = Some(now + self.spec.timings.answer_timeout);
        out.push(Action::Dial);
        out
    }

    /// Feeds one backend event.
    pub fn on_event(&mut self, event: CallEvent, now: Instant) -> Actions {
        let mut out = Actions::new();
        if matches!(self.state, State::Idle | State::Done) {
            return out;
        }
        match event {
            CallEvent::Progress { .. } => {
                if self.progress_at.is_none() {
                    self.progress_at = Some(now);
                }
                if self.state == State::Dialing {
                    self.state = State::Early;
                    if self.spec.method == Method::Flash {
                        self.deadline = Some(now + self.spec.timings.flash_ring);
                    }
                }
            }
            CallEvent::Forwarded { to } => {
                self.redirected = true;
                if to.is_some() {
                    self.redirect_to = to;
                }
                if self.spec.check_redirect && self.state != State::HangingUp {
                    self.drop(Drop::Redirect, now, &mut out);
                }
            }
            CallEvent::Answered => {
                if self.answered_at.is_none() {
                    self.answered_at = Some(now);
                }
                match (self.state, self.spec.method) {
                    (State::Dialing | State::Early, Method::Flash) => {
                        self.drop(Drop::FlashAnswered, now, &mut out)
                    }
                    (State::Dialing | State::Early, Method::Voice) => self.play(0, now, &mut out),
                    _ => {}
                }
            }
            CallEvent::PromptDone { seq } => {
                if self.state == (State::Speaking { seq }) {
                    self.prompts_played += 1;
                    self.next_prompt(seq, now, &mut out);
                }
            }
            CallEvent::Hangup(h) => self.finish(h, false, now, &mut out),
            CallEvent::Lost => return self.abandon(Outcome::Interrupted, now),
        }
        out
    }

    /// The deadline passed. Stale calls (before the deadline) do nothing.
    pub fn on_timer(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return out,
        }
        match self.state {
            State::Idle | State::Done => {}
            State::Dialing => self.drop(Drop::NoAnswer, now, &mut out),
            State::Early => match self.spec.method {
                Method::Flash => self.drop(Drop::FlashRang, now, &mut out),
                Method::Voice => self.drop(Drop::NoAnswer, now, &mut out),
            },
            // A lost completion must not stall the message: move on as if it had played.
            State::Speaking { seq } => self.next_prompt(seq, now, &mut out),
            State::HangingUp => {
                let h = Hangup {
                    q850: DROP_CAUSE,
                    sip_status: None,
                    ended_by: EndedBy::Us,
                };
                self.finish(h, true, now, &mut out);
            }
        }
        out
    }

    /// Ends the call early (shutdown, cancel request) with `outcome` unless it was answered.
    pub fn cancel(&mut self, outcome: Outcome, now: Instant) -> Actions {
        let mut out = Actions::new();
        match self.state {
            State::Idle => {
                self.started_at = Some(now);
                self.drop = Some(Drop::Cancel(outcome));
                let h = Hangup {
                    q850: DROP_CAUSE,
                    sip_status: None,
                    ended_by: EndedBy::Us,
                };
                self.finish(h, false, now, &mut out);
            }
            State::Done | State::HangingUp => {}
            _ => self.drop(Drop::Cancel(outcome), now, &mut out),
        }
        out
    }

    /// Closes the call at once without waiting for the PBX (it is gone): the outcome says so unless
    /// the code was already delivered.
    pub fn abandon(&mut self, outcome: Outcome, now: Instant) -> Actions {
        let mut out = Actions::new();
        if self.state == State::Done {
            return out;
        }
        if self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if self.drop.is_none() {
            self.drop = Some(Drop::Cancel(outcome));
        }
        let h = Hangup {
            q850: DROP_CAUSE,
            sip_status: None,
            ended_by: EndedBy::Local,
        };
        self.finish(h, true, now, &mut out);
        out
    }

    fn play(&mut self, seq: u16, now: Instant, out: &mut Actions) {
        let prompt = self.prompt(seq);
        let ms = u64::from(self.spec.prompt_ms[prompt.index()]);
        self.state = State::Speaking { seq };
        self.deadline = Some(now + Duration::from_millis(ms) + self.spec.timings.prompt_slack);
        out.push(Action::Play { seq, prompt });
    }

    fn next_prompt(&mut self, seq: u16, now: Instant, out: &mut Actions) {
        let next = seq + 1;
        if next < self.prompt_count() {
            self.play(next, now, out);
        } else {
            self.drop(Drop::PromptsDone, now, out);
        }
    }

    fn drop(&mut self, why: Drop, now: Instant, out: &mut Actions) {
        self.drop = Some(why);
        self.state = State::HangingUp;
        self.deadline = Some(now + self.spec.timings.hangup_timeout);
        let q850 = match why {
            Drop::NoAnswer => NO_ANSWER_CAUSE,
            _ => DROP_CAUSE,
        };
        out.push(Action::Hangup { q850 });
    }

    fn finish(&mut self, h: Hangup, unconfirmed: bool, now: Instant, out: &mut Actions) {
        let answered = self.answered_at.is_some();
        // Once we asked for the hang-up, only an explicit remote ending is the far end's doing.
        let ended_by = match (self.drop, h.ended_by) {
            (Some(_), EndedBy::Remote) => EndedBy::Remote,
            (Some(_), _) => EndedBy::Us,
            (None, by) => by,
        };
        let outcome = match self.drop {
            Some(Drop::Redirect) => Outcome::Redirected,
            Some(Drop::Cancel(o)) if !answered => o,
            _ => classify(Ending {
                q850: h.q850,
                answered,
                ended_by,
                flash_rang: self.spec.method == Method::Flash && self.progress_at.is_some(),
            }),
        };
        self.state = State::Done;
        self.deadline = None;
        let started_at = self.started_at.unwrap_or(now);
        out.push(Action::Finished(Final {
            outcome,
            q850: h.q850,
            sip_status: h.sip_status,
            ended_by,
            redirected: self.redirected,
            redirect_to: self.redirect_to,
            started_at,
            progress_at: self.progress_at,
            answered_at: self.answered_at,
            ended_at: now,
            prompts_played: self.prompts_played,
            hangup_unconfirmed: unconfirmed,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn spec(method: Method, code: &str, repeat: bool, check_redirect: bool) -> CallSpec {
        CallSpec {
            method,
            code: Code::parse_len(code, code.len()).unwrap(),
            repeat,
            check_redirect,
            timings: Timings::default(),
            prompt_ms: [500, 510, 520, 530, 540, 550, 560, 570, 580, 590, 900],
        }
    }

    fn hangup(q850: u16, ended_by: EndedBy) -> CallEvent {
        CallEvent::Hangup(Hangup {
            q850,
            sip_status: None,
            ended_by,
        })
    }

    fn finished(actions: &Actions) -> Final {
        match actions.as_slice() {
            [Action::Finished(f)] => *f,
            other => panic!("expected Finished, got {other:?}"),
        }
    }

    const RING: CallEvent = CallEvent::Progress { early_media: false };

    #[test]
    fn flash_is_dropped_after_the_ring_time_and_counts_as_delivered() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        assert_eq!(m.start(t0).as_slice(), &[Action::Dial]);
        assert!(m.on_event(RING, t0 + 100 * MS).is_empty());
        let ring_end = t0 + 100 * MS + Timings::default().flash_ring;
        assert_eq!(m.deadline(), Some(ring_end));
        assert!(
            m.on_timer(ring_end - MS).is_empty(),
            "early timer must not fire"
        );
        assert_eq!(
            m.on_timer(ring_end).as_slice(),
            &[Action::Hangup { q850: 16 }]
        );
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), ring_end + 20 * MS));
        assert_eq!(f.outcome, Outcome::Delivered);
        assert_eq!(f.ended_by, EndedBy::Us);
        assert!(m.is_done());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn flash_drop_never_uses_call_completed_elsewhere() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        let acts = m.on_timer(t0 + Duration::from_secs(60));
        assert!(acts
            .iter()
            .all(|a| !matches!(a, Action::Hangup { q850: 26 })));
        assert_eq!(acts.as_slice(), &[Action::Hangup { q850: DROP_CAUSE }]);
    }

    #[test]
    fn flash_pbx_reporting_an_unknown_ender_for_our_cancel_is_still_delivered() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        m.on_timer(t0 + Duration::from_secs(10));
        let f = finished(&m.on_event(hangup(16, EndedBy::Local), t0 + Duration::from_secs(10)));
        assert_eq!(f.outcome, Outcome::Delivered);
    }

    #[test]
    fn flash_answered_early_is_dropped_at_once_and_counts_as_answered() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        assert_eq!(
            m.on_event(CallEvent::Answered, t0 + 500 * MS).as_slice(),
            &[Action::Hangup { q850: 16 }]
        );
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), t0 + 600 * MS));
        assert_eq!(f.outcome, Outcome::Answered);
        assert_eq!(f.billable(), 100 * MS);
    }

    #[test]
    fn a_lost_call_is_interrupted_unless_the_code_was_delivered() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        let f = finished(&m.on_event(CallEvent::Lost, t0 + MS));
        assert_eq!(f.outcome, Outcome::Interrupted);
        assert!(f.hangup_unconfirmed);
        assert!(m.on_event(CallEvent::Lost, t0 + 2 * MS).is_empty());

        // A flash call we had already dropped after it rang: the caller ID reached the phone.
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        m.on_timer(t0 + Duration::from_secs(10));
        let f = finished(&m.on_event(CallEvent::Lost, t0 + Duration::from_secs(11)));
        assert_eq!(f.outcome, Outcome::Delivered);
    }

    #[test]
    fn flash_busy_before_the_ring_time_is_busy() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        let f = finished(&m.on_event(hangup(17, EndedBy::Remote), t0 + 900 * MS));
        assert_eq!(f.outcome, Outcome::Busy);
    }

    #[test]
    fn failure_with_no_channel_events_is_classified_by_cause() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        let f = finished(&m.on_event(hangup(34, EndedBy::Local), t0 + MS));
        assert_eq!(f.outcome, Outcome::RouteFailure);
        assert_eq!(f.progress_at, None);
    }

    #[test]
    fn voice_plays_every_prompt_then_hangs_up() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "4821", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        let mut now = t0 + Duration::from_secs(1);
        let mut acts = m.on_event(CallEvent::Answered, now);
        let mut played = vec![];
        loop {
            match acts.as_slice() {
                [Action::Play { seq, prompt }] => {
                    played.push(*prompt);
                    now += 600 * MS;
                    acts = m.on_event(CallEvent::PromptDone { seq: *seq }, now);
                }
                [Action::Hangup { q850: 16 }] => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            played,
            vec![
                Prompt::YourCodeIs,
                Prompt::Digit(4),
                Prompt::Digit(8),
                Prompt::Digit(2),
                Prompt::Digit(1)
            ]
        );
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), now));
        assert_eq!(f.outcome, Outcome::Answered);
        assert_eq!(f.prompts_played, 5);
        assert_eq!(f.billable(), now - (t0 + Duration::from_secs(1)));
    }

    #[test]
    fn voice_repeat_speaks_the_code_twice() {
        let mut m = Machine::new(spec(Method::Voice, "0042", true, false));
        assert_eq!(m.prompt_count(), 10);
        let prompts: Vec<Prompt> = (0..10).map(|s| m.prompt(s)).collect();
        assert_eq!(&prompts[..5], &prompts[5..]);
        assert_eq!(prompts[1], Prompt::Digit(0));
        assert_eq!(prompts[4], Prompt::Digit(2));
        let t0 = Instant::now();
        m.start(t0);
        m.on_event(CallEvent::Answered, t0);
        let mut plays = 1;
        let mut seq = 0;
        loop {
            let acts = m.on_event(CallEvent::PromptDone { seq }, t0);
            match acts.as_slice() {
                [Action::Play { seq: s, .. }] => {
                    plays += 1;
                    seq = *s;
                }
                [Action::Hangup { .. }] => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(plays, 10);
    }

    #[test]
    fn stale_or_duplicate_prompt_completions_are_ignored() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(CallEvent::Answered, t0);
        assert_eq!(
            m.on_event(CallEvent::PromptDone { seq: 0 }, t0).as_slice(),
            &[Action::Play {
                seq: 1,
                prompt: Prompt::Digit(1)
            }]
        );
        assert!(m.on_event(CallEvent::PromptDone { seq: 0 }, t0).is_empty());
        assert!(m.on_event(CallEvent::PromptDone { seq: 7 }, t0).is_empty());
    }

    #[test]
    fn a_lost_prompt_completion_moves_on_after_its_duration_plus_slack() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(CallEvent::Answered, t0);
        // "your code is" lasts 900 ms; slack is 2 s.
        assert_eq!(m.deadline(), Some(t0 + 2900 * MS));
        assert!(m.on_timer(t0 + 2899 * MS).is_empty());
        assert_eq!(
            m.on_timer(t0 + 2900 * MS).as_slice(),
            &[Action::Play {
                seq: 1,
                prompt: Prompt::Digit(1)
            }]
        );
    }

    #[test]
    fn voice_not_answered_in_time_is_cancelled_as_no_answer() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0 + MS);
        let limit = t0 + Timings::default().answer_timeout;
        assert_eq!(m.deadline(), Some(limit));
        assert_eq!(m.on_timer(limit).as_slice(), &[Action::Hangup { q850: 19 }]);
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), limit));
        assert_eq!(f.outcome, Outcome::NoAnswer);
    }

    #[test]
    fn dialing_without_any_progress_times_out() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        let limit = t0 + Timings::default().answer_timeout;
        assert_eq!(m.on_timer(limit).as_slice(), &[Action::Hangup { q850: 19 }]);
        let f = finished(&m.on_event(hangup(19, EndedBy::Us), limit));
        assert_eq!(f.outcome, Outcome::NoAnswer);
    }

    #[test]
    fn redirect_guard_drops_before_the_code_and_records_it() {
        let t0 = Instant::now();
        let to = Msisdn::from_digits("79990003344").ok();
        for method in [Method::Flash, Method::Voice] {
            let mut m = Machine::new(spec(method, "1234", false, true));
            m.start(t0);
            assert_eq!(
                m.on_event(CallEvent::Forwarded { to }, t0 + MS).as_slice(),
                &[Action::Hangup { q850: 16 }]
            );
            // The far end answering in the race must not start the prompts.
            assert!(m.on_event(CallEvent::Answered, t0 + 2 * MS).is_empty());
            let f = finished(&m.on_event(hangup(16, EndedBy::Us), t0 + 3 * MS));
            assert_eq!(f.outcome, Outcome::Redirected, "{method:?}");
            assert!(f.redirected);
            assert_eq!(f.redirect_to, to);
            assert_eq!(f.prompts_played, 0);
        }
    }

    #[test]
    fn forwarding_without_the_check_is_recorded_but_the_call_goes_on() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        assert!(m.on_event(CallEvent::Forwarded { to: None }, t0).is_empty());
        assert!(matches!(
            m.on_event(CallEvent::Answered, t0).as_slice(),
            [Action::Play { seq: 0, .. }]
        ));
        let f = finished(&m.on_event(hangup(16, EndedBy::Remote), t0 + 5 * MS));
        assert!(f.redirected);
        assert_eq!(f.outcome, Outcome::Answered);
    }

    #[test]
    fn unconfirmed_hangup_closes_the_call_after_the_hangup_timeout() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        let drop_at = t0 + Timings::default().flash_ring;
        m.on_timer(drop_at);
        let limit = drop_at + Timings::default().hangup_timeout;
        assert_eq!(m.deadline(), Some(limit));
        let f = finished(&m.on_timer(limit));
        assert!(f.hangup_unconfirmed);
        assert_eq!(f.outcome, Outcome::Delivered);
    }

    #[test]
    fn cancel_before_answer_is_cancelled_and_after_answer_is_answered() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(RING, t0);
        assert_eq!(
            m.cancel(Outcome::Cancelled, t0).as_slice(),
            &[Action::Hangup { q850: 16 }]
        );
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), t0));
        assert_eq!(f.outcome, Outcome::Cancelled);

        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        m.on_event(CallEvent::Answered, t0);
        m.cancel(Outcome::Cancelled, t0);
        let f = finished(&m.on_event(hangup(16, EndedBy::Us), t0));
        assert_eq!(f.outcome, Outcome::Answered);
    }

    #[test]
    fn abandon_finishes_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Flash, "1234", false, false));
        m.start(t0);
        let f = finished(&m.abandon(Outcome::Interrupted, t0 + MS));
        assert_eq!(f.outcome, Outcome::Interrupted);
        assert!(m.abandon(Outcome::Interrupted, t0).is_empty());
        assert!(m.on_event(RING, t0).is_empty());
    }

    #[test]
    fn events_after_the_end_do_nothing() {
        let t0 = Instant::now();
        let mut m = Machine::new(spec(Method::Voice, "1234", false, false));
        m.start(t0);
        finished(&m.on_event(hangup(17, EndedBy::Remote), t0));
        assert!(m.on_event(hangup(16, EndedBy::Remote), t0).is_empty());
        assert!(m.on_event(CallEvent::Answered, t0).is_empty());
        assert!(m.on_timer(t0 + Duration::from_secs(3600)).is_empty());
    }

    fn arb_event() -> impl Strategy<Value = CallEvent> {
        prop_oneof![
            any::<bool>().prop_map(|early_media| CallEvent::Progress { early_media }),
            Just(CallEvent::Forwarded { to: None }),
            Just(CallEvent::Answered),
            (0u16..12).prop_map(|seq| CallEvent::PromptDone { seq }),
            (0u16..130, 0u8..3).prop_map(|(q850, by)| hangup(
                q850,
                [EndedBy::Us, EndedBy::Remote, EndedBy::Local][usize::from(by)]
            )),
        ]
    }

    proptest! {
        /// Whatever the PBX says, in whatever order: at most one Finished, nothing after it, the
        /// deadline never goes backwards past `now`, and timers alone always end the call.
        #[test]
        fn any_event_sequence_ends_exactly_once(
            flash: bool, repeat: bool, check: bool,
            steps in proptest::collection::vec((arb_event(), 0u64..3000, any::<bool>()), 0..40),
        ) {
            let method = if flash { Method::Flash } else { Method::Voice };
            let mut m = Machine::new(spec(method, "5309", repeat, check));
            let t0 = Instant::now();
            let mut now = t0;
            let mut finals = 0;
            let check_actions = |acts: Actions, finals: &mut u32| -> Result<(), TestCaseError> {
                for a in acts {
                    prop_assert_eq!(*finals, 0, "action after Finished");
                    if let Action::Finished(f) = a {
                        *finals += 1;
                        if check && f.redirected && !f.outcome.is_success() {
                            prop_assert!(f.prompts_played == 0 || method == Method::Voice);
                        }
                        if f.outcome == Outcome::Delivered {
                            prop_assert_eq!(method, Method::Flash);
                        }
                    }
                }
                Ok(())
            };
            check_actions(m.start(now), &mut finals)?;
            for (event, dt, timer) in steps {
                now += Duration::from_millis(dt);
                let acts = if timer { m.on_timer(now) } else { m.on_event(event, now) };
                check_actions(acts, &mut finals)?;
                if let Some(d) = m.deadline() { prop_assert!(d + Duration::from_secs(3600) > now); }
            }
            // Nothing more from the PBX: timers alone must close the call.
            for _ in 0..64 {
                match m.deadline() {
                    Some(d) => { now = now.max(d); check_actions(m.on_timer(now), &mut finals)?; }
                    None => break,
                }
            }
            prop_assert!(m.is_done());
            prop_assert_eq!(finals, 1);
        }
    }
}
