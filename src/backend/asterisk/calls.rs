//! Following calls through AMI events, sans-IO: which events belong to which of our calls, and
//! what they mean as `CallEvent`s. The driver feeds every decoded message in and sends what comes
//! out; nothing here reads a clock or a socket.
//!
//! How a call is recognised (`tests/fixtures/asterisk/callcode-path/README.md`): callcode
//! originates `Local/<number>@<context>` with `ChannelId` = our `CallId`, so the `;1` half has that
//! Uniqueid, and every channel of the call (`;2`, the PJSIP callee, the new PJSIP channel a 302
//! creates) carries it as `Linkedid`.
//!
//! What the events mean:
//! - ringing: `Newstate` Ringing of any channel of the call, or `DialState RINGING`/`PROGRESS`;
//! - answer: `Newstate` Up of the real (non-Local) callee or of `;1`, or `OriginateResponse`
//!   Success (with `U()` the latter only comes after the prompts, so the PJSIP `Newstate` is
//!   what counts for voice), or the FastAGI session of the call arriving;
//! - forwarding: the shipped dialplan's `UserEvent CallcodeRedirect`, a `DialEnd` with a
//!   `Forward:` dial string, or a callee hung up with cause 23 (302 followed);
//! - end: the `Hangup` of `;1` (its `Cause`), with the SIP status of the callee's own
//!   `HangupRequest`/`Hangup` `TechCause`; an `OriginateResponse` Failure with no channel at all
//!   is a failure of our side (`EndedBy::Local`).
//!
//! A call's end is reported once: the call is forgotten at that moment, so later events of its
//! other channels find nothing.

use std::collections::HashMap;

use super::ami::{Chan, Event, Message, STATE_RINGING, STATE_UP};
use crate::backend::{BackendEvent, CallEvent, Hangup};
use crate::call::{CallId, EndedBy, Msisdn};

/// Name of the `UserEvent` raised by the shipped `callcode-redirect` context.
pub const REDIRECT_USER_EVENT: &str = "CallcodeRedirect";
/// Q.850 "redirected to new destination": a callee that answered 302.
const CAUSE_REDIRECTED: u16 = 23;
/// Q.850 47 "resource unavailable, unspecified": Asterisk could not create even the call's first
/// (`Local`) channel, or refused the `Originate`. The number was never dialled, so the cause must
/// blame the route, not the subscriber (0 would classify as "unreachable", a verdict on the
/// number); 47 is in the cause table's route-failure row, like the 38 of a call no server took.
const CAUSE_NOT_PLACED: u16 = 47;

/// What the driver must do after feeding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Event(BackendEvent),
    /// A hang-up asked before the call had any channel can be sent now.
    Hangup {
        server: usize,
        call: CallId,
        cause: u16,
    },
}

/// A live channel as `CoreShowChannels` lists it after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChannel {
    pub uniqueid: String,
    pub linkedid: String,
    pub local: bool,
    pub state: Option<u8>,
}

#[derive(Debug)]
struct Tracked {
    server: usize,
    verification_id: i64,
    progress: bool,
    answered: bool,
    /// `None`: no forwarding reported; `Some(to)`: reported with that target.
    forwarded: Option<Option<Msisdn>>,
    /// Some channel of the call exists (or existed).
    channels_seen: bool,
    /// A real callee channel (PJSIP...) was created: the far end was reached.
    callee_seen: bool,
    /// SIP status of the callee's final response (not the 302 of a followed forward).
    sip_status: Option<u16>,
    /// The Q.850 cause the callee's channel gave with that final response.
    callee_q850: Option<u16>,
    /// We asked for the hang-up, with this cause.
    hangup_asked: Option<u16>,
    /// A hang-up asked before any channel existed, with its cause.
    hangup_pending: Option<u16>,
}

/// Every call in progress on every Asterisk server of one backend.
#[derive(Debug, Default)]
pub struct Calls {
    calls: HashMap<CallId, Tracked>,
    by_verification: HashMap<i64, CallId>,
}

impl Calls {
    pub fn new() -> Calls {
        Calls::default()
    }

