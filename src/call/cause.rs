//! The one table that turns how a call ended (Q.850 cause, answered or not, who ended it) into an
//! `Outcome`, and the one table that renders an `Outcome` in each API dialect's vocabulary.
//!
//! Both are data, scanned in order, with a test per row. Nothing else in callcode may decide what a
//! cause means or how a status is spelled: backends report causes, dialects look words up here.

/// How a verification call ended, independent of any dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered (voice password: the prompts were played).
    Answered,
    /// Flash call: the phone rang and we dropped the call, so the caller ID reached the subscriber.
    Delivered,
    /// Q.850 17.
    Busy,
    /// Rang or was cancelled without an answer (Q.850 16/18/19 without answer).
    NoAnswer,
    /// Q.850 21: the subscriber or their network rejected the call.
    Rejected,
    /// Q.850 31: rejected by the terminating operator (often an SS7 or anti-fraud refusal).
    RejectedByOperator,
    /// Q.850 41 and the like: the carrier refused for a billing reason.
    Billing,
    /// Q.850 1/22/28: the number does not exist or is malformed.
    InvalidNumber,
    /// Q.850 34/38/42/44/47: no route or circuit towards the destination.
    RouteFailure,
    /// Anything else: the number could not be reached.
    Unreachable,
    /// Forwarding was detected and the request asked for the check: dropped before any code was
    /// delivered.
    Redirected,
    /// Cancelled by us before a code was delivered (shutdown, cancel request).
    Cancelled,
    /// The engine lost track of the call (crash, lost PBX) and cannot say how it ended.
    Interrupted,
}

/// Who ended the call, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndedBy {
    /// callcode asked for the hang-up (flash drop, timeout, prompts done).
    Us,
    /// The far end (or its network) sent the final response or BYE.
    Remote,
    /// The call never reached the far end: PBX, gateway or route failure with no channel.
    Local,
}

/// What the cause table looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub q850: u16,
    pub answered: bool,
    pub ended_by: EndedBy,
    /// A flash call that reached ringing (or early media) before it ended.
    pub flash_rang: bool,
}

/// One row: a pattern over `Ending` and the outcome it means. `None` matches anything.
#[derive(Debug, Clone, Copy)]
pub struct CauseRow {
    pub causes: Option<&'static [u16]>,
    pub answered: Option<bool>,
    pub ended_by: Option<EndedBy>,
    pub flash_rang: Option<bool>,
    pub outcome: Outcome,
}

const fn row(
    causes: Option<&'static [u16]>,
    answered: Option<bool>,
    ended_by: Option<EndedBy>,
    flash_rang: Option<bool>,
    outcome: Outcome,
) -> CauseRow {
    CauseRow {
        causes,
        answered,
        ended_by,
        flash_rang,
        outcome,
    }
}

/// The cause table, first match wins.
///
/// A flash call dropped by us after it rang is a success whatever cause the PBX reports for our own
/// cancel (FreeSWITCH says ORIGINATOR_CANCEL with q850 16, Asterisk says 16): it comes first.
/// After an answer the code was delivered, so every cause means "answered".
pub const CAUSE_TABLE: &[CauseRow] = &[
    row(
        None,
        Some(false),
        Some(EndedBy::Us),
        Some(true),
        Outcome::Delivered,
    ),
    row(None, Some(true), None, None, Outcome::Answered),
    row(Some(&[17]), None, None, None, Outcome::Busy),
    row(
        Some(&[16, 18, 19]),
        Some(false),
        None,
        None,
        Outcome::NoAnswer,
    ),
    row(Some(&[21]), None, None, None, Outcome::Rejected),
    row(Some(&[31]), None, None, None, Outcome::RejectedByOperator),
    row(Some(&[41]), None, None, None, Outcome::Billing),
    row(Some(&[1, 22, 28]), None, None, None, Outcome::InvalidNumber),
    row(
        Some(&[34, 38, 42, 44, 47]),
        None,
        None,
        None,
        Outcome::RouteFailure,
    ),
    row(None, None, None, None, Outcome::Unreachable),
];

impl CauseRow {
    fn matches(&self, e: &Ending) -> bool {
        self.causes.is_none_or(|c| c.contains(&e.q850))
            && self.answered.is_none_or(|a| a == e.answered)
            && self.ended_by.is_none_or(|b| b == e.ended_by)
            && self.flash_rang.is_none_or(|r| r == e.flash_rang)
    }
}

/// The outcome of a call that ended on its own terms (the machine decides redirect and cancel).
pub fn classify(ending: Ending) -> Outcome {
    CAUSE_TABLE
        .iter()
        .find(|r| r.matches(&ending))
        .map_or(Outcome::Unreachable, |r| r.outcome)
}

