//! The layer order of the top-level modules, checked by a test: a module may use only modules of lower
//! layers, so there are no import cycles and the layout reads bottom-up. The test reads every
//! `crate::<module>` path outside test code in `src/`.

/// From the bottom: leaves, then clients of the outside world, then the components, then the
/// run pipeline, then the configuration that names every component's settings, then the
/// composition root and the command line.
pub const LAYERS: &[&[&str]] = &[
    &["units", "model", "signature"],
    &["storage", "db", "telemetry", "shutdown"],
    &["ops", "embedded_postgres"],
    &["artifact", "logs", "alerts", "cron"],
    &["outputs", "retention", "sandbox", "runner", "webhooks"],
    &["pipeline"],
    &["config"],
    &["app"],
    &["demo"],
    &["cli"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// Every `crate::<name>` a file mentions outside comments and its `mod tests { … }`.
    fn crate_paths(text: &str) -> BTreeSet<String> {
        let code = match text.find("#[cfg(test)]\nmod tests {") {
            Some(at) => &text[..at],
            None => text,
        };
        let mut found = BTreeSet::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or_default();
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a, b::c}` on one line.
                    for item in group.split([',', '}']) {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            found.insert(name);
                        }
                    }
                    continue;
                }
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn modules_use_only_lower_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut violations = Vec::new();
        let mut seen = BTreeSet::new();
        for file in &files {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if matches!(top.as_str(), "lib" | "main" | "layers") {
                continue;
            }
            let Some(own) = layer_of(&top) else {
                violations.push(format!(
                    "{top} (src/{}) is in no layer; add it to LAYERS",
                    relative.display()
                ));
                continue;
            };
            seen.insert(top.clone());
            for used in crate_paths(&std::fs::read_to_string(file).unwrap()) {
                match layer_of(&used) {
                    Some(layer) if used == top || layer < own => {}
                    Some(_) => violations.push(format!(
                        "src/{} ({top}, layer {own}) uses crate::{used} (layer {})",
                        relative.display(),
                        layer_of(&used).unwrap()
                    )),
                    None => violations.push(format!(
                        "src/{} uses crate::{used}, which is in no layer",
                        relative.display()
                    )),
                }
            }
        }
        assert!(
            violations.is_empty(),
            "layer violations:\n{}",
            violations.join("\n")
        );
        // The table names only modules that exist, so it cannot go stale silently.
        for module in LAYERS.iter().flat_map(|l| l.iter()) {
            assert!(
                seen.contains(*module),
                "LAYERS names {module}, which has no file under src/"
            );
        }
    }

    #[test]
    fn the_layer_check_sees_grouped_and_plain_paths() {
        let found = crate_paths(
            "use crate::{db, units::parse_size};\nlet x = crate::storage::Foo; // crate::cli\n#[cfg(test)]\nmod tests {\n use crate::app;\n}",
        );
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["db", "storage", "units"]
        );
    }
}