    /// The `OtherChannelId` of a call's `;2` half.
    pub fn other_channel_id(call: CallId) -> String {
        format!("{call}-2")
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

    /// Calls placed through one server.
    pub fn on_server(&self, server: usize) -> usize {
        self.calls.values().filter(|t| t.server == server).count()
    }

    pub fn server_of(&self, call: CallId) -> Option<usize> {
        self.calls.get(&call).map(|t| t.server)
    }

    pub fn is_answered(&self, call: CallId) -> bool {
        self.calls.get(&call).is_some_and(|t| t.answered)
    }

    /// The call whose verification id the dialplan passed on (FastAGI `agi_arg_1`).
    pub fn by_verification(&self, verification_id: i64) -> Option<CallId> {
        self.by_verification.get(&verification_id).copied()
    }

    /// Starts following a call just originated through `server`.
    pub fn originated(&mut self, call: CallId, verification_id: i64, server: usize) {
        self.calls.insert(
            call,
            Tracked {
                server,
                verification_id,
                progress: false,
                answered: false,
                forwarded: None,
                channels_seen: false,
                callee_seen: false,
                sip_status: None,
                callee_q850: None,
                hangup_asked: None,
                hangup_pending: None,
            },
        );
        self.by_verification.insert(verification_id, call);
    }

    /// The engine asked for the hang-up. Returns whether it can be sent now; otherwise it is sent
    /// (as `Out::Hangup`) once the call's first channel shows up.
    pub fn hangup_asked(&mut self, call: CallId, cause: u16) -> bool {
        let Some(t) = self.calls.get_mut(&call) else {
            return false;
        };
        t.hangup_asked = Some(cause);
        if t.channels_seen {
            true
        } else {
            t.hangup_pending = Some(cause);
            false
        }
    }

    /// `Originate` refused outright (`Response: Error`): no channel will ever exist.
    pub fn originate_refused(&mut self, call: CallId, out: &mut Vec<Out>) {
        if self.calls.get(&call).is_some_and(|t| !t.channels_seen) {
            self.end(call, CAUSE_NOT_PLACED, None, EndedBy::Local, out);
        }
    }

    /// The FastAGI session of a call arrived: the callee answered and runs the prompts' dialplan.
    pub fn agi_arrived(&mut self, verification_id: i64, out: &mut Vec<Out>) -> Option<CallId> {
        let call = self.by_verification(verification_id)?;
        self.answered(call, out);
        Some(call)
    }

    /// Feeds one AMI message received from `server`.
    pub fn on_message(&mut self, server: usize, m: &Message, out: &mut Vec<Out>) {
        match m.event() {
            Event::Newchannel(c) => {
                if let Some(call) = self.call_of(&c) {
                    self.channel_seen(call, &c, out);
                }
            }
            Event::Newstate(c) => {
                let Some(call) = self.call_of(&c) else {
                    return;
                };
                self.channel_seen(call, &c, out);
                match c.state {
                    Some(STATE_RINGING) => self.progress(call, false, out),
                    Some(STATE_UP) if !c.is_local() || self.is_first_half(call, &c) => {
                        self.answered(call, out)
                    }
                    _ => {}
                }
            }
            Event::DialBegin { caller, dest } => {
                if let Some(call) = self.call_of(&dest) {
                    self.channel_seen(call, &dest, out);
                } else if let Some(call) = caller.and_then(|c| self.call_of(&c)) {
                    self.channel_seen(call, &dest, out);
                }
            }
            Event::DialState { dest, status, .. } => {
                if let Some(call) = self.call_of(&dest) {
                    match status {
                        "RINGING" => self.progress(call, false, out),
                        "PROGRESS" => self.progress(call, true, out),
                        _ => {}
                    }
                }
            }
            Event::DialEnd {
                dest,
                forward: Some(forward),
                ..
            } => {
                if let Some(call) = self.call_of(&dest) {
                    self.forwarded(call, number_of_dial_string(forward), out);
                }
            }
            Event::UserEvent {
                name: REDIRECT_USER_EVENT,
                chan,
            } => {
                let by_chan = chan.and_then(|c| self.call_of(&c));
                let by_vid = m
                    .get("Verification")
                    .and_then(|v| v.parse().ok())
                    .and_then(|v| self.by_verification(v));
                if let Some(call) = by_chan.or(by_vid) {
                    let to = m.get("To").and_then(|t| t.parse().ok());
                    self.forwarded(call, to, out);
                }
            }
            Event::HangupRequest {
                chan,
                cause,
                tech_cause,
            } => {
                if let Some(call) = self.call_of(&chan) {
                    self.callee_cause(call, &chan, cause, tech_cause, false, out);
                }
            }
            Event::Hangup {
                chan,
                cause,
                tech_cause,
            } => {
                let Some(call) = self.call_of(&chan) else {
                    return;
                };
                self.callee_cause(call, &chan, cause, tech_cause, true, out);
                if self.is_first_half(call, &chan) {
                    let Some(t) = self.calls.get(&call) else {
                        return;
                    };
                    let ended_by = if t.hangup_asked.is_some() {
                        EndedBy::Us
                    } else if t.callee_seen {
                        EndedBy::Remote
                    } else {
                        EndedBy::Local
                    };
                    let sip = t.sip_status;
                    let q850 = match (cause, t.callee_q850) {
                        // `;1` only says "normal clearing" (or nothing) for a call the far end
                        // refused: the callee's own cause is the one that says why. Seen in
                        // ami-originate-local-congestion: far end 34, `;1` 16.
                        (None | Some(0) | Some(16), Some(callee))
                            if !t.answered && ended_by == EndedBy::Remote =>
                        {
                            callee
                        }
                        (cause, _) => cause.unwrap_or(0),
                    };
                    self.end(call, q850, sip, ended_by, out);
                }
            }
            Event::OriginateResponse {
                success,
                reason,
                uniqueid,
                ..
            } => {
                let Some(call) = uniqueid.and_then(|u| u.parse::<CallId>().ok()) else {
                    return;
                };
                let Some(t) = self.calls.get(&call) else {
                    return;
                };
                if t.server != server {
                    return;
                }
                if success {
                    self.answered(call, out);
                } else if !t.channels_seen {
                    // No channel at all (bad endpoint, missing context): the far end was never
                    // reached. Asterisk gives no cause here, only Reason (0 = anything else).
                    let ended_by = if t.hangup_asked.is_some() {
                        EndedBy::Us
                    } else {
                        EndedBy::Local
                    };
                    self.end(call, cause_of_reason(reason), None, ended_by, out);
                }
            }
            _ => {}
        }
    }

    /// A channel `CoreShowChannels` listed, kept for `reconcile` only if it belongs to one of our
    /// calls on `server`: the listing covers every channel of that Asterisk, and the peer decides
    /// how many there are.
    pub fn listed(&self, server: usize, c: &Chan<'_>) -> Option<ListedChannel> {
        let call = self.call_of(c)?;
        (self.server_of(call) == Some(server)).then(|| ListedChannel {
            uniqueid: c.uniqueid.to_string(),
            linkedid: c.linkedid.to_string(),
            local: c.is_local(),
            state: c.state,
        })
    }

    /// After a reconnect: calls of `server` with no channel left ended while we were away.
    pub fn reconcile(&mut self, server: usize, listed: &[ListedChannel], out: &mut Vec<Out>) {
        let ours: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, t)| t.server == server)
            .map(|(id, _)| *id)
            .collect();
        for call in ours {
            let key = call.to_string();
            let alive: Vec<&ListedChannel> = listed
                .iter()
                .filter(|c| c.linkedid == key || c.uniqueid == key)
                .collect();
            if alive.is_empty() {
                self.lost(call, out);
                continue;
            }
            if alive.iter().any(|c| !c.local && c.state == Some(STATE_UP)) {
                self.answered(call, out);
            } else if alive.iter().any(|c| c.state == Some(STATE_RINGING)) {
                self.progress(call, false, out);
            }
        }
    }

    /// Hang-ups asked for calls of `server` that are still up (asked while the connection was
    /// down, or lost with it): to send again once reconciled.
    pub fn hangups_to_resend(&self, server: usize) -> Vec<(CallId, u16)> {
        self.calls
            .iter()
            .filter(|(_, t)| t.server == server && t.channels_seen)
            .filter_map(|(id, t)| t.hangup_asked.map(|c| (*id, c)))
            .collect()
    }

    /// Every call of a server that cannot be reached again.
    pub fn server_gone(&mut self, server: usize, out: &mut Vec<Out>) {
        let ours: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, t)| t.server == server)
            .map(|(id, _)| *id)
            .collect();
        for call in ours {
            self.lost(call, out);
        }
    }

    /// Forgets a call without reporting anything (the engine already closed it).
    pub fn forget(&mut self, call: CallId) {
        if let Some(t) = self.calls.remove(&call) {
            // Only if it still names this call: a later call may have taken the same id.
            if self.by_verification.get(&t.verification_id) == Some(&call) {
                self.by_verification.remove(&t.verification_id);
            }
        }
    }

    fn call_of(&self, c: &Chan<'_>) -> Option<CallId> {
        let id = c
            .linkedid
            .parse::<CallId>()
            .or_else(|_| c.uniqueid.parse::<CallId>())
            .ok()?;
        self.calls.contains_key(&id).then_some(id)
    }

    fn is_first_half(&self, call: CallId, c: &Chan<'_>) -> bool {
        c.uniqueid.parse::<CallId>().is_ok_and(|u| u == call)
    }

    fn channel_seen(&mut self, call: CallId, c: &Chan<'_>, out: &mut Vec<Out>) {
        let Some(t) = self.calls.get_mut(&call) else {
            return;
        };
        t.channels_seen = true;
        if !c.is_local() {
            t.callee_seen = true;
        }
        if let Some(cause) = t.hangup_pending.take() {
            out.push(Out::Hangup {
                server: t.server,
                call,
                cause,
            });
        }
    }

    fn callee_cause(
        &mut self,
        call: CallId,
        c: &Chan<'_>,
        cause: Option<u16>,
        tech_cause: Option<u16>,
        gone: bool,
        out: &mut Vec<Out>,
    ) {
        if c.is_local() {
            return;
        }
        self.channel_seen(call, c, out);
        if cause == Some(CAUSE_REDIRECTED) {
            // A 302: forwarding, not the call's end. The `HangupRequest` comes a millisecond
            // before the UserEvent and the `DialEnd Forward:` that name the target; the channel's
            // `Hangup` comes after them, so it only counts when neither did.
            if gone {
                self.forwarded(call, None, out);
            }
        } else if let Some(sip) = tech_cause.filter(|s| (300..700).contains(s)) {
            if let Some(t) = self.calls.get_mut(&call) {
                t.sip_status = Some(sip);
                if let Some(q850) = cause.filter(|c| ![0, 16].contains(c)) {
                    t.callee_q850 = Some(q850);
                }
            }
        }
    }

    fn progress(&mut self, call: CallId, early_media: bool, out: &mut Vec<Out>) {
        let Some(t) = self.calls.get_mut(&call) else {
            return;
        };
        if !t.progress && !t.answered {
            t.progress = true;
            emit(out, call, CallEvent::Progress { early_media });
        }
    }

    fn answered(&mut self, call: CallId, out: &mut Vec<Out>) {
        let Some(t) = self.calls.get_mut(&call) else {
            return;
        };
        if !t.answered {
            t.answered = true;
            emit(out, call, CallEvent::Answered);
        }
    }

    fn forwarded(&mut self, call: CallId, to: Option<Msisdn>, out: &mut Vec<Out>) {
        let Some(t) = self.calls.get_mut(&call) else {
            return;
        };
        // Report the first signal at once, and again only when it names the target at last.
        let report = match t.forwarded {
            None => true,
            Some(None) => to.is_some(),
            Some(Some(_)) => false,
        };
        if report {
            t.forwarded = Some(to);
            emit(out, call, CallEvent::Forwarded { to });
        }
    }

    fn end(
        &mut self,
        call: CallId,
        q850: u16,
        sip_status: Option<u16>,
        ended_by: EndedBy,
        out: &mut Vec<Out>,
    ) {
        if self.calls.contains_key(&call) {
            self.forget(call);
            emit(
                out,
                call,
                CallEvent::Hangup(Hangup {
                    q850,
                    sip_status,
                    ended_by,
                }),
            );
        }
    }

    fn lost(&mut self, call: CallId, out: &mut Vec<Out>) {
        if self.calls.contains_key(&call) {
            self.forget(call);
            emit(out, call, CallEvent::Lost);
        }
    }
}