/// How each dialect spells an outcome. `stored` is the name kept in the database.
#[derive(Debug, Clone, Copy)]
pub struct Vocabulary {
    pub outcome: Outcome,
    pub stored: &'static str,
    /// VoicePassword callback `state`.
    pub voicepassword: &'static str,
    /// VoicePassword statistics `state` (Russian).
    pub voicepassword_ru: &'static str,
    /// MCN webhook `final_status`.
    pub mcn_final_status: &'static str,
    /// MCN webhook `reason` where the provider's table gives no final status of its own.
    pub mcn_reason: Option<&'static str>,
}

const fn vocab(
    outcome: Outcome,
    stored: &'static str,
    voicepassword: &'static str,
    voicepassword_ru: &'static str,
    mcn_final_status: &'static str,
    mcn_reason: Option<&'static str>,
) -> Vocabulary {
    Vocabulary {
        outcome,
        stored,
        voicepassword,
        voicepassword_ru,
        mcn_final_status,
        mcn_reason,
    }
}

pub const VOCABULARY: &[Vocabulary] = &[
    vocab(
        Outcome::Answered,
        "answered",
        "ANSWERED",
        "Успешно",
        "ANSWER",
        None,
    ),
    vocab(
        Outcome::Delivered,
        "delivered",
        "ANSWERED",
        "Успешно",
        "ANSWER",
        None,
    ),
    vocab(Outcome::Busy, "busy", "BUSY", "Занято", "CANCEL", None),
    vocab(
        Outcome::NoAnswer,
        "no_answer",
        "NO ANSWER",
        "Нет ответа",
        "CANCEL",
        None,
    ),
    vocab(
        Outcome::Rejected,
        "rejected",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("rejected"),
    ),
    vocab(
        Outcome::RejectedByOperator,
        "rejected_by_operator",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("rejected"),
    ),
    vocab(
        Outcome::Billing,
        "billing",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("billing"),
    ),
    vocab(
        Outcome::InvalidNumber,
        "invalid_number",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("unreachable"),
    ),
    vocab(
        Outcome::RouteFailure,
        "route_failure",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("unreachable"),
    ),
    vocab(
        Outcome::Unreachable,
        "unreachable",
        "FAIL",
        "Ошибка",
        "CANCEL",
        Some("unreachable"),
    ),
    vocab(
        Outcome::Redirected,
        "redirected",
        "CANCEL",
        "Отменен",
        "CANCEL",
        Some("redirected"),
    ),
    vocab(
        Outcome::Cancelled,
        "cancelled",
        "CANCEL",
        "Отменен",
        "CANCEL",
        Some("cancelled"),
    ),
    vocab(
        Outcome::Interrupted,
        "interrupted",
        "CANCEL",
        "Отменен",
        "CANCEL",
        Some("interrupted"),
    ),
];

/// VoicePassword statistics name of a verification still dialling or ringing.
pub const VOICEPASSWORD_RU_IN_PROGRESS: &str = "Дозвон";

