//! Prometheus metrics: one [`Registry`] per process, shared by the gateway and the node when
//! they run together (`fnmesh up`), so one scrape shows both.
//!
//! Each crate registers its own metrics in it (`gateway::metrics`, `nodes::metrics`); this
//! module holds what they share: the text encoding, the histogram buckets, and [`LabelCap`],
//! which keeps label values that come from users (function names) bounded, and
//! [`ScrapeToken`], the credential a Prometheus scrape may present instead of an admin key.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use prometheus::Encoder as _;

pub use prometheus::Registry;

/// The content type of [`encode`]'s output (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of the latency histograms, in seconds: 0.5 ms to 5 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The label value that stands for every value beyond a [`LabelCap`].
pub const OTHER: &str = "other";

/// Distinct function names a metric family labels at most (then [`OTHER`]).
pub const MAX_FUNCTION_LABELS: usize = 1000;

/// Encodes every metric of `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics failed; the scrape is partial");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Shortest scrape token accepted.
pub const MIN_SCRAPE_TOKEN_LEN: usize = 16;
/// Longest scrape token accepted.
pub const MAX_SCRAPE_TOKEN_LEN: usize = 512;

/// Why a scrape token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeTokenError {
    /// Too short or too long.
    #[error(
        "a metrics scrape token must be {MIN_SCRAPE_TOKEN_LEN} to {MAX_SCRAPE_TOKEN_LEN} \
         characters long, not {0}"
    )]
    Length(usize),
    /// Holds whitespace or a character that cannot travel in an HTTP header.
    #[error("a metrics scrape token may hold only visible ASCII characters")]
    Characters,
}

/// The shared secret a Prometheus scrape presents as `Authorization: Bearer <token>`
/// (`FNMESH_METRICS_TOKEN`; Prometheus' `authorization: { credentials: … }`). Compared in
/// constant time; never printed.
#[derive(Clone)]
pub struct ScrapeToken(String);

impl ScrapeToken {
    /// A token from configuration (surrounding whitespace, e.g. a file's newline, is dropped).
    pub fn parse(text: &str) -> Result<Self, ScrapeTokenError> {
        let token = text.trim();
        if !(MIN_SCRAPE_TOKEN_LEN..=MAX_SCRAPE_TOKEN_LEN).contains(&token.len()) {
            return Err(ScrapeTokenError::Length(token.chars().count()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ScrapeTokenError::Characters);
        }
        Ok(Self(token.to_owned()))
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn matches_authorization(&self, header: Option<&str>) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some((scheme, value)) = header.and_then(|h| h.trim().split_once(' ')) else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(value.trim().as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(<redacted>)")
    }
}

/// Bounds the values of one label: the first `max` distinct values are kept, every later one
/// becomes [`OTHER`]. (Values seen once are kept for the life of the process, as the series
/// that carry them are.)
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `value` if it is (or now becomes) one of the kept values, else [`OTHER`].
    pub fn label<'a>(&self, value: &'a str) -> Cow<'a, str> {
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.contains(value) {
            return Cow::Borrowed(value);
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return Cow::Borrowed(value);
        }
        Cow::Borrowed(OTHER)
    }
}

impl Default for LabelCap {
    fn default() -> Self {
        Self::new(MAX_FUNCTION_LABELS)
    }
}

