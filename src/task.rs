//! The learning task a dataset, a job and a trained model share. It sits at
//! the bottom of the module graph so that every layer, the store included,
//! names it as a type rather than a string.

use serde::{Deserialize, Serialize};

/// Single label per image (softmax) or any number of labels (sigmoid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
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

// Stored as its snake_case name in a TEXT column. Written by hand because
// sqlx's derive does not reach the `Any` driver the store runs on.
impl sqlx::Type<sqlx::Any> for Task {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <&str as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for Task {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Task {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
        Task::parse(name).ok_or_else(|| format!("unknown task `{name}`").into())
    }
}
