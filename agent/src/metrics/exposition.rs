//! The Prometheus text format, written by hand: a family header once, then its
//! samples. Names and units follow Prometheus' rules (base units, `_total` on
//! counters, `_seconds` for durations); label values are escaped.
use std::fmt::Write as _;

use super::latency::Latency;

#[derive(Default)]
pub(crate) struct Exposition(String);

impl Exposition {
    pub(crate) fn into_text(self) -> String {
        self.0
    }

    /// `# HELP` and `# TYPE` of a family whose samples follow.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        debug_assert!(kind != "counter" || name.ends_with("_total"), "{name}");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just declared; `labels` as (name, value).
    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut Self {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    pub(crate) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help).sample(name, &[], value);
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help).sample(name, &[], value);
    }

    /// A histogram in seconds from a latency kept in microseconds.
    pub(crate) fn histogram(&mut self, name: &str, help: &str, latency: &Latency) {
        self.family(name, "histogram", help);
        let snapshot = latency.snapshot();
        let bucket = format!("{name}_bucket");
        for (le, count) in &snapshot.buckets {
            self.sample(&bucket, &[("le", le)], count);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a sum of microseconds, shown in seconds"
        )]
        let sum = snapshot.sum_us as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], format!("{sum:.6}"));
        self.sample(&format!("{name}_count"), &[], snapshot.count);
    }
}

/// Backslash, double quote and newline escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_counters_carry_total() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "X.")
            .sample("x_total", &[("path", "a\"b\\c\nd")], 3);
        assert_eq!(
            e.into_text(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{path=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }
}