/// Microseconds as the milliseconds of a `Server-Timing` `dur` (three decimals, so the
/// header and the record carry the same number).
pub fn ms_of_us(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// Microseconds as seconds, for histograms.
pub fn seconds_of_us(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`…_total`, `…_bucket`, `…_count`, …).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses the Prometheus text format strictly (for tests and tools; Prometheus itself is the
/// real consumer): every line is empty, a `# HELP`/`# TYPE` line or a sample of a family
/// declared by a `# TYPE` line before it, with well-formed names, quoted and escaped label
/// values (which may hold `{`, `}` and `,`) and a float value. The error names the line.
pub fn parse_text(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !is_metric_name(name) || !known.contains(&kind) {
                        return Err(fail("bad TYPE"));
                    }
                    if families.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(fail("TYPE declared twice"));
                    }
                }
                (Some("HELP"), Some(name), _) if is_metric_name(name) => {}
                _ => return Err(fail("bad comment")),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(fail("no value")),
        };
        if !is_metric_name(name) {
            return Err(fail("bad metric name"));
        }
        let family = [
            "", "_bucket", "_sum", "_count", "_total", "_created", "_info",
        ]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| families.contains_key(*base));
        if family.is_none() {
            return Err(fail("sample without a TYPE"));
        }
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(rest) => parse_labels(rest).map_err(|why| fail(&why))?,
            None => (BTreeMap::new(), rest),
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value"))?
            .split(' ');
        let value = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v.parse::<f64>().map_err(|_| fail("bad value"))?,
            None => return Err(fail("no value")),
        };
        match (fields.next(), fields.next()) {
            (None, _) => {}
            (Some(ts), None) if ts.parse::<i64>().is_ok() => {}
            _ => return Err(fail("bad timestamp")),
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",…}` (after the `{`): the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, rest) = s.split_once("=\"").ok_or("bad label")?;
        if !is_metric_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("bad escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key:?} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_token_matches_its_bearer_header_only() {
        let token = ScrapeToken::parse(" prometheus-scrape-0123 \n").unwrap();
        assert!(token.matches_authorization(Some("Bearer prometheus-scrape-0123")));
        assert!(token.matches_authorization(Some("bearer  prometheus-scrape-0123 ")));
        for other in [
            None,
            Some(""),
            Some("prometheus-scrape-0123"),
            Some("Basic prometheus-scrape-0123"),
            Some("Bearer prometheus-scrape-012"),
            Some("Bearer prometheus-scrape-01234"),
            Some("Bearer "),
        ] {
            assert!(!token.matches_authorization(other), "{other:?}");
        }
        assert_eq!(format!("{token:?}"), "ScrapeToken(<redacted>)");
        assert_eq!(
            ScrapeToken::parse("short").unwrap_err(),
            ScrapeTokenError::Length(5)
        );
        assert_eq!(
            ScrapeToken::parse("has a space in it!").unwrap_err(),
            ScrapeTokenError::Characters
        );
        assert!(ScrapeToken::parse(&"x".repeat(MAX_SCRAPE_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn a_label_cap_keeps_the_first_values_then_says_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), OTHER);
        assert_eq!(cap.label("a"), "a");
    }

    #[test]
    fn milliseconds_keep_microsecond_precision() {
        assert_eq!(ms_of_us(0), "0.000");
        assert_eq!(ms_of_us(1_234), "1.234");
        assert_eq!(ms_of_us(61_005), "61.005");
    }

    #[test]
    fn the_text_parser_reads_what_encode_writes() {
        let registry = Registry::new();
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new("t_requests_total", "Requests."),
            &["route", "method"],
        )
        .unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["/v1/functions/{name}/invoke", "a\"b,c"])
            .inc_by(3);
        let h = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t_seconds", "T."))
            .unwrap();
        registry.register(Box::new(h.clone())).unwrap();
        h.observe(0.2);
        let samples = parse_text(&encode(&registry)).unwrap();
        let counter = samples
            .iter()
            .find(|s| s.name == "t_requests_total")
            .unwrap();
        assert_eq!(counter.labels["route"], "/v1/functions/{name}/invoke");
        assert_eq!(counter.labels["method"], "a\"b,c");
        assert_eq!(counter.value, 3.0);
        let inf = samples
            .iter()
            .find(|s| s.name == "t_seconds_bucket" && s.labels["le"] == "+Inf")
            .unwrap();
        assert_eq!(inf.value, 1.0);
    }

    #[test]
    fn the_text_parser_refuses_malformed_lines() {
        for bad in [
            "x 1",
            "# TYPE x counter\nx{a=\"1} 1",
            "# TYPE x counter\nx{a=1} 1",
            "# TYPE x counter\nx one",
            "# TYPE x counter\n# TYPE x counter",
            "# TYPE x bogus",
            "# TYPE x counter\nx{a=\"\\q\"} 1",
        ] {
            assert!(parse_text(bad).is_err(), "{bad:?}");
        }
    }
}
