//! The learning task a dataset, a job and a trained model share. It sits at
//! the bottom of the module graph so that every layer, the store included,
//! names it as a type rather than a string.

use serde::{Deserialize, Serialize};

/// Single label per image (softmax) or any number of labels (sigmoid).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum Task {
    MultiClass,
    MultiLabel,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::MultiClass => "multi_class",
            Task::MultiLabel => "multi_label",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "multi_class" => Some(Task::MultiClass),
            "multi_label" => Some(Task::MultiLabel),
            _ => None,
        }
    }
}
