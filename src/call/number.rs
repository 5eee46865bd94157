//! Phone numbers: the compact `Msisdn` the hot path carries, and the parser that turns what a client
//! typed into a normalised E.164 number with its destination country.
//!
//! Parsing uses the `phonenumber` crate for the country and our own E.164 length rules on top. This
//! module does no I/O and knows nothing about routes or accounts: it answers "which number, which
//! country", nothing more.

use std::fmt;

/// An E.164 number without the `+`: at most 15 digits, kept as an integer plus its digit count so it
/// is `Copy`, hashes fast and never allocates (leading zeros are impossible in E.164, but the length
/// is kept anyway so that `Display` round-trips exactly).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Msisdn {
    value: u64,
    len: u8,
}

/// Shortest and longest number we accept, country code included. E.164 allows at most 15 digits; the
/// shortest real subscriber numbers with their country code have 8 (some small island nations).
pub const MIN_DIGITS: usize = 8;
pub const MAX_DIGITS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Empty, or something other than digits (after an optional leading `+`).
    #[error("the number is empty or is not made of digits")]
    Malformed,
    /// Digits, but too short or too long for E.164.
    #[error("the number has {0} digits; E.164 numbers have {MIN_DIGITS} to {MAX_DIGITS}")]
    Length(usize),
    /// Digits of the right length that belong to no known country.
    #[error("no country can be determined for the number")]
    UnknownCountry,
}

impl Msisdn {
    /// Digits only (no `+`), `MIN_DIGITS..=MAX_DIGITS` of them, not starting with 0.
    pub fn from_digits(digits: &str) -> Result<Self, NumberError> {
        let bytes = digits.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(NumberError::Malformed);
        }
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&bytes.len()) {
            return Err(NumberError::Length(bytes.len()));
        }
        if bytes[0] == b'0' {
            return Err(NumberError::Malformed);
        }
        let value = bytes
            .iter()
            .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
        Ok(Msisdn {
            value,
            len: bytes.len() as u8,
        })
    }

    /// Builds a number from its integer value (used by the pool, whose ranges are integers).
    pub fn from_u64(value: u64) -> Result<Self, NumberError> {
        let len = digit_count(value);
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&len) {
            return Err(NumberError::Length(len));
        }
        Ok(Msisdn {
            value,
            len: len as u8,
        })
    }

    pub fn value(self) -> u64 {
        self.value
    }

    pub fn len(self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The last `n` digits as an integer (`n` ≤ 15), e.g. the flash-call code an ANI carries.
    pub fn suffix(self, n: u32) -> u64 {
        self.value % 10u64.pow(n)
    }
}

fn digit_count(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 10 {
        value /= 10;
        n += 1;
    }
    n
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$}", self.value, width = usize::from(self.len))
    }
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msisdn({self})")
    }
}

impl std::str::FromStr for Msisdn {
    type Err = NumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Msisdn::from_digits(s.strip_prefix('+').unwrap_or(s))
    }
}

/// A number a client asked us to call, normalised, with the country that decides its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub number: Msisdn,
    pub country: phonenumber::country::Id,
}

impl Destination {
    /// ISO 3166 alpha-2 code of the destination country, e.g. `RU`.
    pub fn country_code(&self) -> &str {
        self.country.as_ref()
    }
}

/// Parses what a client sent as "the number to call": digits, optionally with a leading `+`, and
/// common separators (spaces, dashes, dots, parentheses) that people paste from forms.
pub fn parse_destination(input: &str) -> Result<Destination, NumberError> {
    let mut digits = String::with_capacity(input.len());
    for (i, ch) in input.trim().chars().enumerate() {
        match ch {
            '0'..='9' => digits.push(ch),
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(NumberError::Malformed),
        }
    }
    let number = Msisdn::from_digits(&digits)?;
    let parsed =
        phonenumber::parse(None, format!("+{digits}")).map_err(|_| NumberError::UnknownCountry)?;
    // `phonenumber` keeps a national number in a u64 and the country code separately; make sure it
    // understood the same digits we did (it silently drops some prefixes otherwise).
    if !phonenumber::is_viable(&digits) {
        return Err(NumberError::UnknownCountry);
    }
    let country = parsed.country().id().ok_or(NumberError::UnknownCountry)?;
    Ok(Destination { number, country })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msisdn_round_trips_and_exposes_suffixes() {
        let n: Msisdn = "74951091251".parse().unwrap();
        assert_eq!(n.to_string(), "74951091251");
        assert_eq!(n.len(), 11);
        assert_eq!(n.suffix(4), 1251);
        assert_eq!(n.suffix(6), 91251);
        assert_eq!(
            Msisdn::from_u64(3612340000).unwrap().to_string(),
            "3612340000"
        );
    }

    #[test]
    fn msisdn_rejects_bad_shapes() {
        assert_eq!(Msisdn::from_digits(""), Err(NumberError::Malformed));
        assert_eq!(Msisdn::from_digits("7999x"), Err(NumberError::Malformed));
        assert_eq!(
            Msisdn::from_digits("0799999999"),
            Err(NumberError::Malformed)
        );
        assert_eq!(Msisdn::from_digits("1234567"), Err(NumberError::Length(7)));
        assert_eq!(
            Msisdn::from_digits("1234567890123456"),
            Err(NumberError::Length(16))
        );
    }

    #[test]
    fn destinations_get_their_country() {
        assert_eq!(
            parse_destination("79999999999").unwrap().country_code(),
            "RU"
        );
        assert_eq!(
            parse_destination("+7 (999) 999-99-99")
                .unwrap()
                .country_code(),
            "RU"
        );
        assert_eq!(
            parse_destination("36201234567").unwrap().country_code(),
            "HU"
        );
        assert_eq!(
            parse_destination("4915112340016").unwrap().country_code(),
            "DE"
        );
        assert_eq!(
            parse_destination("12025550123").unwrap().country_code(),
            "US"
        );
    }

    #[test]
    fn destinations_reject_garbage() {
        assert_eq!(parse_destination(""), Err(NumberError::Malformed));
        assert_eq!(parse_destination("abc"), Err(NumberError::Malformed));
        assert_eq!(parse_destination("7999+999"), Err(NumberError::Malformed));
        assert!(parse_destination("99999999999").is_err());
    }
}
