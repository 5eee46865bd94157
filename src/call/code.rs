//! Verification codes: generation (uniform random digits, no modulo bias), validation of codes a
//! client supplies, and the capacity rules of the VoicePassword API.
//!
//! A `Code` is `Copy` and lives inline (no heap), so it travels through the hot path for free.
//! This module draws randomness only from the generator it is handed; it never seeds one itself.

use std::fmt;

use rand::Rng;

/// Digits in a code a client supplies (`voice.code`, `flashcall.code`, MCN `verification_code`).
pub const CLIENT_CODE_LEN: usize = 4;
/// `capacity` bounds: more than 4 only for a flash call whose code the service generates.
pub const MIN_CAPACITY: usize = 4;
pub const MAX_CAPACITY: usize = 6;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    digits: [u8; MAX_CAPACITY],
    len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a code is {expected} digits, got {got:?} characters")]
    Length { expected: usize, got: usize },
    #[error("a code is made of the digits 0-9 only")]
    NotDigits,
    #[error("capacity must be {MIN_CAPACITY}..={MAX_CAPACITY}, and above {MIN_CAPACITY} only for a flash call with a generated code")]
    Capacity,
}

impl Code {
    /// Uniformly random digits. `Rng::random_range` rejects out-of-zone samples, so no digit is more
    /// likely than another (a bare `% 10` on a random byte would favour 0-5).
    pub fn random(rng: &mut impl Rng, len: usize) -> Result<Code, CodeError> {
        check_capacity(len)?;
        let mut digits = [0u8; MAX_CAPACITY];
        for d in digits.iter_mut().take(len) {
            *d = rng.random_range(0..10u8);
        }
        Ok(Code {
            digits,
            len: len as u8,
        })
    }

    /// A code a client supplied: exactly `CLIENT_CODE_LEN` ASCII digits.
    pub fn parse_client(text: &str) -> Result<Code, CodeError> {
        Self::parse_len(text, CLIENT_CODE_LEN)
    }

    /// Exactly `len` ASCII digits.
    pub fn parse_len(text: &str, len: usize) -> Result<Code, CodeError> {
        let bytes = text.as_bytes();
        if bytes.len() != len || len > MAX_CAPACITY {
            return Err(CodeError::Length {
                expected: len,
                got: bytes.len(),
            });
        }
        let mut digits = [0u8; MAX_CAPACITY];
        for (d, b) in digits.iter_mut().zip(bytes) {
            if !b.is_ascii_digit() {
                return Err(CodeError::NotDigits);
            }
            *d = b - b'0';
        }
        Ok(Code {
            digits,
            len: len as u8,
        })
    }

    /// The code formed by the last `len` digits of a number (an ANI's suffix).
    pub fn from_suffix(value: u64, len: usize) -> Result<Code, CodeError> {
        check_capacity(len)?;
        let mut digits = [0u8; MAX_CAPACITY];
        let mut v = value;
        for i in (0..len).rev() {
            digits[i] = (v % 10) as u8;
            v /= 10;
        }
        Ok(Code {
            digits,
            len: len as u8,
        })
    }

    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The code as an integer, for suffix lookups in the ANI pool.
    pub fn value(&self) -> u64 {
        self.digits()
            .iter()
            .fold(0, |acc, d| acc * 10 + u64::from(*d))
    }
}

/// `capacity` as the VoicePassword API defines it: 4 to 6 digits.
pub fn check_capacity(len: usize) -> Result<(), CodeError> {
    if (MIN_CAPACITY..=MAX_CAPACITY).contains(&len) {
        Ok(())
    } else {
        Err(CodeError::Capacity)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.digits() {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn client_codes_are_four_digits() {
        assert_eq!(Code::parse_client("0042").unwrap().to_string(), "0042");
        assert_eq!(
            Code::parse_client("123"),
            Err(CodeError::Length {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(Code::parse_client("12a4"), Err(CodeError::NotDigits));
        assert_eq!(
            Code::parse_client("١٢٣٤").unwrap_err(),
            CodeError::Length {
                expected: 4,
                got: 8
            }
        );
    }

    #[test]
    fn capacity_is_four_to_six() {
        assert!(check_capacity(3).is_err());
        assert!(check_capacity(4).is_ok());
        assert!(check_capacity(6).is_ok());
        assert!(check_capacity(7).is_err());
    }

    #[test]
    fn suffix_codes_keep_leading_zeros() {
        assert_eq!(
            Code::from_suffix(74951090042, 4).unwrap().to_string(),
            "0042"
        );
        assert_eq!(
            Code::from_suffix(74951090042, 6).unwrap().to_string(),
            "090042"
        );
        assert_eq!(Code::from_suffix(74951090042, 6).unwrap().value(), 90042);
    }

    #[test]
    fn random_digits_are_uniform() {
        // 100,000 digits; each bucket expects 10,000. A chi-square over 9 degrees of freedom above
        // 27.9 happens with p < 0.001 for a fair generator; a `% 10` on bytes scores in the hundreds.
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u64; 10];
        for _ in 0..25_000 {
            for d in Code::random(&mut rng, 4).unwrap().digits() {
                counts[usize::from(*d)] += 1;
            }
        }
        let expected = 10_000.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 27.9, "chi2 = {chi2}, counts = {counts:?}");
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_digit_strings(s in "\\PC{0,8}") {
            let ok = s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit());
            prop_assert_eq!(Code::parse_client(&s).is_ok(), ok);
        }

        #[test]
        fn display_round_trips(value in 0u64..1_000_000, len in 4usize..=6) {
            let code = Code::from_suffix(value, len).unwrap();
            let again = Code::parse_len(&code.to_string(), len).unwrap();
            prop_assert_eq!(code, again);
            prop_assert_eq!(code.value(), value % 10u64.pow(len as u32));
        }

        #[test]
        fn random_codes_have_the_asked_length(seed: u64, len in 4usize..=6) {
            let mut rng = StdRng::seed_from_u64(seed);
            let code = Code::random(&mut rng, len).unwrap();
            prop_assert_eq!(code.len(), len);
            prop_assert!(code.digits().iter().all(|d| *d < 10));
        }
    }
}
