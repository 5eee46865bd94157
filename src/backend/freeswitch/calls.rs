//! Per-call bookkeeping of one FreeSWITCH connection, sans-IO: which channel and job is whose, and
//! the mapping of FreeSWITCH events to `CallEvent`s.
//!
//! It decides nothing about outcomes (the call machine and the cause table do); it reports what
//! FreeSWITCH said, with the decisions the fixture README forces on a reader of ESL:
//! - CHANNEL_PROGRESS is ringing, CHANNEL_PROGRESS_MEDIA is early media (a 181 alone is silent);
//! - forwarding shows only in `sofia::notify_watched_header` events (Diversion, History-Info, the
//!   Contact of a 3xx) and in `variable_sip_redirected_to` once a 302 was followed;
//! - who ended the call comes from Hangup-Cause and `sip_hangup_disposition`, never from q850
//!   alone: our own cancel is reported as q850 16;
//! - a failure may come only as a BACKGROUND_JOB `-ERR <CAUSE>` with no channel at all;
//! - the job result and CHANNEL_HANGUP_COMPLETE come in either order; a call's end is reported
//!   once.

use std::collections::HashMap;
use std::sync::Arc;

use super::cause;
use super::event::Event;
use crate::backend::{BackendEvent, CallEvent, Hangup};
use crate::call::{CallId, EndedBy, Msisdn};

/// Q.850 27, "destination out of order": what a locally generated SIP failure (nothing reachable
/// at the far end's address) is reported as. See `hangup_of`.
pub const LOCAL_SIP_FAILURE_CAUSE: u16 = 27;

/// Who speaks the prompts of an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredCalls {
    /// The call parks; prompts and hang-up go over the inbound connection.
    Park,
    /// The call runs the `socket` application towards callcode's outbound listener, which reports
    /// `Answered` once the session is ready and plays the prompts.
    Socket,
}

#[derive(Debug)]
struct Call {
    dialled: Msisdn,
    language: Arc<str>,
    job: uuid::Uuid,
    /// After this, nothing more is expected of the call: the engine has closed it by its own
    /// timers, so the entry only leaks (its end was among lost events).
    expires: std::time::Instant,
    channel_seen: bool,
    answered: bool,
    we_hung_up: bool,
    forward_reported: Option<Option<Msisdn>>,
}

/// What the driver must send to hang a call up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupHow {
    /// Before answer: `uuid_kill <uuid> ORIGINATOR_CANCEL` (-70-).
    Cancel,
    /// After answer: `sendmsg hangup` with this cause name.
    Clear(&'static str),
}

#[derive(Debug)]
pub struct Tracker {
    mode: AnsweredCalls,
    calls: HashMap<CallId, Call>,
    jobs: HashMap<uuid::Uuid, CallId>,
    /// Event-UUID of a playback → (call, prompt sequence number).
    playbacks: HashMap<uuid::Uuid, (CallId, u16)>,
}

