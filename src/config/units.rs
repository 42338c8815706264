//! Human-friendly value types for the config file: durations, fractions, lists and names.
//!
//! Each type deserialises from what a person writes in TOML *and* from the plain string an
//! environment variable carries, because the `config` crate hands env values over as strings
//! (we deliberately leave its `try_parsing` off so that "00123" stays "00123"). The error
//! messages say what was expected with an example; the `config` crate adds the dotted key.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// A duration written with a unit: "90s", "5m", "1h", "1h 30m", "500ms" (humantime syntax).
///
/// A bare number is refused: `timeout = 10` could mean seconds or milliseconds, and a
/// config file should not make the reader guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

/// A fraction written as a percentage ("80%") or a number (0.8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fraction(pub f64);

/// A list written as a TOML array, or as one comma-separated string ("0,1000"), which is
/// how an environment variable supplies a list. Only the list keys use this type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct List<T>(pub Vec<T>);

/// An enum that is spelled as one of a fixed set of lower-case names in the config.
pub(crate) trait Named: Copy + PartialEq + 'static {
    /// Every accepted spelling and the value it stands for.
    const NAMES: &'static [(&'static str, Self)];

    /// The config spelling of `self`.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| *n)
    }
}

/// Parses a humantime duration, with a message that shows the accepted form.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}): write a number with a unit, e.g. \"90s\", \"5m\", \"1h\"")
    })
}

/// Parses "80%" (a percentage) or "0.8" (a plain fraction).
pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let parsed = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match parsed {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!(
            "{s:?} is not a fraction: write a percentage like \"80%\" or a number like 0.8"
        )),
    }
}

/// Formats a fraction the way users write it ("80%").
pub(crate) fn percent(f: f64) -> String {
    format!("{}%", (f * 1000.0).round() / 10.0)
}

/// Deserialises a [`Named`] enum from its string spelling.
pub(crate) fn named<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    T::NAMES
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let all: Vec<String> = T::NAMES.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            de::Error::custom(format!("{s:?} is not one of {}", all.join(", ")))
        })
}

/// The start of the message a non-string value for a string key gets; `load` recognises it
/// and adds the file's own spelling of the value and the fix.
pub(crate) const NOT_A_STRING: &str = "must be a string in quotes, not ";

/// A string key: only a string is taken. The `config` crate would turn `42`, `true` or
/// `0x1F` into "42", "true" or "31"; for a serial number that links the wrong Asset. An
/// environment variable's value is always a string, so overrides keep working.
pub(crate) fn strict_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string in quotes")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.to_owned())
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(s)
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}a boolean ({b})")))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}an integer ({n})")))
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}an integer ({n})")))
        }
        fn visit_i128<E: de::Error>(self, n: i128) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}an integer ({n})")))
        }
        fn visit_u128<E: de::Error>(self, n: u128) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}an integer ({n})")))
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}a float ({n})")))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(format!("{NOT_A_STRING}an array")))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(format!("{NOT_A_STRING}a table")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom(format!("{NOT_A_STRING}an empty value")))
        }
    }
    d.deserialize_any(V).map(Some)
}

/// [`strict_string`] for a path key.
pub(crate) fn strict_path<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    strict_string(d).map(|s| s.map(std::path::PathBuf::from))
}

// === impl HumanDuration ===

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"90s\", \"5m\", \"1h\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} has no unit: write a string such as \"{n}s\""
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} has no unit: write a string such as \"{n}s\""
                )))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} has no unit: write a string such as \"{n}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

// === impl Fraction ===

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Fraction;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fraction: a percentage like \"80%\" or a number like 0.8")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                parse_fraction(s).map(Fraction).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Fraction(n))
            }
            // An integer is refused: is `80` a percentage or a typo for 0.8?
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} is ambiguous: write a percentage like \"{n}%\" or a fraction like 0.8"
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} is ambiguous: write a percentage like \"{n}%\" or a fraction like 0.8"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

// === impl List ===

impl<'de, T> Deserialize<'de> for List<T>
where
    T: Deserialize<'de> + FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T> Visitor<'de> for V<T>
        where
            T: Deserialize<'de> + FromStr,
            T::Err: fmt::Display,
        {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list, or one comma-separated string")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<T>()? {
                    items.push(item);
                }
                Ok(List(items))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.split(',')
                    .map(str::trim)
                    .map(|item| {
                        if item.is_empty() {
                            return Err(E::custom(format!(
                                "{s:?} has an empty item: separate items with single commas"
                            )));
                        }
                        item.parse::<T>()
                            .map_err(|e| E::custom(format!("item {item:?} in {s:?}: {e}")))
                    })
                    .collect::<Result<Vec<T>, E>>()
                    .map(List)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("1h", Some(3600)),
            ("1h 30m", Some(5400)),
            (" 10s ", Some(10)),
            ("10", None),
            ("", None),
            ("soon", None),
            ("-5s", None),
        ];
        for (input, want) in cases {
            let got = parse_duration(input).ok().map(|d| d.as_secs());
            assert_eq!(got, want, "{input:?}");
        }
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("\"90s\""), "{err}");
    }

    #[test]
    fn fractions() {
        let cases = [
            ("80%", Some(0.8)),
            ("80 %", Some(0.8)),
            ("12.5%", Some(0.125)),
            ("0.8", Some(0.8)),
            (" 0.75 ", Some(0.75)),
            ("80", Some(80.0)), // a valid number; the range check rejects it later
            ("eighty", None),
            ("%", None),
            ("NaN", None),
            ("inf", None),
        ];
        for (input, want) in cases {
            let got = parse_fraction(input).ok();
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{input:?}: {g} != {w}"),
                (g, w) => assert_eq!(g, w, "{input:?}"),
            }
        }
        assert_eq!(percent(0.8), "80%");
        assert_eq!(percent(0.125), "12.5%");
    }

    #[test]
    fn list_from_string_and_array() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let d: StrDeserializer<'_, Error> = "0, 1000".into_deserializer();
        assert_eq!(List::<u32>::deserialize(d).unwrap(), List(vec![0, 1000]));
        let d: StrDeserializer<'_, Error> = "0,,1".into_deserializer();
        assert!(List::<u32>::deserialize(d).is_err());
        let d: StrDeserializer<'_, Error> = "0,x".into_deserializer();
        let err = List::<u32>::deserialize(d).unwrap_err().to_string();
        assert!(err.contains("\"x\""), "{err}");
        let d = vec![5u32, 6].into_deserializer();
        let got: Result<List<u32>, Error> = List::deserialize(d);
        assert_eq!(got.unwrap(), List(vec![5, 6]));
    }
}
