//! A sweep's spec as the client sends it, and its expansion into candidate
//! job configs. Everything here is pure: the checks that need the database
//! or the base model are in `service`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::{AppError, AppResult};
use crate::train::config::JobConfig;

pub use crate::train::config::SelectionMetric as SweepMetric;

/// How a sweep stops losing candidates early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStop {
    /// Successive halving over epochs: at each rung, the candidates still
    /// running are compared on their validation metric at that epoch and
    /// only the top `1/reduction_factor` (at least one) go on.
    Halving,
}

/// Limits on what a sweep may spend.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Run at most this many candidates: the first ones in the spec's order.
    pub max_candidates: Option<u32>,
    /// Summed run time of the candidates' jobs (seconds of a worker); when
    /// reached, every unfinished candidate stops and keeps its best epoch.
    /// Must leave time for one epoch.
    pub max_seconds: Option<f64>,
}

/// A sweep's spec. Give `candidates` or `grid`, not both.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Job configs (as `POST /jobs` takes them), each merged over `base`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub candidates: Option<Vec<Value>>,
    /// Job-config fields, each with a list of values: one candidate per
    /// combination (cartesian product), merged over `base`. Fields are
    /// taken in alphabetical order, the last one varying fastest.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub grid: Option<Map<String, Value>>,
    /// Fields every candidate shares (e.g. `base_model`, `epochs`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub base: Option<Map<String, Value>>,
    /// Validation metric to rank on; by default `accuracy` (multi-class)
    /// or `map` (multi-label).
    #[serde(default)]
    pub metric: Option<SweepMetric>,
    /// Candidates that may run at once (default 1).
    #[serde(default = "one")]
    pub max_parallel: u32,
    /// Alias the winner's model is pointed at when the sweep ends
    /// (`production` makes `/predict` serve it).
    #[serde(default)]
    pub promote_alias: Option<String>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub early_stop: Option<EarlyStop>,
    /// Halving rungs: epoch numbers, ascending, each below every
    /// candidate's `epochs`.
    #[serde(default)]
    pub rungs: Option<Vec<u32>>,
    /// Halving keeps the top `1/reduction_factor` at each rung (default 3).
    #[serde(default)]
    pub reduction_factor: Option<u32>,
}

fn one() -> u32 {
    1
}

/// Most candidates that may run at once.
pub const MAX_PARALLEL: u32 = 64;

fn invalid(code: &'static str, detail: impl Into<String>) -> AppError {
    AppError::unprocessable(code, detail)
}