fn emit(out: &mut Vec<Out>, call: CallId, event: CallEvent) {
    out.push(Out::Event(BackendEvent { call, event }));
}

/// The Q.850 cause an `OriginateResponse` Reason stands for when no channel ever reported one.
/// Reason is the `outstate` of `__ast_request_and_dial` (main/channel.c), an Asterisk control
/// frame number (`include/asterisk/frame.h`, documented in the AMI `OriginateResponse` event):
/// 3 `AST_CONTROL_RINGING` (rang until the Originate `Timeout`), 5 `AST_CONTROL_BUSY`,
/// 8 `AST_CONTROL_CONGESTION`. When `ast_request` itself fails (no channel is created, as here),
/// `handle_cause()` turns a requester cause of busy into 5, congestion into 8 and anything else
/// into 0; 1 (`AST_CONTROL_HANGUP`) and 0 say nothing about the far end. Asterisk 22 answered 0
/// for every failure captured (fixture README, `ami-originate-badchannel`).
fn cause_of_reason(reason: u16) -> u16 {
    match reason {
        3 => 19,
        5 => 17,
        8 => 34,
        _ => CAUSE_NOT_PLACED,
    }
}

/// The number a `Forward:` dial string points at: `PJSIP/sipp/sip:+15550003333@127.0.0.1:15071`
/// → 15550003333; `PJSIP/+7999...@trunk` → 7999...
fn number_of_dial_string(dial: &str) -> Option<Msisdn> {
    let after_tech = dial.rsplit('/').next().unwrap_or(dial);
    let user = after_tech.strip_prefix("sip:").unwrap_or(after_tech);
    let user = user.split(['@', ';']).next().unwrap_or(user);
    user.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::asterisk::ami::{AmiCodec, Frame};
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/asterisk/callcode-path/"
    );

    /// Replays a callcode-path capture as if `call` had been originated: the capture's ChannelId,
    /// OtherChannelId and VERIFICATION_ID are replaced by ours (the only change).
    fn replay(name: &str, ids: (&str, &str, &str), call: CallId, vid: i64) -> (Calls, Vec<Out>) {
        let text = std::fs::read_to_string(format!("{DIR}{name}.server.txt")).unwrap();
        let text = text
            .replace(ids.1, &Calls::other_channel_id(call))
            .replace(ids.0, &call.to_string())
            .replace(ids.2, &vid.to_string());
        let mut calls = Calls::new();
        calls.originated(call, vid, 0);
        let mut out = vec![];
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(Bytes::from(text));
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = f {
                calls.on_message(0, &m, &mut out);
            }
        }
        (calls, out)
    }

    fn events(out: &[Out]) -> Vec<CallEvent> {
        out.iter()
            .filter_map(|o| match o {
                Out::Event(e) => Some(e.event),
                _ => None,
            })
            .collect()
    }

    const RING: CallEvent = CallEvent::Progress { early_media: false };

    fn hangup(q850: u16, sip_status: Option<u16>, ended_by: EndedBy) -> CallEvent {
        CallEvent::Hangup(Hangup {
            q850,
            sip_status,
            ended_by,
        })
    }

    #[test]
    fn busy_through_the_local_channel_is_cause_17_with_sip_486_once() {
        let call = CallId::new_v4();
        let (calls, out) = replay(
            "ami-callcode-busy",
            ("cc-busy-0001", "cc-busy-0002", "vid-busy-55ee"),
            call,
            7,
        );
        assert_eq!(events(&out), [RING, hangup(17, Some(486), EndedBy::Remote)]);
        assert!(calls.is_empty());
    }

    /// The README's Q.850 rows other than busy (480 → 19, 503 → 34, 409 → 41; the Reason
    /// header is dropped by Asterisk) are not captured through the callcode path. Built from the
    /// captured busy call: the callee's `HangupRequest`/`Hangup` carry the row's Cause and
    /// TechCause, and the Local halves end with 16, as `;1` did when the far end signalled
    /// congestion in ami-originate-local-congestion. The callee's cause is reported.
    #[test]
    fn a_far_end_cause_is_kept_when_the_local_half_only_says_normal_clearing() {
        for (q850, sip) in [(34, 503), (19, 480), (41, 409), (21, 603)] {
            let call = CallId::new_v4();
            let text = std::fs::read_to_string(format!("{DIR}ami-callcode-busy.server.txt"))
                .unwrap()
                .replace("cc-busy-0002", &Calls::other_channel_id(call))
                .replace("cc-busy-0001", &call.to_string())
                .replace("TechCause: 486\r\n", &format!("TechCause: {sip}\r\n"));
            let blocks: Vec<String> = text
                .split_inclusive("\r\n\r\n")
                .map(|b| {
                    if b.contains("Channel: PJSIP/") {
                        b.replace("Cause: 17\r\n", &format!("Cause: {q850}\r\n"))
                    } else {
                        b.replace("Cause: 17\r\n", "Cause: 16\r\n")
                    }
                })
                .collect();
            let mut calls = Calls::new();
            calls.originated(call, 8, 0);
            let mut out = vec![];
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::from(blocks.concat().as_bytes());
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                if let Frame::Message(m) = f {
                    calls.on_message(0, &m, &mut out);
                }
            }
            assert_eq!(
                events(&out),
                [RING, hangup(q850, Some(sip), EndedBy::Remote)],
                "SIP {sip}"
            );
        }
    }

    #[test]
    fn the_181_forward_is_reported_with_its_target_long_before_the_answer() {
        let call = CallId::new_v4();
        let (_, out) = replay(
            "ami-callcode-redirect181",
            ("cc-r181-0001", "cc-r181-0002", "vid-181-7f3a"),
            call,
            181,
        );
        let to = "15550001000".parse().ok();
        assert_eq!(
            events(&out),
            [
                CallEvent::Forwarded { to },
                RING,
                CallEvent::Answered,
                // The capture's callcode-hold hangs ;1 up after 2 s; nobody asked us.
                hangup(16, None, EndedBy::Remote)
            ]
        );
    }

    #[test]
    fn the_302_forward_is_reported_once_with_the_contact_and_its_cause_23_is_no_sip_status() {
        let call = CallId::new_v4();
        let (_, out) = replay(
            "ami-callcode-redirect302",
            ("cc-r302-0001", "cc-r302-0002", "vid-302-11aa"),
            call,
            302,
        );
        let to = "15550003333".parse().ok();
        assert_eq!(
            events(&out),
            [
                // The UserEvent names the target first; the DialEnd Forward: and the callee's
                // Hangup 23/302 that follow are not repeated.
                CallEvent::Forwarded { to },
                RING,
                CallEvent::Answered,
                hangup(16, None, EndedBy::Remote)
            ]
        );
    }

    #[test]
    fn the_302_ignored_by_dial_still_shows_as_forwarding() {
        let call = CallId::new_v4();
        let (_, out) = replay(
            "ami-callcode-redirect302-ignore",
            ("cc-r302i-0001", "cc-r302i-0002", "vid-302i-22bb"),
            call,
            303,
        );
        let ev = events(&out);
        // No UserEvent with Dial option i: the DialEnd Forward: names the target.
        assert_eq!(
            ev[0],
            CallEvent::Forwarded {
                to: "15550003333".parse().ok()
            },
            "{ev:?}"
        );
        assert!(
            matches!(ev.last(), Some(CallEvent::Hangup(h)) if h.q850 == 16),
            "{ev:?}"
        );
    }

    #[test]
    fn our_hangup_of_the_ringing_flash_call_ends_it_as_ours() {
        let call = CallId::new_v4();
        let text = std::fs::read_to_string(format!("{DIR}ami-callcode-flash-hangup.server.txt"))
            .unwrap()
            .replace("cc-flash-0002", &Calls::other_channel_id(call))
            .replace("cc-flash-0001", &call.to_string());
        let mut calls = Calls::new();
        calls.originated(call, 1, 0);
        let mut out = vec![];
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(text.as_bytes());
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = f {
                // As the driver does: the machine's drop comes after ringing.
                if m.action_id() == Some("hangup-1") {
                    assert!(calls.hangup_asked(call, 16));
                }
                calls.on_message(0, &m, &mut out);
            }
        }
        assert_eq!(events(&out), [RING, hangup(16, None, EndedBy::Us)]);
    }

    #[test]
    fn voice_is_answered_by_the_callee_channel_before_the_late_originate_response() {
        let call = CallId::new_v4();
        let (_, out) = replay(
            "ami-callcode-voice-agi",
            ("cc-voice-0001", "cc-voice-0002", "vid-voice-44dd"),
            call,
            44,
        );
        let ev = events(&out);
        assert_eq!(ev[..2], [RING, CallEvent::Answered]);
        assert_eq!(ev.len(), 3, "{ev:?}");
        // The Answered came from the PJSIP Newstate Up, before any AGI or OriginateResponse.
        let answered_at = out
            .iter()
            .position(|o| matches!(o, Out::Event(e) if e.event == CallEvent::Answered))
            .unwrap();
        assert_eq!(answered_at, 1);
    }

    /// Early media (a 183 with SDP, no 180): app_dial reports `DialState` `PROGRESS` for an
    /// `AST_CONTROL_PROGRESS` indication (apps/app_dial.c) and no channel turns `Ringing`. Not
    /// captured: built from the captured flash call by dropping its `Newstate` Ringing events and
    /// changing the `DialStatus` of its `DialState` events from RINGING to PROGRESS.
    #[test]
    fn early_media_without_ringing_is_progress_and_the_flash_drop_still_ends_the_call_once() {
        let call = CallId::new_v4();
        let text = std::fs::read_to_string(format!("{DIR}ami-callcode-flash-hangup.server.txt"))
            .unwrap()
            .replace("cc-flash-0002", &Calls::other_channel_id(call))
            .replace("cc-flash-0001", &call.to_string());
        let blocks: Vec<&str> = text.split_inclusive("\r\n\r\n").collect();
        let ringing =
            |b: &&str| b.starts_with("Event: Newstate") && b.contains("ChannelState: 5\r\n");
        assert_eq!(
            blocks.iter().filter(|b| ringing(b)).count(),
            2,
            "the capture changed"
        );
        let text: String = blocks
            .into_iter()
            .filter(|b| !ringing(b))
            .collect::<String>()
            .replace("DialStatus: RINGING\r\n", "DialStatus: PROGRESS\r\n");
        let mut calls = Calls::new();
        calls.originated(call, 1, 0);
        let mut out = vec![];
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(text.as_bytes());
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = f {
                if m.action_id() == Some("hangup-1") {
                    assert!(calls.hangup_asked(call, 16));
                }
                calls.on_message(0, &m, &mut out);
            }
        }
        assert_eq!(
            events(&out),
            [
                CallEvent::Progress { early_media: true },
                hangup(16, None, EndedBy::Us)
            ]
        );
    }

    /// Rings until the Originate `Timeout` (ami-originate-local-noanswer, a Local channel like
    /// ours): `OriginateResponse` Failure / Reason 3 comes while channels exist and before the
    /// `Hangup` of `;1`, and there is no `DialEnd` for `;1`. The end is the `;1` Hangup's 19, once.
    #[test]
    fn the_originate_timeout_ends_the_call_once_with_cause_19() {
        let call = CallId::new_v4();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/asterisk/ami-originate-local-noanswer.server.txt"
        ))
        .unwrap()
        .replace("vc-lnoans-0002", &Calls::other_channel_id(call))
        .replace("vc-lnoans-0001", &call.to_string());
        assert!(text.contains("Reason: 3\r\n"));
        let mut calls = Calls::new();
        calls.originated(call, 3, 0);
        let mut out = vec![];
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(text.as_bytes());
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = f {
                calls.on_message(0, &m, &mut out);
            }
        }
        let ev = events(&out);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], RING);
        assert!(
            matches!(ev[1], CallEvent::Hangup(h) if h.q850 == 19 && h.ended_by == EndedBy::Remote),
            "{ev:?}"
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn a_failed_originate_without_channels_is_a_local_failure() {
        let call = CallId::new_v4();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/asterisk/ami-originate-badchannel.server.txt"
        ))
        .unwrap()
        .replace("vc-bad-0001", &call.to_string());
        let mut calls = Calls::new();
        calls.originated(call, 9, 0);
        let mut out = vec![];
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(text.as_bytes());
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = f {
                calls.on_message(0, &m, &mut out);
            }
        }
        assert_eq!(
            events(&out),
            [hangup(CAUSE_NOT_PLACED, None, EndedBy::Local)]
        );
    }

    /// The captured failure (Reason 0) with the other Reasons Asterisk documents for
    /// `OriginateResponse`; only the `Reason:` value is changed.
    #[test]
    fn a_channelless_failure_carries_the_cause_its_reason_stands_for() {
        let capture = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/asterisk/ami-originate-badchannel.server.txt"
        ))
        .unwrap();
        assert!(capture.contains("Reason: 0\r\n"));
        for (reason, q850) in [(0, 47), (1, 47), (3, 19), (5, 17), (8, 34)] {
            let call = CallId::new_v4();
            let text = capture
                .replace("vc-bad-0001", &call.to_string())
                .replace("Reason: 0\r\n", &format!("Reason: {reason}\r\n"));
            let mut calls = Calls::new();
            calls.originated(call, 9, 0);
            let mut out = vec![];
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::from(text.as_bytes());
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                if let Frame::Message(m) = f {
                    calls.on_message(0, &m, &mut out);
                }
            }
            assert_eq!(
                events(&out),
                [hangup(q850, None, EndedBy::Local)],
                "Reason {reason}"
            );
        }
    }

    #[test]
    fn a_refused_originate_is_not_placed_and_ends_once() {
        let call = CallId::new_v4();
        let mut calls = Calls::new();
        calls.originated(call, 5, 0);
        let mut out = vec![];
        calls.originate_refused(call, &mut out);
        calls.originate_refused(call, &mut out);
        assert_eq!(
            events(&out),
            [hangup(CAUSE_NOT_PLACED, None, EndedBy::Local)]
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn forgetting_a_call_keeps_a_later_calls_claim_on_the_same_verification() {
        let (first, second) = (CallId::new_v4(), CallId::new_v4());
        let mut calls = Calls::new();
        calls.originated(first, 5, 0);
        calls.originated(second, 5, 0);
        calls.forget(first);
        assert_eq!(calls.by_verification(5), Some(second));
        calls.forget(second);
        assert_eq!(calls.by_verification(5), None);
    }

    #[test]
    fn an_early_hangup_waits_for_the_first_channel() {
        let call = CallId::new_v4();
        let mut calls = Calls::new();
        calls.originated(call, 1, 3);
        assert!(!calls.hangup_asked(call, 16));
        let m = crate::backend::asterisk::ami::Message::parse(Bytes::from(format!(
            "Event: Newchannel\r\nChannel: Local/1@c-1;1\r\nChannelState: 0\r\nUniqueid: {call}\r\nLinkedid: {call}"
        )))
        .unwrap();
        let mut out = vec![];
        calls.on_message(3, &m, &mut out);
        assert_eq!(
            out,
            [Out::Hangup {
                server: 3,
                call,
                cause: 16
            }]
        );
    }

    /// No `CoreShowChannel` was captured (the ami-misc listing was empty); it carries the same
    /// channel snapshot fields as `Newchannel` (Asterisk's AMI docs), so the flash call's captured
    /// `Newchannel` events stand in for a listing, under the capture's ids (another call) and ours.
    #[test]
    fn only_our_calls_channels_are_kept_from_a_listing() {
        let text = std::fs::read_to_string(format!("{DIR}ami-callcode-flash-hangup.server.txt"))
            .unwrap()
            .replace("Event: Newchannel\r\n", "Event: CoreShowChannel\r\n");
        let call = CallId::new_v4();
        let mut calls = Calls::new();
        calls.originated(call, 1, 2);
        let kept = |text: &str, server: usize| {
            let mut kept = vec![];
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::from(text.as_bytes());
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                if let Frame::Message(m) = f {
                    if let crate::backend::asterisk::ami::Event::CoreShowChannel { chan, .. } =
                        m.event()
                    {
                        kept.push(calls.listed(server, &chan));
                    }
                }
            }
            kept
        };
        let theirs = kept(&text, 2);
        assert_eq!(
            theirs.len(),
            3,
            "Newchannel ;1, ;2 and PJSIP in the capture"
        );
        assert!(theirs.iter().all(Option::is_none), "{theirs:?}");
        let ours = text
            .replace("cc-flash-0002", &Calls::other_channel_id(call))
            .replace("cc-flash-0001", &call.to_string());
        let kept_ours: Vec<_> = kept(&ours, 2).into_iter().flatten().collect();
        assert_eq!(kept_ours.len(), 3, "{kept_ours:?}");
        assert_eq!(kept_ours.iter().filter(|c| !c.local).count(), 1);
        assert!(
            kept(&ours, 0).iter().all(Option::is_none),
            "another server's"
        );
    }

    #[test]
    fn reconcile_loses_calls_whose_channels_are_gone_and_catches_up_the_rest() {
        let (gone, ringing, up, other) = (
            CallId::new_v4(),
            CallId::new_v4(),
            CallId::new_v4(),
            CallId::new_v4(),
        );
        let mut calls = Calls::new();
        calls.originated(gone, 1, 0);
        calls.originated(ringing, 2, 0);
        calls.originated(up, 3, 0);
        calls.originated(other, 4, 1);
        let listed = vec![
            ListedChannel {
                uniqueid: ringing.to_string(),
                linkedid: ringing.to_string(),
                local: true,
                state: Some(STATE_RINGING),
            },
            ListedChannel {
                uniqueid: "1795436473.40".into(),
                linkedid: up.to_string(),
                local: false,
                state: Some(STATE_UP),
            },
        ];
        let mut out = vec![];
        calls.reconcile(0, &listed, &mut out);
        let mut got: Vec<(CallId, CallEvent)> = out
            .iter()
            .filter_map(|o| match o {
                Out::Event(e) => Some((e.call, e.event)),
                _ => None,
            })
            .collect();
        got.sort_by_key(|(c, _)| *c);
        let mut want = vec![
            (gone, CallEvent::Lost),
            (ringing, RING),
            (up, CallEvent::Answered),
        ];
        want.sort_by_key(|(c, _)| *c);
        assert_eq!(got, want);
        assert!(calls.contains(other), "another server's call is untouched");
        assert_eq!(calls.by_verification(1), None);
        let mut out = vec![];
        calls.server_gone(1, &mut out);
        assert_eq!(events(&out), [CallEvent::Lost]);
    }

    proptest::proptest! {
        /// Whatever order the captured events of a call arrive in (and whatever our hang-up
        /// interleaves), its end is reported at most once and nothing follows it.
        #[test]
        fn any_order_of_a_calls_events_ends_it_at_most_once(
            which in 0usize..7,
            seed in proptest::prelude::any::<u64>(),
            hangup_at in 0usize..200,
        ) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let captures = [
                ("ami-callcode-busy", ("cc-busy-0001", "cc-busy-0002", "vid-busy-55ee")),
                ("ami-callcode-flash-hangup", ("cc-flash-0001", "cc-flash-0002", "vid-flash-33cc")),
                ("ami-callcode-redirect181", ("cc-r181-0001", "cc-r181-0002", "vid-181-7f3a")),
                ("ami-callcode-redirect302", ("cc-r302-0001", "cc-r302-0002", "vid-302-11aa")),
                ("ami-callcode-redirect302-ignore", ("cc-r302i-0001", "cc-r302i-0002", "vid-302i-22bb")),
                ("ami-callcode-voice-agi", ("cc-voice-0001", "cc-voice-0002", "vid-voice-44dd")),
                ("ami-callcode-voice-noinherit", ("cc-vnoinh-0001", "cc-vnoinh-0002", "vid-noinh-66ff")),
            ];
            let (name, ids) = captures[which];
            let call = CallId::from_u128(u128::from(seed) << 1 | 1);
            let text = std::fs::read_to_string(format!("{DIR}{name}.server.txt"))
                .unwrap()
                .replace(ids.1, &Calls::other_channel_id(call))
                .replace(ids.0, &call.to_string())
                .replace(ids.2, "77");
            let mut messages = vec![];
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::from(text.as_bytes());
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                if let Frame::Message(m) = f {
                    messages.push(m);
                }
            }
            messages.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let mut calls = Calls::new();
            calls.originated(call, 77, 0);
            let mut out = vec![];
            for (i, m) in messages.iter().enumerate() {
                if i == hangup_at {
                    calls.hangup_asked(call, 16);
                }
                calls.on_message(0, m, &mut out);
            }
            let ev = events(&out);
            let ends = ev
                .iter()
                .filter(|e| matches!(e, CallEvent::Hangup(_) | CallEvent::Lost))
                .count();
            proptest::prop_assert!(ends <= 1, "{:?}", ev);
            if ends == 1 {
                proptest::prop_assert!(
                    matches!(ev.last(), Some(CallEvent::Hangup(_))),
                    "{:?}",
                    ev
                );
                proptest::prop_assert!(calls.is_empty());
            }
        }
    }

    #[test]
    fn forward_dial_strings_name_their_number() {
        assert_eq!(
            number_of_dial_string("PJSIP/sipp/sip:+15550003333@127.0.0.1:15071"),
            "15550003333".parse().ok()
        );
        assert_eq!(
            number_of_dial_string("PJSIP/79161234567@trunk"),
            "79161234567".parse().ok()
        );
        assert_eq!(
            number_of_dial_string("PJSIP/trunk/sip:79161234567@10.0.0.1"),
            "79161234567".parse().ok()
        );
        assert_eq!(number_of_dial_string("garbage"), None);
    }
}