impl Tracker {
    pub fn new(mode: AnsweredCalls) -> Tracker {
        Tracker {
            mode,
            calls: HashMap::new(),
            jobs: HashMap::new(),
            playbacks: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn contains(&self, call: CallId) -> bool {
        self.calls.contains_key(&call)
    }

    pub fn in_flight(&self) -> Vec<CallId> {
        self.calls.keys().copied().collect()
    }

    pub fn language(&self, call: CallId) -> Option<Arc<str>> {
        self.calls.get(&call).map(|c| c.language.clone())
    }

    /// Registers a call about to be originated with job `job`; it is forgotten at `expires`.
    pub fn originate(
        &mut self,
        call: CallId,
        dialled: Msisdn,
        language: Arc<str>,
        job: uuid::Uuid,
        expires: std::time::Instant,
    ) {
        self.jobs.insert(job, call);
        self.calls.insert(
            call,
            Call {
                dialled,
                language,
                job,
                expires,
                channel_seen: false,
                answered: false,
                we_hung_up: false,
                forward_reported: None,
            },
        );
    }

    /// Registers a prompt; returns the Event-UUID to send with it.
    pub fn play(&mut self, call: CallId, seq: u16) -> Option<uuid::Uuid> {
        if !self.calls.contains_key(&call) {
            return None;
        }
        let id = uuid::Uuid::new_v4();
        self.playbacks.insert(id, (call, seq));
        Some(id)
    }

    /// We ask for the hang-up: how, or `None` for a call that is already over.
    pub fn hangup(&mut self, call: CallId, q850: u16) -> Option<HangupHow> {
        let c = self.calls.get_mut(&call)?;
        c.we_hung_up = true;
        Some(if c.answered {
            HangupHow::Clear(cause::name(q850))
        } else {
            HangupHow::Cancel
        })
    }

    /// The answered state of a call handed to the outbound listener.
    pub fn mark_answered(&mut self, call: CallId) {
        if let Some(c) = self.calls.get_mut(&call) {
            c.answered = true;
        }
    }

    /// Our kill found no channel: it ended unseen (its events were lost). Closed as we asked.
    pub fn kill_failed(&mut self, call: CallId, out: &mut Vec<BackendEvent>) {
        if self.calls.get(&call).is_some_and(|c| c.we_hung_up) {
            self.end(
                call,
                CallEvent::Hangup(Hangup {
                    q850: 16,
                    sip_status: None,
                    ended_by: EndedBy::Us,
                }),
                out,
            );
        }
    }

    /// The originate command itself was refused (`-ERR` reply to bgapi).
    pub fn originate_refused(&mut self, call: CallId, reply: &str, out: &mut Vec<BackendEvent>) {
        let q850 = err_cause(reply).unwrap_or(cause::code("INTERWORKING").unwrap_or(127));
        self.end(call, local_failure(q850), out);
    }

    /// Closes calls past their expiry as `Lost` (the engine ignores events of calls it closed).
    pub fn expire(&mut self, now: std::time::Instant, out: &mut Vec<BackendEvent>) {
        let old: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for call in old {
            self.lose(call, out);
        }
    }

    /// The call is gone and nothing says how: reported as `Lost`.
    pub fn lose(&mut self, call: CallId, out: &mut Vec<BackendEvent>) {
        self.end(call, CallEvent::Lost, out);
    }

    fn end(&mut self, call: CallId, event: CallEvent, out: &mut Vec<BackendEvent>) {
        if let Some(c) = self.calls.remove(&call) {
            self.jobs.remove(&c.job);
            self.playbacks.retain(|_, (owner, _)| *owner != call);
            out.push(BackendEvent { call, event });
        }
    }

    /// Feeds one event; what it means for our calls is appended to `out`.
    pub fn on_event(&mut self, e: &Event, out: &mut Vec<BackendEvent>) {
        let Some(name) = e.get_raw("Event-Name") else {
            return;
        };
        if name == b"BACKGROUND_JOB" {
            return self.on_job(e, out);
        }
        let Some(call) = e
            .get_raw("Unique-ID")
            .and_then(|u| uuid::Uuid::try_parse_ascii(u).ok())
        else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.channel_seen = true;
        let emit = |out: &mut Vec<BackendEvent>, event| out.push(BackendEvent { call, event });
        match name {
            b"CHANNEL_PROGRESS" | b"CHANNEL_PROGRESS_MEDIA" | b"CHANNEL_ANSWER" => {
                if let Some(to) = redirected_to(e, c.dialled) {
                    report_forward(c, to, call, out);
                }
                match name {
                    b"CHANNEL_PROGRESS" => emit(out, CallEvent::Progress { early_media: false }),
                    b"CHANNEL_PROGRESS_MEDIA" => {
                        emit(out, CallEvent::Progress { early_media: true })
                    }
                    _ => {
                        if !c.answered && self.mode == AnsweredCalls::Park {
                            emit(out, CallEvent::Answered);
                        }
                        c.answered = true;
                    }
                }
            }
            b"CUSTOM" if e.is("Event-Subclass", "sofia::notify_watched_header") => {
                if let Some(to) = watched_forward(e, c.dialled) {
                    report_forward(c, to, call, out);
                }
            }
            b"CHANNEL_EXECUTE_COMPLETE" => {
                let app = e
                    .get_raw("Application-UUID")
                    .and_then(|u| uuid::Uuid::try_parse_ascii(u).ok());
                if let Some((owner, seq)) = app.and_then(|a| self.playbacks.remove(&a)) {
                    if owner == call {
                        emit(out, CallEvent::PromptDone { seq });
                    }
                }
            }
            b"CHANNEL_HANGUP_COMPLETE" => {
                // -52-: a 302 refused by `outbound_redirect_fatal=true` never rings; its target
                // shows only here (in angle brackets).
                if let Some(to) = redirected_to(e, c.dialled) {
                    report_forward(c, to, call, out);
                }
                // The answer itself can be missing from what we saw (it came while the socket was
                // down and the channel outlived the reconnect); the final event still says so.
                if !c.answered && self.mode == AnsweredCalls::Park && was_answered(e) {
                    c.answered = true;
                    emit(out, CallEvent::Answered);
                }
                let h = hangup_of(e, c.we_hung_up);
                self.end(call, CallEvent::Hangup(h), out);
            }
            _ => {}
        }
    }

    fn on_job(&mut self, e: &Event, out: &mut Vec<BackendEvent>) {
        let Some(call) = e
            .get_raw("Job-UUID")
            .and_then(|u| uuid::Uuid::try_parse_ascii(u).ok())
            .and_then(|j| self.jobs.get(&j).copied())
        else {
            return;
        };
        let body = String::from_utf8_lossy(&e.body);
        let Some(q850) = err_cause(&body) else {
            return;
        };
        // With a channel, CHANNEL_HANGUP_COMPLETE carries the richer facts (SIP status,
        // disposition) and is on its way (it may even have come first and ended the call).
        if self.calls.get(&call).is_some_and(|c| !c.channel_seen) {
            self.end(call, local_failure(q850), out);
        }
    }
}

fn local_failure(q850: u16) -> CallEvent {
    CallEvent::Hangup(Hangup {
        q850,
        sip_status: None,
        ended_by: EndedBy::Local,
    })
}

/// The cause code of a `-ERR NAME` job or reply body.
fn err_cause(body: &str) -> Option<u16> {
    let name = body.trim().strip_prefix("-ERR")?.trim();
    let name = name.split_whitespace().next().unwrap_or("");
    Some(cause::code(name).unwrap_or(cause::code("NORMAL_UNSPECIFIED").unwrap_or(31)))
}

fn report_forward(c: &mut Call, to: Option<Msisdn>, call: CallId, out: &mut Vec<BackendEvent>) {
    let news = match c.forward_reported {
        None => true,
        Some(None) => to.is_some(),
        Some(Some(_)) => false,
    };
    if news {
        c.forward_reported = Some(to);
        out.push(BackendEvent {
            call,
            event: CallEvent::Forwarded { to },
        });
    }
}

/// The number in a SIP or tel URI (`<sip:+79990001122@host>;tag`), when it is a phone number.
pub fn uri_number(uri: &str) -> Option<Msisdn> {
    let start = ["sip:", "sips:", "tel:"]
        .iter()
        .find_map(|s| uri.find(s).map(|i| i + s.len()))?;
    let rest = &uri[start..];
    let end = rest.find(['@', ';', '>', '?', ',']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Whether two numbers are the same subscriber. Carriers rewrite prefixes (`+7…`, `8…`), so the
/// national significant part (last ten digits) is compared.
fn same_number(a: Msisdn, b: Msisdn) -> bool {
    a.suffix(10) == b.suffix(10)
}

/// A followed 302 shows only as `variable_sip_redirected_to` (fixture -51-).
fn redirected_to(e: &Event, dialled: Msisdn) -> Option<Option<Msisdn>> {
    let target = e.get("variable_sip_redirected_to")?;
    Some(uri_number(&target).filter(|n| !same_number(*n, dialled)))
}

/// A `sofia::notify_watched_header` event that shows forwarding: `Some(target)` (target `None`
/// when the header does not name it), `None` when the header says nothing about forwarding.
pub fn watched_forward(e: &Event, dialled: Msisdn) -> Option<Option<Msisdn>> {
    let header = e.get("Header-Name")?;
    let value = e.get("Header-Value")?;
    let status: u16 = e
        .get("SIP-Message")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    if header.eq_ignore_ascii_case("Diversion") {
        // RFC 5806: Diversion names the party that diverted the call (here the dialled number
        // itself, -53-): the call was forwarded, the new target is not named.
        return Some(None);
    }
    if header.eq_ignore_ascii_case("History-Info") {
        // RFC 7044: entries in order of retargeting; the last one that is not the dialled
        // number is where the call went.
        let target = value
            .split(',')
            .filter_map(uri_number)
            .rfind(|n| !same_number(*n, dialled))?;
        return Some(Some(target));
    }
    if header.eq_ignore_ascii_case("Contact") && (300..400).contains(&status) {
        return Some(uri_number(&value).filter(|n| !same_number(*n, dialled)));
    }
    None
}

/// Whether a CHANNEL_HANGUP_COMPLETE is of a call that was answered: its answer time
/// (`Caller-Channel-Answered-Time`, µs, 0 when never answered) or its billed time.
fn was_answered(e: &Event) -> bool {
    let positive = |name: &str| {
        e.get(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v > 0)
    };
    positive("Caller-Channel-Answered-Time") || positive("variable_billmsec")
}

/// How a channel ended, from its CHANNEL_HANGUP_COMPLETE.
pub fn hangup_of(e: &Event, we_hung_up: bool) -> Hangup {
    let cause_name = e
        .get("Hangup-Cause")
        .or_else(|| e.get("variable_hangup_cause"));
    let cause_name = cause_name.as_deref().unwrap_or("");
    let q850 = e
        .get("variable_hangup_cause_q850")
        .and_then(|q| q.trim().parse().ok())
        .or_else(|| cause::code(cause_name))
        .unwrap_or(31);
    let sip_status: Option<u16> = e
        .get("variable_sip_term_status")
        .and_then(|s| s.trim().parse().ok());
    let disposition = e.get("variable_sip_hangup_disposition");
    let disposition = disposition.as_deref().unwrap_or("");
    // -45-: with nothing listening at the far end's address, sofia answers its own INVITE with
    // 503 and FreeSWITCH reports NORMAL_TEMPORARY_FAILURE (q850 41) + recv_refuse, exactly like
    // a far end's 503, which the cause table would take for a billing refusal. A response that
    // really came from the far end carries a To tag (RFC 3261 §8.2.6.2: a UAS adds one to every
    // response but 100), so a refusal without `variable_sip_to_tag` was made up locally: the
    // destination could not be reached at all.
    if disposition == "recv_refuse" && e.get_raw("variable_sip_to_tag").is_none() {
        return Hangup {
            q850: LOCAL_SIP_FAILURE_CAUSE,
            sip_status: None,
            ended_by: EndedBy::Local,
        };
    }
    let ended_by = if disposition.starts_with("recv_") {
        EndedBy::Remote
    } else if we_hung_up || cause_name == "ORIGINATOR_CANCEL" {
        EndedBy::Us
    } else if disposition.starts_with("send_") {
        // FreeSWITCH's own timer (originate_timeout) cancelled it.
        EndedBy::Local
    } else {
        // Non-SIP channels set no disposition (-90-, -91-): the other side ended it.
        EndedBy::Remote
    };
    Hangup {
        q850,
        sip_status,
        ended_by,
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{decode_all, Limits};
    use super::super::event::Message;
    use super::*;

    fn far() -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(3600)
    }

    #[test]
    fn calls_past_their_expiry_are_lost_once() {
        let mut t = Tracker::new(AnsweredCalls::Park);
        let now = std::time::Instant::now();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let n: Msisdn = "79990001122".parse().unwrap();
        t.originate(a, n, "en".into(), uuid::Uuid::new_v4(), now);
        t.originate(b, n, "en".into(), uuid::Uuid::new_v4(), far());
        let mut out = Vec::new();
        t.expire(now, &mut out);
        t.expire(now, &mut out);
        assert_eq!(
            out,
            vec![BackendEvent {
                call: a,
                event: CallEvent::Lost
            }]
        );
        assert!(t.contains(b) && !t.contains(a));
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/freeswitch");

    fn events(name: &str) -> Vec<Event> {
        let rx = std::fs::read(format!("{FIXTURES}/{name}.rx.txt")).unwrap();
        decode_all(&rx, Limits::default())
            .unwrap()
            .0
            .into_iter()
            .filter_map(|f| match Message::from_frame(f, 4096).unwrap() {
                Message::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The originated channel of a capture and its Job-UUID (from the BACKGROUND_JOB).
    fn ids(evs: &[Event]) -> (CallId, uuid::Uuid) {
        let create = evs.iter().find(|e| e.is("Event-Name", "CHANNEL_CREATE"));
        let job = evs
            .iter()
            .find(|e| {
                e.is("Event-Name", "BACKGROUND_JOB")
                    && e.get("Job-Command").as_deref() == Some("originate")
            })
            .unwrap();
        let job_id = job.get("Job-UUID").unwrap().parse().unwrap();
        let call = match create {
            Some(c) => c.get("Unique-ID").unwrap().parse().unwrap(),
            None => uuid::Uuid::new_v4(),
        };
        (call, job_id)
    }

    /// A tracker that has originated the capture's call (with its channel UUID and Job-UUID).
    fn tracking(evs: &[Event]) -> (Tracker, CallId) {
        let (call, job) = ids(evs);
        let mut t = Tracker::new(AnsweredCalls::Park);
        t.originate(
            call,
            "79990001122".parse().unwrap(),
            "en".into(),
            job,
            far(),
        );
        (t, call)
    }

    /// Replays a capture through a tracker; `kill_after_progress` marks our own hang-up request
    /// at the first progress, as the flash-call captures did.
    fn replay(name: &str, kill_after_progress: bool) -> Vec<CallEvent> {
        let evs = events(name);
        let (mut t, call) = tracking(&evs);
        let mut out = Vec::new();
        for e in &evs {
            t.on_event(e, &mut out);
            if kill_after_progress && e.is("Event-Name", "CHANNEL_PROGRESS") {
                assert_eq!(t.hangup(call, 16), Some(HangupHow::Cancel));
            }
        }
        assert!(t.is_empty(), "{name}: call not finished");
        out.into_iter().map(|b| b.event).collect()
    }

    fn hangup(q850: u16, sip: Option<u16>, by: EndedBy) -> CallEvent {
        CallEvent::Hangup(Hangup {
            q850,
            sip_status: sip,
            ended_by: by,
        })
    }

    const RING: CallEvent = CallEvent::Progress { early_media: false };
    const EARLY: CallEvent = CallEvent::Progress { early_media: true };

    #[test]
    fn every_outcome_capture_maps_as_the_fixture_table_says() {
        use std::str::FromStr;
        use EndedBy::*;
        let cases: &[(&str, bool, &[CallEvent])] = &[
            (
                "esl-inbound-20-busy486-plain",
                false,
                &[RING, hangup(17, Some(486), Remote)],
            ),
            (
                "esl-inbound-21-busy486-json",
                false,
                &[RING, hangup(17, Some(486), Remote)],
            ),
            (
                "esl-inbound-24-gateway-busy486-json",
                false,
                &[RING, hangup(17, Some(486), Remote)],
            ),
            (
                "esl-inbound-30-noanswer-timeout-plain",
                false,
                &[RING, hangup(19, None, Local)],
            ),
            (
                "esl-inbound-40-reject403-plain",
                false,
                &[RING, hangup(21, Some(403), Remote)],
            ),
            (
                "esl-inbound-41-decline603-plain",
                false,
                &[RING, hangup(21, Some(603), Remote)],
            ),
            (
                "esl-inbound-43-unavail480-plain",
                false,
                &[RING, hangup(18, Some(480), Remote)],
            ),
            (
                "esl-inbound-44-notfound404-plain",
                false,
                &[RING, hangup(1, Some(404), Remote)],
            ),
            (
                "esl-inbound-45-unreachable-port-plain",
                false,
                &[hangup(27, None, Local)],
            ),
            (
                "esl-inbound-52-redirect302-fatal-plain",
                false,
                &[
                    CallEvent::Forwarded {
                        to: Some(Msisdn::from_str("79990003344").unwrap()),
                    },
                    hangup(44, None, Local),
                ],
            ),
            (
                "esl-inbound-62-early183-busy-ignore-early-media-plain",
                false,
                &[EARLY, hangup(17, Some(486), Remote)],
            ),
            (
                "esl-inbound-70-flashcall-cancel-plain",
                true,
                &[RING, hangup(16, None, Us)],
            ),
            (
                "esl-inbound-71-flashcall-cancel-json",
                true,
                &[RING, hangup(16, None, Us)],
            ),
            (
                "esl-inbound-80-remote-bye-plain",
                false,
                &[RING, CallEvent::Answered, hangup(16, Some(200), Remote)],
            ),
            (
                "esl-inbound-90-loopback-busy-plain",
                false,
                &[hangup(17, None, Remote)],
            ),
        ];
        for (name, kill, expected) in cases {
            assert_eq!(&replay(name, *kill)[..], *expected, "{name}");
        }
    }

    #[test]
    fn forwarding_by_181_and_by_302_is_reported_once_with_the_target() {
        let got = replay("esl-inbound-53-forward181-watchheaders-plain", false);
        let to = Some("79990003344".parse().unwrap());
        // Diversion first (target unknown), then History-Info names it.
        assert_eq!(got[0], CallEvent::Forwarded { to: None });
        assert_eq!(got[1], CallEvent::Forwarded { to });
        assert_eq!(got[2], RING);
        assert_eq!(
            got.iter()
                .filter(|e| matches!(e, CallEvent::Forwarded { .. }))
                .count(),
            2
        );
        let got = replay("esl-inbound-54-redirect302-watchheaders-json", false);
        assert_eq!(got[0], CallEvent::Forwarded { to });
        assert_eq!(
            got.iter()
                .filter(|e| matches!(e, CallEvent::Forwarded { .. }))
                .count(),
            1
        );
        // Without watched headers, the followed 302 shows in sip_redirected_to.
        let got = replay("esl-inbound-51-redirect302-followed-plain", false);
        assert_eq!(got[0], CallEvent::Forwarded { to });
        assert_eq!(got[1], RING);
        // Without either, a 181 leaves no trace (README): nothing is made up.
        let got = replay("esl-inbound-50-forward181-plain", false);
        assert!(!got.iter().any(|e| matches!(e, CallEvent::Forwarded { .. })));
    }

    #[test]
    fn an_answer_missed_during_a_socket_gap_is_taken_from_the_final_event() {
        // -80-: answered, then the far end hung up. Drop every event between the progress and
        // the hang-up, as a cut socket would, and the final event alone must say "answered".
        let evs = events("esl-inbound-80-remote-bye-plain");
        let (call, job) = ids(&evs);
        let mut t = Tracker::new(AnsweredCalls::Park);
        t.originate(
            call,
            "79990001122".parse().unwrap(),
            "en".into(),
            job,
            far(),
        );
        let mut out = Vec::new();
        for e in evs.iter().filter(|e| {
            e.is("Event-Name", "CHANNEL_PROGRESS") || e.is("Event-Name", "CHANNEL_HANGUP_COMPLETE")
        }) {
            t.on_event(e, &mut out);
        }
        let got: Vec<CallEvent> = out.into_iter().map(|b| b.event).collect();
        assert_eq!(
            got,
            [
                RING,
                CallEvent::Answered,
                hangup(16, Some(200), EndedBy::Remote)
            ]
        );

        // A call that was never answered gets no such event (-20-, busy).
        let evs = events("esl-inbound-20-busy486-plain");
        let (mut t, _) = tracking(&evs);
        let mut out = Vec::new();
        for e in evs
            .iter()
            .filter(|e| e.is("Event-Name", "CHANNEL_HANGUP_COMPLETE"))
        {
            t.on_event(e, &mut out);
        }
        assert!(
            out.iter().all(|b| b.event != CallEvent::Answered),
            "{out:?}"
        );
    }

    #[test]
    fn the_caller_id_flip_after_answer_is_not_taken_for_forwarding() {
        // Gotcha: once the answered leg runs its app, Caller-Callee-ID-Number becomes our own
        // CLI. Only Unique-ID and the number we dialled are trusted.
        let evs = events("esl-inbound-10-answered-plain");
        assert!(evs.iter().any(|e| {
            e.is("Event-Name", "CHANNEL_EXECUTE_COMPLETE")
                && e.is("Caller-Callee-ID-Number", "79991234567")
        }));
        let got = replay("esl-inbound-10-answered-plain", false);
        assert_eq!(got[..2], [RING, CallEvent::Answered]);
        assert!(!got.iter().any(|e| matches!(e, CallEvent::Forwarded { .. })));
        assert_eq!(
            got.last(),
            Some(&hangup(16, None, EndedBy::Local)),
            "{got:?}"
        );
    }

    #[test]
    fn a_job_failure_without_a_channel_ends_the_call_once() {
        let mut t = Tracker::new(AnsweredCalls::Park);
        let (call, job) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        t.originate(
            call,
            "79990001122".parse().unwrap(),
            "en".into(),
            job,
            far(),
        );
        let body = format!(
            "Event-Name: BACKGROUND_JOB\nJob-UUID: {job}\nJob-Command: originate\nContent-Length: 18\n\n-ERR GATEWAY_DOWN\n"
        );
        let e = Event::parse_plain(body.clone().into(), 64).unwrap();
        let mut out = Vec::new();
        t.on_event(&e, &mut out);
        t.on_event(&e, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, hangup(609, None, EndedBy::Local));
        assert!(t.is_empty());
    }

    #[test]
    fn job_result_before_hangup_complete_waits_for_the_channel() {
        // -30-: BACKGROUND_JOB -ERR NO_ANSWER comes before CHANNEL_HANGUP_COMPLETE.
        let got = replay("esl-inbound-30-noanswer-timeout-plain", false);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn prompts_complete_by_application_uuid() {
        let evs = events("esl-inbound-10-answered-plain");
        let (mut t, call) = tracking(&evs);
        let mut out = Vec::new();
        // The capture's one Event-UUID'd playback was sent with `app-<uuid prefix>`; rewrite it
        // to one of ours the way the test peer does.
        let ours = t.play(call, 3).unwrap();
        for e in &evs {
            if e.get("Application-UUID")
                .is_some_and(|a| a.starts_with("app-"))
            {
                let text = format!(
                    "Event-Name: CHANNEL_EXECUTE_COMPLETE\nUnique-ID: {call}\nApplication-UUID: {ours}\n\n"
                );
                t.on_event(&Event::parse_plain(text.into(), 64).unwrap(), &mut out);
            } else {
                t.on_event(e, &mut out);
            }
        }
        let got: Vec<_> = out.into_iter().map(|b| b.event).collect();
        assert_eq!(
            got[..3],
            [RING, CallEvent::Answered, CallEvent::PromptDone { seq: 3 }]
        );
        assert!(matches!(got[3], CallEvent::Hangup(_)));
    }

    #[test]
    fn hangup_before_and_after_answer() {
        let mut t = Tracker::new(AnsweredCalls::Park);
        let call = uuid::Uuid::new_v4();
        t.originate(
            call,
            "79990001122".parse().unwrap(),
            "en".into(),
            uuid::Uuid::new_v4(),
            far(),
        );
        assert_eq!(t.hangup(call, 16), Some(HangupHow::Cancel));
        t.mark_answered(call);
        assert_eq!(
            t.hangup(call, 16),
            Some(HangupHow::Clear("NORMAL_CLEARING"))
        );
        assert_eq!(t.hangup(uuid::Uuid::new_v4(), 16), None);
    }

    #[test]
    fn uri_numbers() {
        assert_eq!(
            uri_number("<sip:+79990003344@h>;x").map(|n| n.value()),
            Some(79990003344)
        );
        assert_eq!(
            uri_number("sip:79990003344@127.0.0.1:5071").map(|n| n.value()),
            Some(79990003344)
        );
        assert_eq!(uri_number("<sip:service@h>"), None);
        assert_eq!(uri_number("garbage"), None);
    }
}
