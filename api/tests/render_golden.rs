//! Golden files: what `quiesce-operator render -f examples/NAME.yaml` prints
//! is committed as `api/tests/golden/NAME.yaml`, so that every change to
//! the rendered objects shows up in review as a diff of real YAML.
//!
//! After an intended change, regenerate them with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p quiesce-api --test render_golden
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use quiesce_api::InferenceDeployment;
use quiesce_api::render::{RenderConfig, render};

const UPDATE_COMMAND: &str = "UPDATE_GOLDEN=1 cargo test -p quiesce-api --test render_golden";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    paths.retain(|path| path.extension().is_some_and(|ext| ext == "yaml"));
    paths.sort();
    paths
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The objects as `quiesce-operator render` prints them, with the default
/// sidecar image.
fn rendered_yaml(example: &Path) -> String {
    let text = std::fs::read_to_string(example).unwrap();
    let resource: InferenceDeployment = serde_saphyr::from_str(&text).unwrap();
    let rendered = render(&resource, &RenderConfig::default())
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    rendered.to_yaml().unwrap()
}

#[test]
fn rendered_examples_match_their_golden_files() {
    let examples = yaml_files(&manifest_dir().join("../examples"));
    let golden_dir = manifest_dir().join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0" && !v.is_empty());
    let mut failures = Vec::new();

    for example in &examples {
        let golden = golden_dir.join(file_name(example));
        let actual = rendered_yaml(example);
        if update {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Err(_) => failures.push(format!("{} has no golden file", file_name(example))),
            Ok(expected) if expected != actual => failures.push(format!(
                "{} differs from {} (- golden, + rendered):\n{}",
                file_name(example),
                golden.display(),
                line_diff(&expected, &actual)
            )),
            Ok(_) => {}
        }
    }

    let example_names: BTreeSet<String> = examples.iter().map(|p| file_name(p)).collect();
    for golden in yaml_files(&golden_dir) {
        if !example_names.contains(&file_name(&golden)) {
            failures.push(format!(
                "{} has no example any more: delete it",
                golden.display()
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended, regenerate the golden files with\n\n    {UPDATE_COMMAND}\n\nand review the diff.",
        failures.join("\n\n")
    );
}

/// A line diff (longest common subsequence) showing changed lines with two
/// lines of context, at most 120 lines.
fn line_diff(expected: &str, actual: &str) -> String {
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    // common[i][j]: length of the longest common subsequence of old[i..] and new[j..].
    let mut common = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            lines.push((' ', old[i], i + 1));
            (i, j) = (i + 1, j + 1);
        } else if i < old.len() && (j == new.len() || common[i + 1][j] >= common[i][j + 1]) {
            lines.push(('-', old[i], i + 1));
            i += 1;
        } else {
            lines.push(('+', new[j], i + 1));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        lines[k.saturating_sub(2)..(k + 3).min(lines.len())]
            .iter()
            .any(|(op, _, _)| *op != ' ')
    };
    let mut out = Vec::new();
    let mut skipped = true;
    for (k, (op, line, old_number)) in lines.iter().enumerate() {
        if near_change(k) {
            if skipped {
                out.push(format!("@@ golden line {old_number} @@"));
            }
            out.push(format!("{op} {line}"));
            skipped = false;
        } else {
            skipped = true;
        }
    }
    if out.len() > 120 {
        let more = out.len() - 120;
        out.truncate(120);
        out.push(format!("... and {more} more lines"));
    }
    out.join("\n")
}

#[test]
fn the_diff_shows_what_changed() {
    let diff = line_diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nD\ne\nf\ng\nh\n");
    assert_eq!(
        diff,
        "@@ golden line 2 @@\n  b\n  c\n- d\n+ D\n  e\n  f\n  g\n+ h"
    );
}