impl SweepSpec {
    /// Parses the client's spec; the error names the field.
    pub fn from_value(value: Value) -> AppResult<Self> {
        let spec: Self = serde_json::from_value(value)
            .map_err(|e| invalid("invalid_spec", format!("sweep spec: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    /// The checks that need neither the candidates nor the dataset.
    fn check(&self) -> AppResult<()> {
        if !(1..=MAX_PARALLEL).contains(&self.max_parallel) {
            return Err(invalid(
                "invalid_spec",
                format!("`max_parallel` must be 1..={MAX_PARALLEL}"),
            ));
        }
        if let Some(alias) = &self.promote_alias {
            let valid = !alias.is_empty()
                && alias.len() <= 64
                && alias
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(invalid(
                    "invalid_alias",
                    "`promote_alias`: alias names are 1-64 characters of letters, digits, `-`, `_` and `.`",
                ));
            }
        }
        if let Some(budget) = &self.budget {
            if budget.max_candidates == Some(0) {
                return Err(invalid(
                    "invalid_budget",
                    "`budget.max_candidates` must be at least 1",
                ));
            }
            if let Some(s) = budget.max_seconds {
                if !(s.is_finite() && s > 0.0) {
                    return Err(invalid(
                        "invalid_budget",
                        "`budget.max_seconds` must be a positive number",
                    ));
                }
            }
        }
        match self.early_stop {
            None => {
                if self.rungs.is_some() || self.reduction_factor.is_some() {
                    return Err(invalid(
                        "invalid_spec",
                        "`rungs` and `reduction_factor` need `early_stop: \"halving\"`",
                    ));
                }
            }
            Some(EarlyStop::Halving) => {
                let rungs = self.rungs.as_deref().unwrap_or_default();
                if rungs.is_empty() {
                    return Err(invalid(
                        "invalid_rungs",
                        "`rungs`: halving needs at least one rung (an epoch number)",
                    ));
                }
                if rungs[0] == 0 || rungs.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(invalid(
                        "invalid_rungs",
                        "`rungs` must be epoch numbers (from 1), strictly ascending",
                    ));
                }
                if self
                    .reduction_factor
                    .is_some_and(|f| !(2..=100).contains(&f))
                {
                    return Err(invalid(
                        "invalid_spec",
                        "`reduction_factor` must be 2..=100",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn reduction_factor(&self) -> u32 {
        self.reduction_factor.unwrap_or(3)
    }

    /// The candidates' configs, parsed and validated as `POST /jobs` does,
    /// in the spec's order, capped by `budget.max_candidates`. More than
    /// `max_candidates` (the service's limit) is refused, counted before
    /// the budget's cap and before expanding a grid.
    pub fn expand(&self, max_candidates: usize) -> AppResult<Vec<JobConfig>> {
        let base = self.base.clone().unwrap_or_default();
        let docs: Vec<(String, Map<String, Value>)> = match (&self.candidates, &self.grid) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "invalid_spec",
                    "give either `candidates` (a list of job configs) or `grid` (fields with lists of values)",
                ))
            }
            (Some(list), None) => {
                if list.is_empty() {
                    return Err(invalid(
                        "empty_candidates",
                        "`candidates` is an empty list",
                    ));
                }
                check_count(list.len(), max_candidates)?;
                let mut out = Vec::with_capacity(list.len());
                for (i, c) in list.iter().enumerate() {
                    let Value::Object(fields) = c else {
                        return Err(invalid(
                            "invalid_config",
                            format!("`candidates[{i}]` must be an object (a job config)"),
                        ));
                    };
                    out.push((format!("candidates[{i}]"), fields.clone()));
                }
                out
            }
            (None, Some(grid)) => expand_grid(grid, max_candidates)?
                .into_iter()
                .map(|combo| (format!("grid {}", Value::Object(combo.clone())), combo))
                .collect(),
        };
        let cap = self
            .budget
            .as_ref()
            .and_then(|b| b.max_candidates)
            .map_or(usize::MAX, |n| n as usize);
        docs.into_iter()
            .take(cap)
            .map(|(name, fields)| {
                let mut merged = base.clone();
                merged.extend(fields);
                let text = Value::Object(merged).to_string();
                JobConfig::from_json(&text)
                    .map_err(|e| invalid("invalid_config", format!("{name}: {e}")))
            })
            .collect()
    }
}

fn check_count(n: usize, max: usize) -> AppResult<()> {
    if n > max {
        return Err(invalid(
            "too_many_candidates",
            format!(
                "the sweep has {n} candidates; this service runs at most {max} per sweep \
                 (`--max-sweep-candidates`); narrow the grid or set `budget.max_candidates`"
            ),
        ));
    }
    Ok(())
}

/// True when `field` is a field of [`JobConfig`]: serde's own answer
/// (`deny_unknown_fields`), so the list never drifts from the struct.
fn is_config_field(field: &str, sample: &Value) -> bool {
    let mut doc = Map::new();
    doc.insert("base_model".into(), "x".into());
    doc.insert(field.into(), sample.clone());
    match serde_json::from_value::<JobConfig>(Value::Object(doc)) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains(&format!("unknown field `{field}`")),
    }
}

/// The cartesian product of the grid's lists, in the grid's (alphabetical)
/// field order with the last field varying fastest.
fn expand_grid(grid: &Map<String, Value>, max: usize) -> AppResult<Vec<Map<String, Value>>> {
    if grid.is_empty() {
        return Err(invalid(
            "empty_grid",
            "`grid` has no fields; give at least one field with a list of values",
        ));
    }
    let mut axes: Vec<(&String, &Vec<Value>)> = Vec::with_capacity(grid.len());
    for (field, values) in grid {
        let Value::Array(values) = values else {
            return Err(invalid(
                "invalid_grid",
                format!("`grid.{field}` must be a list of values"),
            ));
        };
        if values.is_empty() {
            return Err(invalid(
                "empty_grid",
                format!("`grid.{field}` is an empty list"),
            ));
        }
        if !is_config_field(field, &values[0]) {
            return Err(invalid(
                "unknown_grid_field",
                format!("`grid.{field}`: a job config has no field `{field}`"),
            ));
        }
        axes.push((field, values));
    }
    let total = axes
        .iter()
        .fold(1usize, |n, (_, v)| n.saturating_mul(v.len()));
    check_count(total, max)?;
    let mut out = vec![Map::new()];
    for (field, values) in axes {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut next = partial.clone();
                    next.insert(field.clone(), v.clone());
                    next
                })
            })
            .collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> AppResult<SweepSpec> {
        SweepSpec::from_value(v)
    }

