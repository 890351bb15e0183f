//! The suite's table of results and figures, and its JSON form.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// One measured figure of a scenario: `"quiesce lost" = "0 of 212"`.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// What was measured.
    pub label: String,
    /// Its value, with its unit.
    pub value: String,
}

/// Figures in the order a scenario measured them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures(pub Vec<Figure>);

impl Figures {
    /// Adds a figure.
    pub fn add(&mut self, label: impl Into<String>, value: impl std::fmt::Display) {
        self.0.push(Figure {
            label: label.into(),
            value: value.to_string(),
        });
    }
}

/// How one scenario went.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: &'static str,
    /// What it proves.
    pub proves: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// Its wall time in seconds.
    pub seconds: f64,
    /// What it measured.
    pub figures: Figures,
    /// Why it failed.
    pub error: Option<String>,
}

/// Seconds with one decimal, for figures.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// The table printed at the end of a run.
pub fn table(results: &[ScenarioResult], wall: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<6} {:>7}  figures",
        "scenario", "result", "time"
    );
    for result in results {
        let verdict = if result.passed { "pass" } else { "FAIL" };
        let _ = write!(
            out,
            "{:<14} {:<6} {:>6.1}s",
            result.name, verdict, result.seconds
        );
        let mut lines = result
            .figures
            .0
            .iter()
            .map(|f| format!("{}: {}", f.label, f.value))
            .chain(result.error.iter().map(|e| format!("error: {e}")))
            .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>());
        let _ = writeln!(out, "  {}", lines.next().unwrap_or_default());
        for line in lines {
            let _ = writeln!(out, "{:<30}{line}", "");
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let _ = writeln!(
        out,
        "{passed} of {} scenarios passed in {}",
        results.len(),
        seconds(wall)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_figure_and_the_error_under_its_scenario() {
        let mut figures = Figures::default();
        figures.add("lost", "0 of 12");
        figures.add("rollout", seconds(Duration::from_millis(12_340)));
        let results = [
            ScenarioResult {
                name: "rollout",
                proves: "",
                passed: true,
                seconds: 40.04,
                figures,
                error: None,
            },
            ScenarioResult {
                name: "drift",
                proves: "",
                passed: false,
                seconds: 10.0,
                figures: Figures::default(),
                error: Some("preStop not restored".to_owned()),
            },
        ];
        let table = table(&results, Duration::from_secs(51));
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("rollout        pass     40.0s  lost: 0 of 12"),
            "{table}"
        );
        assert_eq!(lines[2].trim(), "rollout: 12.3 s");
        assert!(lines[3].starts_with("drift          FAIL     10.0s  error: preStop not restored"));
        assert_eq!(lines[4], "1 of 2 scenarios passed in 51.0 s");
    }
}
