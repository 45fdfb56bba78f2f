//! The import rule, checked over the source tree: a module may use only
//! modules of a lower layer, and only `http/` knows axum. A few modules
//! are also kept from some lower ones ([`kept_from`]): `data` is pure
//! format code, and storing datasets is `datasets`' business.
//!
//! | layer | modules |
//! |---|---|
//! | 10 | `cli` (the command line dispatches to everything) |
//! | 9 | `server`, `predict_local` |
//! | 8 | `http`, `telemetry` |
//! | 7 | `app` (the application state) |
//! | 6 | `config` (its settings), `sweeps` (candidate jobs, halving, the supervisor), `models` (the model service: alias, delete, download) |
//! | 5 | `jobs`, `serve`, `export` (ONNX files of trained models), `audit` (what is wrong with a dataset: label errors, duplicates, outliers) |
//! | 4 | `train`, `datasets` (storing, validating and recording datasets, over `data`) |
//! | 3 | `data`, `model` |
//! | 2 | `imaging`, `store`, `torch_info`, `torchx`, `artifacts` (the shared artefact store) |
//! | 1 | `db`, `devices` (device health, read by training, serving and `http`), `budget` (the decoding memory budget) |
//! | 0 | `task`, `error`, `metrics` (vocabulary shared by every layer) |

/// The layer of a top-level module, `None` for one the rule does not know
/// (a new module must be placed in the table).
pub fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "cli" => 10,
        "server" | "predict_local" | "explain_local" => 9,
        "http" | "telemetry" => 8,
        "app" => 7,
        "config" | "sweeps" | "models" => 6,
        "jobs" | "serve" | "export" | "audit" => 5,
        "train" | "datasets" | "explain" => 4,
        "data" | "model" => 3,
        "imaging" | "store" | "torch_info" | "torchx" | "artifacts" => 2,
        "db" | "devices" | "budget" => 1,
        "task" | "error" | "metrics" => 0,
        _ => return None,
    })
}

/// The lower modules `module` may not import all the same: `data` reads
/// and checks dataset formats and knows no database, store or artefact
/// store (`datasets` does that above it).
pub fn kept_from(module: &str) -> &'static [&'static str] {
    match module {
        "data" => &["store", "db", "artifacts"],
        _ => &[],
    }
}

/// Every `crate::<module>` a source text names outside comments, grouped
/// imports included (`use crate::{data::Task, store::{self, jobs}};`,
/// over several lines).
pub fn crate_imports(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + 7..];
        let names = match rest.trim_start().strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![leading_ident(rest)],
        };
        for name in names {
            if !name.is_empty() && name != "self" && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The first path segment of each item of a `{…}` group (`group` starts
/// after its `{`): `data::Task, store::{self, jobs}}` gives `data`, `store`.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![leading_ident(group)];
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(leading_ident(&group[i + 1..])),
            _ => {}
        }
    }
    heads
}

fn leading_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The rule's violations in one file of `module`: imports of a module of
/// the same or a higher layer, and axum outside `http`.
pub fn violations(module: &str, source: &str) -> Vec<String> {
    let Some(own) = layer(module) else {
        return vec![format!("module `{module}` has no layer in src/layering.rs")];
    };
    let mut out = Vec::new();
    for used in crate_imports(source) {
        if used == module {
            continue;
        }
        if kept_from(module).contains(&used.as_str()) {
            out.push(format!(
                "`{module}` imports `{used}`, which it is kept from"
            ));
            continue;
        }
        match layer(&used) {
            Some(l) if l < own => {}
            Some(_) => out.push(format!("`{module}` (layer {own}) imports `{used}`")),
            None => {} // an item of lib.rs itself (`crate::AppError`)
        }
    }
    if module != "http"
        && source.lines().any(|l| {
            let code = l.split("//").next().unwrap_or("");
            code.contains("axum::") || code.contains("use axum")
        })
    {
        out.push(format!("`{module}` uses axum; only `http` may"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, f);
            } else if path.extension().is_some_and(|e| e == "rs") {
                f(&path);
            }
        }
    }

    #[test]
    fn no_module_imports_a_higher_one_and_only_http_knows_axum() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        visit(&src, &mut |path| {
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            // `layering.rs` quotes violations in its own tests.
            if module == "lib" || module == "main" || module == "layering" {
                return;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for v in violations(&module, &text) {
                found.push(format!("{}: {v}", rel.display()));
            }
        });
        assert!(
            found.is_empty(),
            "layering violations:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_checker_sees_upward_imports_and_axum() {
        let v = violations(
            "data",
            "use crate::http::AppState;\nuse crate::imaging::Pipeline;\n",
        );
        assert_eq!(v, vec!["`data` (layer 3) imports `http`".to_string()]);
        assert!(violations("store", "use crate::data::Task;").len() == 1);
        assert!(violations("jobs", "use crate::serve::Registry;").len() == 1);
        assert!(violations("train", "//! see crate::jobs::worker\n").is_empty());
        assert_eq!(violations("serve", "use axum::Router;").len(), 1);
        assert!(violations("http", "use axum::Router;\nuse crate::app::AppState;").is_empty());
        assert_eq!(violations("newmod", "").len(), 1);
    }

    #[test]
    fn data_imports_no_store_database_or_artefacts() {
        let v = violations(
            "data",
            "use crate::imaging::Pipeline;\nuse crate::{db::Db, store::datasets};\nuse crate::artifacts::Artifacts;\n",
        );
        assert_eq!(
            v,
            vec![
                "`data` imports `db`, which it is kept from".to_string(),
                "`data` imports `store`, which it is kept from".to_string(),
                "`data` imports `artifacts`, which it is kept from".to_string(),
            ]
        );
        assert!(violations(
            "datasets",
            "use crate::{data::Manifest, store::datasets, db::Db};"
        )
        .is_empty());
        assert_eq!(
            violations("datasets", "use crate::jobs::JobQueue;").len(),
            1
        );
    }

    #[test]
    fn grouped_imports_and_re_exports_are_read() {
        let v = violations(
            "train",
            "use crate::{\n    imaging::Pipeline, // fine\n    store::{self, jobs},\n    jobs::JobQueue,\n};\n",
        );
        assert_eq!(v, vec!["`train` (layer 4) imports `jobs`".to_string()]);
        assert_eq!(
            crate_imports("use crate::{imaging::Pipeline, store::{self, jobs}};"),
            vec!["imaging".to_string(), "store".to_string()]
        );
        assert_eq!(
            crate_imports("pub use crate::{self as root, app::AppState};"),
            vec!["app".to_string()]
        );
        assert_eq!(
            violations("model", "pub use crate::train::ModelCard;").len(),
            1
        );
    }
}