    fn code(e: AppError) -> (&'static str, String) {
        match e {
            AppError::Client { code, detail, .. } => (code, detail),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_grid_is_a_cartesian_product_over_the_base() {
        let s = spec(json!({
            "base": {"base_model": "m", "epochs": 3},
            "grid": {"mode": ["linear_probe", "full"], "learning_rate": [0.1, 0.01, 0.001]}
        }))
        .unwrap();
        let configs = s.expand(64).unwrap();
        assert_eq!(configs.len(), 6);
        // Alphabetical fields: learning_rate outer, mode inner.
        let got: Vec<(f64, String)> = configs
            .iter()
            .map(|c| {
                (
                    c.learning_rate.unwrap(),
                    serde_json::to_value(c.mode)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .into(),
                )
            })
            .collect();
        assert_eq!(got[0], (0.1, "linear_probe".into()));
        assert_eq!(got[1], (0.1, "full".into()));
        assert_eq!(got[5], (0.001, "full".into()));
        assert!(configs.iter().all(|c| c.epochs == 3 && c.base_model == "m"));
    }

    #[test]
    fn bad_grids_are_named() {
        let (c, d) = code(
            spec(json!({"base": {"base_model": "m"}, "grid": {"learnig_rate": [0.1]}}))
                .unwrap()
                .expand(64)
                .unwrap_err(),
        );
        assert_eq!(c, "unknown_grid_field");
        assert!(d.contains("learnig_rate"), "{d}");
        let (c, _) = code(spec(json!({"grid": {}})).unwrap().expand(64).unwrap_err());
        assert_eq!(c, "empty_grid");
        let (c, d) = code(
            spec(json!({"base": {"base_model": "m"}, "grid": {"epochs": []}}))
                .unwrap()
                .expand(64)
                .unwrap_err(),
        );
        assert_eq!(c, "empty_grid");
        assert!(d.contains("grid.epochs"), "{d}");
        let (c, _) = code(
            spec(json!({"base": {"base_model": "m"}, "grid": {"epochs": [1, 2, 3], "seed": [1, 2, 3]}}))
                .unwrap()
                .expand(8)
                .unwrap_err(),
        );
        assert_eq!(c, "too_many_candidates");
        // A value the job config refuses names the candidate and the field.
        let (c, d) = code(
            spec(json!({"base": {"base_model": "m"}, "grid": {"batch_size": [8, 0]}}))
                .unwrap()
                .expand(64)
                .unwrap_err(),
        );
        assert_eq!(c, "invalid_config");
        assert!(d.contains("batch_size"), "{d}");
    }

    #[test]
    fn the_budget_caps_candidates_and_halving_needs_rungs() {
        let s = spec(json!({
            "candidates": [{"base_model": "a"}, {"base_model": "b"}, {"base_model": "c"}],
            "budget": {"max_candidates": 2}
        }))
        .unwrap();
        let names: Vec<String> = s
            .expand(64)
            .unwrap()
            .into_iter()
            .map(|c| c.base_model)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let (c, _) = code(spec(json!({"candidates": [], "early_stop": "halving"})).unwrap_err());
        assert_eq!(c, "invalid_rungs");
        let (c, _) = code(
            spec(json!({"candidates": [], "early_stop": "halving", "rungs": [2, 2]})).unwrap_err(),
        );
        assert_eq!(c, "invalid_rungs");
        let (c, d) = code(spec(json!({"candidates": [], "metrc": "accuracy"})).unwrap_err());
        assert_eq!(c, "invalid_spec");
        assert!(d.contains("metrc"), "{d}");
        let (c, _) = code(
            spec(json!({"candidates": []}))
                .unwrap()
                .expand(64)
                .unwrap_err(),
        );
        assert_eq!(c, "empty_candidates");
    }
}
