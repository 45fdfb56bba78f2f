//! TEMPORARY stub until the data branch merges.
#![allow(dead_code, unused_variables)]
pub struct DatasetRecord {
    pub id: String,
    pub path: String,
    pub task: String,
    pub summary: String,
}
impl DatasetRecord {
    pub fn summary_json(&self) -> String {
        self.summary.clone()
    }
}
pub async fn get(db: &sqlx::SqlitePool, id: &str) -> sqlx::Result<Option<DatasetRecord>> {
    todo!()
}
