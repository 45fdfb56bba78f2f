//! The OpenAPI document, derived from the handlers and types, served at
//! `/openapi.json` (its page, `/docs`, is served with the web page).

use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "vitrine", description = "Fine-tune Vision Transformers and serve their predictions."),
    paths(
        super::health::healthz, super::health::readyz, super::health::metrics,
        super::jobs::create_job, super::jobs::list_jobs, super::jobs::get_job,
        super::jobs::cancel_job, super::jobs::job_events,
        super::sweeps::create_sweep, super::sweeps::list_sweeps, super::sweeps::get_sweep,
        super::sweeps::cancel_sweep, super::sweeps::sweep_events,
        super::predict::predict_default, super::predict::predict_named,
        super::explain::explain_default, super::explain::explain_named,
        super::embed::embed_default, super::embed::embed_named,
        super::models::list_models, super::models::get_model, super::models::delete_model,
        super::models::set_alias, super::models::download_model,
        super::datasets::upload_dataset, super::datasets::get_dataset, super::datasets::list_datasets,
        super::dataset_images::thumbnails, super::dataset_images::image,
        super::datasets::dataset_events,
        super::audits::start_audit, super::audits::get_audit, super::audits::audit_csv,
        super::audits::audit_events,
    ),
    components(schemas(
        crate::error::Problem,
        crate::jobs::view::JobView, crate::train::config::JobConfig,
        crate::train::config::Mode, crate::train::config::Precision,
        crate::store::jobs::JobStatus, crate::task::Task,
        crate::train::EpochMetrics, crate::train::TrainEvent,
        super::jobs::CreateJob, super::sweeps::CreateSweep,
        crate::sweeps::spec::SweepSpec, crate::train::config::SelectionMetric,
        crate::sweeps::spec::Budget, crate::sweeps::spec::EarlyStop,
        crate::sweeps::view::SweepView, crate::sweeps::view::LeaderboardRow,
        super::predict::PredictJson, super::predict::PredictResponse,
        super::explain::ExplainResponse, super::explain::LabelExplanation, super::explain::CompletenessView,
        crate::explain::Method,
        super::embed::EmbedJson, super::embed::EmbedResponse,
        crate::serve::output::Prediction, crate::serve::output::ImageResult,
        super::models::ModelView, super::models::SetAlias,
        super::datasets::DatasetView, crate::data::DatasetSummary,
        crate::datasets::record::DatasetStatus, crate::data::progress::ValidationProgress,
        super::datasets::DatasetList, super::datasets::DatasetUpload,
        super::datasets::DatasetListItem, crate::datasets::record::DatasetCounts,
        super::dataset_images::Thumbnails, super::dataset_images::ClassSamples,
        super::dataset_images::SampleImage,
        crate::audit::AuditRequest, crate::audit::AuditView, crate::audit::service::AuditStatus,
        crate::audit::run::AuditProgress, crate::audit::report::AuditFindings,
        crate::audit::report::LabelIssue, crate::audit::report::DuplicateGroup,
        crate::audit::report::ImageRef, crate::audit::report::Outlier,
        crate::audit::balance::ClassBalance,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "datasets", description = "Labelled image archives, validated in the background"),
        (name = "jobs", description = "Fine-tuning jobs: submit, follow, cancel"),
        (name = "sweeps", description = "Hyper-parameter sweeps: candidates, halving, leaderboard, winner"),
        (name = "predict", description = "Classify images"),
        (name = "models", description = "Trained models and their aliases"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serialises");
    json.push('\n');
    json
}

/// `/openapi.json`; its page, `/docs`, is one of the web page's files
/// (`http/web.rs`).
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