impl Outcome {
    pub fn vocabulary(self) -> &'static Vocabulary {
        VOCABULARY
            .iter()
            .find(|v| v.outcome == self)
            .expect("every outcome has a vocabulary row (tested)")
    }

    pub fn as_str(self) -> &'static str {
        self.vocabulary().stored
    }

    pub fn from_stored(s: &str) -> Option<Outcome> {
        VOCABULARY.iter().find(|v| v.stored == s).map(|v| v.outcome)
    }

    /// Whether the code reached the subscriber (what the account pays for and the client trusts).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Answered | Outcome::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ending(q850: u16, answered: bool, ended_by: EndedBy) -> Ending {
        Ending {
            q850,
            answered,
            ended_by,
            flash_rang: false,
        }
    }

    // One test per row of CAUSE_TABLE, in table order.

    #[test]
    fn row_flash_rang_and_dropped_by_us_is_delivered() {
        for q850 in [16, 0, 102, 487] {
            let e = Ending {
                flash_rang: true,
                ..ending(q850, false, EndedBy::Us)
            };
            assert_eq!(classify(e), Outcome::Delivered, "q850 {q850}");
        }
        // Rang, but the far end ended it: not ours to call a delivery.
        let e = Ending {
            flash_rang: true,
            ..ending(17, false, EndedBy::Remote)
        };
        assert_eq!(classify(e), Outcome::Busy);
    }

    #[test]
    fn row_16_answered_is_answered() {
        assert_eq!(
            classify(ending(16, true, EndedBy::Remote)),
            Outcome::Answered
        );
        assert_eq!(classify(ending(16, true, EndedBy::Us)), Outcome::Answered);
        // A carrier cause after an answer does not undo the delivery.
        assert_eq!(
            classify(ending(41, true, EndedBy::Remote)),
            Outcome::Answered
        );
    }

    #[test]
    fn row_17_is_busy() {
        assert_eq!(classify(ending(17, false, EndedBy::Remote)), Outcome::Busy);
    }

    #[test]
    fn row_16_18_19_not_answered_is_no_answer() {
        for q850 in [16, 18, 19] {
            assert_eq!(
                classify(ending(q850, false, EndedBy::Remote)),
                Outcome::NoAnswer
            );
            assert_eq!(
                classify(ending(q850, false, EndedBy::Us)),
                Outcome::NoAnswer
            );
        }
    }

    #[test]
    fn row_21_is_rejected() {
        assert_eq!(
            classify(ending(21, false, EndedBy::Remote)),
            Outcome::Rejected
        );
    }

    #[test]
    fn row_31_is_rejected_by_operator() {
        assert_eq!(
            classify(ending(31, false, EndedBy::Remote)),
            Outcome::RejectedByOperator
        );
    }

    #[test]
    fn row_41_is_billing() {
        assert_eq!(
            classify(ending(41, false, EndedBy::Remote)),
            Outcome::Billing
        );
    }

    #[test]
    fn row_1_22_28_is_invalid_number() {
        for q850 in [1, 22, 28] {
            assert_eq!(
                classify(ending(q850, false, EndedBy::Remote)),
                Outcome::InvalidNumber
            );
        }
    }

    #[test]
    fn row_34_38_42_44_47_is_route_failure() {
        for q850 in [34, 38, 42, 44, 47] {
            assert_eq!(
                classify(ending(q850, false, EndedBy::Local)),
                Outcome::RouteFailure
            );
        }
    }

    #[test]
    fn row_anything_else_is_unreachable() {
        for q850 in [0, 2, 3, 20, 27, 102, 127, 609] {
            assert_eq!(
                classify(ending(q850, false, EndedBy::Local)),
                Outcome::Unreachable
            );
        }
    }

    #[test]
    fn every_row_is_reachable() {
        // Each row must be the first match for at least one input, or it is dead weight.
        let inputs: Vec<Ending> = (0u16..130)
            .flat_map(|q| {
                [EndedBy::Us, EndedBy::Remote, EndedBy::Local]
                    .into_iter()
                    .flat_map(move |b| {
                        [false, true].into_iter().flat_map(move |a| {
                            [false, true].into_iter().map(move |r| Ending {
                                q850: q,
                                answered: a,
                                ended_by: b,
                                flash_rang: r,
                            })
                        })
                    })
            })
            .collect();
        for (i, _) in CAUSE_TABLE.iter().enumerate() {
            let first_match_somewhere = inputs
                .iter()
                .any(|e| CAUSE_TABLE.iter().position(|r| r.matches(e)) == Some(i));
            assert!(first_match_somewhere, "row {i} is shadowed");
        }
    }

    // One test per row of VOCABULARY.

    #[test]
    fn vocabulary_rows() {
        let expect = [
            (Outcome::Answered, "ANSWERED", "Успешно", "ANSWER", None),
            (Outcome::Delivered, "ANSWERED", "Успешно", "ANSWER", None),
            (Outcome::Busy, "BUSY", "Занято", "CANCEL", None),
            (Outcome::NoAnswer, "NO ANSWER", "Нет ответа", "CANCEL", None),
            (
                Outcome::Rejected,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("rejected"),
            ),
            (
                Outcome::RejectedByOperator,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("rejected"),
            ),
            (
                Outcome::Billing,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("billing"),
            ),
            (
                Outcome::InvalidNumber,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("unreachable"),
            ),
            (
                Outcome::RouteFailure,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("unreachable"),
            ),
            (
                Outcome::Unreachable,
                "FAIL",
                "Ошибка",
                "CANCEL",
                Some("unreachable"),
            ),
            (
                Outcome::Redirected,
                "CANCEL",
                "Отменен",
                "CANCEL",
                Some("redirected"),
            ),
            (
                Outcome::Cancelled,
                "CANCEL",
                "Отменен",
                "CANCEL",
                Some("cancelled"),
            ),
            (
                Outcome::Interrupted,
                "CANCEL",
                "Отменен",
                "CANCEL",
                Some("interrupted"),
            ),
        ];
        assert_eq!(expect.len(), VOCABULARY.len());
        for (outcome, vp, ru, mcn, reason) in expect {
            let v = outcome.vocabulary();
            assert_eq!(
                (v.voicepassword, v.voicepassword_ru),
                (vp, ru),
                "{outcome:?}"
            );
            assert_eq!(
                (v.mcn_final_status, v.mcn_reason),
                (mcn, reason),
                "{outcome:?}"
            );
            assert_eq!(Outcome::from_stored(v.stored), Some(outcome));
        }
    }

    proptest! {
        #[test]
        fn classify_is_total_and_answer_wins(q850: u16, answered: bool, rang: bool, by in 0u8..3) {
            let ended_by = [EndedBy::Us, EndedBy::Remote, EndedBy::Local][usize::from(by)];
            let outcome = classify(Ending { q850, answered, ended_by, flash_rang: rang });
            if answered {
                prop_assert_eq!(outcome, Outcome::Answered);
            }
            if outcome == Outcome::Delivered {
                prop_assert!(rang && ended_by == EndedBy::Us && !answered);
            }
        }
    }
}
