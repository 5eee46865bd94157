//! FreeSWITCH hang-up cause names and their numeric codes, as data.
//!
//! Source: `switch_call_cause_t` in FreeSWITCH's `src/include/switch_types.h` (v1.10), also
//! published as the "Hangup Cause Code Table" in the FreeSWITCH documentation. Codes up to 127 are
//! Q.850 causes; the rest are FreeSWITCH's own. Only the names a verification call can end with
//! are listed. FreeSWITCH itself reports `variable_hangup_cause_q850: 16` for its own codes above
//! 127 (ORIGINATOR_CANCEL in -70-); we keep the FreeSWITCH code for names that arrive with no
//! channel at all (`-ERR GATEWAY_DOWN`), so the spine's cause table sees a value above 127 and
//! reports the number as unreachable rather than as a normal clearing.

/// `(name, code)`, one row per cause name.
pub const CAUSES: &[(&str, u16)] = &[
    ("UNALLOCATED_NUMBER", 1),
    ("NO_ROUTE_TRANSIT_NET", 2),
    ("NO_ROUTE_DESTINATION", 3),
    ("CHANNEL_UNACCEPTABLE", 6),
    ("NORMAL_CLEARING", 16),
    ("USER_BUSY", 17),
    ("NO_USER_RESPONSE", 18),
    ("NO_ANSWER", 19),
    ("SUBSCRIBER_ABSENT", 20),
    ("CALL_REJECTED", 21),
    ("NUMBER_CHANGED", 22),
    ("REDIRECTION_TO_NEW_DESTINATION", 23),
    ("EXCHANGE_ROUTING_ERROR", 25),
    ("DESTINATION_OUT_OF_ORDER", 27),
    ("INVALID_NUMBER_FORMAT", 28),
    ("FACILITY_REJECTED", 29),
    ("NORMAL_UNSPECIFIED", 31),
    ("NORMAL_CIRCUIT_CONGESTION", 34),
    ("NETWORK_OUT_OF_ORDER", 38),
    ("NORMAL_TEMPORARY_FAILURE", 41),
    ("SWITCH_CONGESTION", 42),
    ("REQUESTED_CHAN_UNAVAIL", 44),
    ("OUTGOING_CALL_BARRED", 52),
    ("INCOMING_CALL_BARRED", 54),
    ("SERVICE_UNAVAILABLE", 63),
    ("INCOMPATIBLE_DESTINATION", 88),
    ("RECOVERY_ON_TIMER_EXPIRE", 102),
    ("PROTOCOL_ERROR", 111),
    ("INTERWORKING", 127),
    ("ORIGINATOR_CANCEL", 487),
    ("SYSTEM_SHUTDOWN", 501),
    ("MANAGER_REQUEST", 503),
    ("ALLOTTED_TIMEOUT", 602),
    ("MEDIA_TIMEOUT", 604),
    ("USER_NOT_REGISTERED", 606),
    ("PROGRESS_TIMEOUT", 607),
    ("INVALID_GATEWAY", 608),
    ("GATEWAY_DOWN", 609),
    ("INVALID_URL", 610),
    ("INVALID_PROFILE", 611),
];

/// The code of a cause name; `None` for names not in the table.
pub fn code(name: &str) -> Option<u16> {
    CAUSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The name FreeSWITCH understands for a Q.850 cause we hang up with; NORMAL_CLEARING for codes
/// it has no name for.
pub fn name(code: u16) -> &'static str {
    CAUSES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("NORMAL_CLEARING", |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips_and_names_are_unique() {
        for (n, c) in CAUSES {
            assert_eq!(code(n), Some(*c), "{n}");
            assert_eq!(name(*c), *n, "{c}");
        }
        let mut names: Vec<_> = CAUSES.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CAUSES.len());
    }

    #[test]
    fn the_values_seen_in_the_captures() {
        // Hangup-Cause / variable_hangup_cause_q850 pairs from the fixture README's table.
        for (n, q) in [
            ("NORMAL_CLEARING", 16),
            ("USER_BUSY", 17),
            ("NO_ANSWER", 19),
            ("CALL_REJECTED", 21),
            ("NO_USER_RESPONSE", 18),
            ("UNALLOCATED_NUMBER", 1),
            ("NORMAL_TEMPORARY_FAILURE", 41),
            ("REQUESTED_CHAN_UNAVAIL", 44),
        ] {
            assert_eq!(code(n), Some(q), "{n}");
        }
        // Only in BACKGROUND_JOB bodies (-01-, README gotchas): FreeSWITCH's own codes.
        assert_eq!(code("INVALID_PROFILE"), Some(611));
        assert_eq!(code("GATEWAY_DOWN"), Some(609));
        assert_eq!(code("ORIGINATOR_CANCEL"), Some(487));
        assert_eq!(code("NO_SUCH_THING"), None);
        assert_eq!(name(9999), "NORMAL_CLEARING");
    }
}
