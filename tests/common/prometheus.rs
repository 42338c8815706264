//! A strict parser for the Prometheus text exposition format 0.0.4, for tests.
//!
//! Stricter than Prometheus itself: every line must be a `# HELP`, a `# TYPE` or a sample;
//! metric and label names must be valid; label values may only use the three escapes;
//! every sample must belong to the family declared by the last `# TYPE` (families are
//! contiguous and declared once, before their samples); no series may repeat; counters
//! are `_total` and non-negative; histogram buckets are cumulative, sorted, end at `+Inf`
//! and match `_count`; the text ends with a newline.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// Family name → type.
    pub types: HashMap<String, String>,
}

impl Metrics {
    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }
}

/// Parses `text`, or says which line breaks which rule.
pub fn parse(text: &str) -> Result<Metrics, String> {
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut m = Metrics::default();
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
            check_name(name).map_err(at)?;
            if !helped.insert(name.to_owned()) {
                return Err(at("second HELP for the family".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            check_name(name).map_err(at)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if m.types.insert(name.to_owned(), kind.to_owned()).is_some() || closed.contains(name) {
                return Err(at("family declared twice".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("counter names end with _total".into()));
            }
            if let Some(prev) = current.replace(name.to_owned()) {
                closed.insert(prev);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("comments and blank lines are not expected".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = current
            .clone()
            .ok_or_else(|| at("sample before any TYPE".into()))?;
        let kind = &m.types[&family];
        let belongs = sample.name == family
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.name == format!("{family}{s}")));
        if !belongs {
            return Err(at(format!("sample outside its family (current: {family})")));
        }
        if kind == "counter" && (sample.value < 0.0 || sample.value.is_nan()) {
            return Err(at("negative counter".into()));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !series.insert(key) {
            return Err(at("duplicate series".into()));
        }
        m.samples.push(sample);
    }
    check_histograms(&m)?;
    Ok(m)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            let eq = s.find('=').ok_or("label without =")?;
            let lname = &s[..eq];
            check_label_name(lname)?;
            s = s[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value must be quoted")?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("raw newline in a label value".into()),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            if labels.insert(lname.to_owned(), value).is_some() {
                return Err(format!("label {lname} repeated"));
            }
            s = &s[end + 1..];
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
        rest = s;
    }
    let value_text = rest
        .strip_prefix(' ')
        .ok_or("expected one space before the value")?;
    let mut parts = value_text.split(' ');
    let value = parse_value(parts.next().unwrap_or(""))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the value".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if v.is_empty() || v.contains(['i', 'I', 'n', 'N']) => Err(format!("bad value {v:?}")),
        _ => v.parse::<f64>().map_err(|_| format!("bad value {v:?}")),
    }
}

fn check_histograms(m: &Metrics) -> Result<(), String> {
    for (family, kind) in &m.types {
        if kind != "histogram" {
            continue;
        }
        // Group buckets by their labels minus `le`.
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in m
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s
                .labels
                .get("le")
                .ok_or(format!("{family}: bucket without le"))?;
            let mut rest = s.labels.clone();
            rest.remove("le");
            groups
                .entry(format!("{rest:?}"))
                .or_default()
                .push((parse_value(le)?, s.value));
        }
        for (labels, buckets) in groups {
            if !buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
            {
                return Err(format!(
                    "{family}{labels}: buckets not sorted and cumulative"
                ));
            }
            let (last_le, inf_count) = *buckets.last().ok_or("no buckets")?;
            if last_le != f64::INFINITY {
                return Err(format!("{family}{labels}: no +Inf bucket"));
            }
            let count = m
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .ok_or(format!("{family}{labels}: no _count"))?;
            if count.value != inf_count {
                return Err(format!(
                    "{family}{labels}: _count differs from the +Inf bucket"
                ));
            }
            if !m
                .samples
                .iter()
                .any(|s| s.name == format!("{family}_sum") && format!("{:?}", s.labels) == labels)
            {
                return Err(format!("{family}{labels}: no _sum"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n";
    assert!(parse(good).is_ok());
    for bad in [
        "# TYPE a_total counter\na_total 1",     // no final newline
        "# TYPE a counter\na 1\n",               // counter without _total
        "a 1\n",                                 // no TYPE
        "# TYPE a gauge\nb 1\n",                 // wrong family
        "# TYPE a gauge\na{k=v} 1\n",            // unquoted
        "# TYPE a gauge\na{k=\"\\x\"} 1\n",      // bad escape
        "# TYPE a gauge\na 1\na 2\n",            // duplicate series
        "# TYPE a gauge\na one\n",               // bad value
        "# TYPE a gauge\n# TYPE b gauge\na 1\n", // interleaved
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\nh_sum 0\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
