//! One prediction, from the request to its answer: the one path of
//! `/predict`, `/models/{id}/predict` and `vitrine predict`. Its steps,
//! cheapest refusal first:
//!
//! 1. the number of images (`--max-images-per-request`) and the options;
//! 2. every image's header, read without decoding: its file size
//!    (`--max-image-file-bytes`), format, dimensions (`--max-image-pixels`)
//!    and the request's sum of pixels (`--max-request-pixels`);
//! 3. the model (an unknown one is a 404, no model yet a 409);
//! 4. a lease from the server's [`DecodeBudget`] for what the decode will
//!    hold ([`DecodePlan`]), taken with `try_acquire`: a busy budget is a
//!    429 at once, never a queue of decodes;
//! 5. the arrival ticket (batching engines wait for announced requests),
//!    then the decode on the blocking pool and the forward pass;
//! 6. the answer: ranked labels (`top_k`) or thresholded ones.
//!
//! So 10,000 tiny images or sixty 8000x8000 WebPs are refused before a
//! pixel is decoded, and those accepted decode within the budget.
//!
//! The order of 4 and 5 is held by types, not by the order of lines:
//! images decode only through an [`Admitted`] request, which holds the
//! lease and the arrival ticket, and the engines take pixels only as
//! [`Decoded`], which carries that ticket on to them. An engine gathering
//! a batch thus always knows of a request whose images are decoding.

use std::sync::Arc;

use tch::Tensor;

use crate::artifacts::Artifacts;
use crate::budget::{DecodeBudget, Lease};
use crate::db::Db;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::imaging::decode::{header, Header};
use crate::imaging::{ImageError, Pipeline};
use crate::serve::engine::{ArrivalTicket, Output};
use crate::serve::output::{self, ImageResult, OutputOptions, ScoreCalibration};
use crate::serve::thumbnails::blocking;
use crate::serve::{registry, Inference, ModelInfo};
use crate::train::calibrate::scaled;

/// An uploaded image and the name errors call it by.
pub struct Upload {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The per-request caps, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RequestCaps {
    pub max_images: usize,
    pub max_request_pixels: u64,
    pub max_image_pixels: u64,
    pub max_image_file_bytes: u64,
}

impl RequestCaps {
    /// No caps beyond the pipeline's own decoding limits: `vitrine predict`
    /// runs on files its own user chose.
    pub const UNBOUNDED: Self = Self {
        max_images: usize::MAX,
        max_request_pixels: u64::MAX,
        max_image_pixels: u64::MAX,
        max_image_file_bytes: u64::MAX,
    };
}

/// Which model answers.
pub enum ModelSource<'a> {
    /// A registered model: `selector` is an id or an alias, `None` the
    /// default (the `production` alias, else the newest model).
    Registered {
        db: &'a Db,
        artifacts: &'a Artifacts,
        selector: Option<String>,
    },
    /// A model directory in the Hugging Face layout, or a Hub id
    /// (`vitrine predict`).
    Local(&'a str),
}

/// A request to classify `images` with the model `model` names.
pub struct PredictRequest<'a> {
    pub model: ModelSource<'a>,
    pub images: Vec<Upload>,
    pub options: OutputOptions,
}

/// The answer: the model that answered, one result per image, and the
/// raw logits `[n, labels]` they were read from.
pub struct Predicted {
    pub model: String,
    pub results: Vec<ImageResult>,
    pub logits: Tensor,
    /// Whether the scores are calibrated, and if not, why.
    pub calibration: ScoreCalibration,
}

/// What a request is held to: its caps, and the decoding memory it draws
/// from.
pub struct PredictContext<'a> {
    pub budget: &'a DecodeBudget,
    pub caps: RequestCaps,
}

/// Refuses a request carrying `n` images when that is more than the cap.
/// Readers call it as images arrive, so a request of 10,000 parts is
/// refused at the 65th, before the rest is even read.
pub fn check_count(n: usize, caps: &RequestCaps) -> AppResult<()> {
    if n > caps.max_images {
        return Err(AppError::client(
            ErrorKind::TooLarge,
            "too_many_images",
            format!(
                "a request may carry at most {} images (--max-images-per-request); send the \
                 rest in further requests",
                caps.max_images
            ),
        ));
    }
    Ok(())
}

impl Inference {
    /// Classifies `req.images` (see the module doc for the order of steps).
    pub async fn predict(
        &self,
        cx: PredictContext<'_>,
        req: PredictRequest<'_>,
    ) -> AppResult<Predicted> {
        check_options(&req.options)?;
        let (model, decoded) = self.admit(cx, req.model, req.images).await?;
        let logits = self.run(&model, decoded, Output::Logits).await?;
        Ok(answer(&model, logits, &req.options))
    }

    /// Steps 1 to 5 up to the pixels: the images' count and headers, the
    /// model, the decoding lease and the arrival ticket, the decode.
    pub(super) async fn admit(
        &self,
        cx: PredictContext<'_>,
        source: ModelSource<'_>,
        images: Vec<Upload>,
    ) -> AppResult<(Arc<ModelInfo>, Decoded)> {
        let headers = checked_images(&images, &cx.caps)?;
        let model = self.resolve(source).await?;
        let admitted = Admitted::new(self, &model, &headers, cx.budget)?;
        let decoded = admitted.decode(images).await?;
        Ok((model, decoded))
    }

    pub(crate) async fn resolve(&self, source: ModelSource<'_>) -> AppResult<Arc<ModelInfo>> {
        match source {
            ModelSource::Registered {
                db,
                artifacts,
                selector,
            } => {
                self.registry
                    .resolve(db, artifacts, selector.as_deref())
                    .await
            }
            ModelSource::Local(source) => registry::load_local(source).await,
        }
    }

    /// Runs decoded images through `model` on the least busy device in
    /// service; returns logits `[n, labels]` or features `[n, F]`. The
    /// arrival ticket travels with the job and is withdrawn when an engine
    /// receives it.
    pub(super) async fn run(
        &self,
        model: &ModelInfo,
        decoded: Decoded,
        output: Output,
    ) -> AppResult<Tensor> {
        let Decoded { pixels, ticket } = decoded;
        self.infer(
            model.id.clone(),
            model.dir.clone(),
            pixels,
            Some(ticket),
            output,
        )
        .await
    }
}

/// A request the engines know is coming, with its decoding memory leased:
/// the only way to decode a request's images.
struct Admitted {
    ticket: ArrivalTicket,
    lease: Lease,
    plan: DecodePlan,
    pipeline: Pipeline,
}

impl Admitted {
    /// Leases what decoding `headers` for `model` holds (a 429 when the
    /// budget is busy), then announces the request to the engines.
    fn new(
        inference: &Inference,
        model: &ModelInfo,
        headers: &[Header],
        budget: &DecodeBudget,
    ) -> AppResult<Self> {
        let plan = DecodePlan::new(headers, &model.pipeline, budget.total());
        let lease = budget.try_acquire(plan.bytes, "this request's images")?;
        Ok(Self {
            ticket: inference.announce(),
            lease,
            plan,
            pipeline: model.pipeline.clone(),
        })
    }

    /// Decodes the images on the blocking pool, holding the lease until
    /// they are one tensor; the ticket goes on with the pixels.
    async fn decode(self, images: Vec<Upload>) -> AppResult<Decoded> {
        let Self {
            ticket,
            lease,
            plan,
            pipeline,
        } = self;
        let pixels = blocking(move || {
            let _lease = lease;
            decode(&pipeline, &images, plan.parallel)
        })
        .await??;
        Ok(Decoded { pixels, ticket })
    }
}

/// A request's preprocessed images `[n, 3, H, W]`, still announced to the
/// engines.
pub(super) struct Decoded {
    pixels: Tensor,
    ticket: ArrivalTicket,
}

/// Ranked or thresholded labels: calibrated scores (and the thresholds
/// tuned on them) unless the client asked for raw ones or the model has
/// no calibration; raw scores with the thresholds on raw scores.
fn answer(model: &ModelInfo, logits: Tensor, options: &OutputOptions) -> Predicted {
    let (scores_of, thresholds, calibration) = match model.calibration() {
        Some(c) if !options.raw => (
            scaled(&logits, &c.temperatures),
            c.thresholds.as_deref(),
            ScoreCalibration::Temperature,
        ),
        Some(_) => (
            logits.shallow_clone(),
            model.thresholds.as_deref(),
            ScoreCalibration::Off,
        ),
        None => (
            logits.shallow_clone(),
            model.thresholds.as_deref(),
            ScoreCalibration::None,
        ),
    };
    let results = output::format(&scores_of, model.task, &model.labels, thresholds, options);
    Predicted {
        model: model.id.clone(),
        results,
        logits,
        calibration,
    }
}

/// Steps 1 and 2: the count and every image's header.
fn checked_images(images: &[Upload], caps: &RequestCaps) -> AppResult<Vec<Header>> {
    check_count(images.len(), caps)?;
    if images.is_empty() {
        return Err(AppError::bad_request(
            "no_image",
            "send at least one image (multipart `image` parts, a raw image/* body, or JSON `images`)",
        ));
    }
    checked_headers(images, caps)
}

fn check_options(o: &OutputOptions) -> AppResult<()> {
    if o.top_k == Some(0) {
        return Err(AppError::bad_request(
            "invalid_query",
            "`top_k` must be at least 1",
        ));
    }
    if let Some(t) = o.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(AppError::bad_request(
                "invalid_query",
                "`threshold` must be in [0, 1]",
            ));
        }
    }
    Ok(())
}

/// Every image's header, read without decoding, checked against the
/// per-image caps and the request's pixel budget.
pub(crate) fn checked_headers(images: &[Upload], caps: &RequestCaps) -> AppResult<Vec<Header>> {
    let mut total_pixels = 0u64;
    let mut out = Vec::with_capacity(images.len());
    for u in images {
        let len = u.bytes.len() as u64;
        if len > caps.max_image_file_bytes {
            return Err(AppError::client(
                ErrorKind::TooLarge,
                "image_file_too_large",
                format!(
                    "{}: {len} bytes, more than the limit of {} bytes (--max-image-file-bytes)",
                    u.name, caps.max_image_file_bytes
                ),
            ));
        }
        let undecodable = |e: &dyn std::fmt::Display| {
            AppError::unprocessable("undecodable_image", format!("{}: {e}", u.name))
        };
        let h = header(&u.bytes).map_err(|e| undecodable(&e))?;
        if h.pixels() > caps.max_image_pixels {
            let e = crate::imaging::ImageError::TooLarge {
                width: h.width,
                height: h.height,
                max_pixels: caps.max_image_pixels,
            };
            return Err(undecodable(&e));
        }
        total_pixels += h.pixels();
        if total_pixels > caps.max_request_pixels {
            return Err(AppError::client(
                ErrorKind::TooLarge,
                "too_many_pixels",
                format!(
                    "the request's images hold more than {} pixels in all \
                     (--max-request-pixels); send fewer or smaller images per request",
                    caps.max_request_pixels
                ),
            ));
        }
        out.push(h);
    }
    Ok(out)
}

/// How a request's images are decoded: `parallel` at once (at most the
/// decoding pool's threads, fewer when the largest images would not fit
/// in the budget together), and the bytes that may take at the peak: the
/// `parallel` largest decodes plus the batch of preprocessed floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePlan {
    pub parallel: usize,
    pub bytes: u64,
}

impl DecodePlan {
    pub fn new(headers: &[Header], pipeline: &Pipeline, budget_total: u64) -> Self {
        let (h, w) = pipeline.output_size().unwrap_or((384, 384));
        let batch = headers.len() as u64 * 3 * u64::from(h) * u64::from(w) * 4;
        let mut largest: Vec<u64> = headers.iter().map(|h| h.decode_bytes).collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        let mut parallel = rayon::current_num_threads().clamp(1, largest.len().max(1));
        let peak = |p: usize| batch + largest.iter().take(p).sum::<u64>();
        while parallel > 1 && peak(parallel) > budget_total {
            parallel -= 1;
        }
        Self {
            parallel,
            bytes: peak(parallel),
        }
    }
}

/// The images as one `[n, 3, H, W]` tensor, through the pipeline's own
/// batch path, `parallel` at a time (as the lease was sized); an image
/// that does not decode is named.
pub(crate) fn decode(pipeline: &Pipeline, images: &[Upload], parallel: usize) -> AppResult<Tensor> {
    let mut batches = Vec::with_capacity(images.len().div_ceil(parallel.max(1)));
    for chunk in images.chunks(parallel.max(1)) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|u| u.bytes.as_slice()).collect();
        let batch = pipeline.batch_from_bytes(&bytes).map_err(|e| match e {
            ImageError::InBatch { index, source } => AppError::unprocessable(
                "undecodable_image",
                format!("{}: {source}", chunk[index].name),
            ),
            // Every model's pipeline has one output size
            // (`Pipeline::for_model`); should that ever not hold, this is
            // our error.
            ImageError::MixedSizes(_) => AppError::Internal(anyhow::anyhow!("{e}")),
            other => AppError::unprocessable("undecodable_image", other.to_string()),
        })?;
        batches.push(batch);
    }
    Ok(match batches.len() {
        1 => batches.remove(0),
        _ => Tensor::cat(&batches, 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(decode_bytes: u64) -> Header {
        Header {
            format: image::ImageFormat::Png,
            width: 1,
            height: 1,
            decode_bytes,
        }
    }

    fn caps() -> RequestCaps {
        RequestCaps {
            max_images: 3,
            max_request_pixels: 100,
            max_image_pixels: 60,
            max_image_file_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_plan_decodes_as_many_at_once_as_the_budget_allows() {
        let pipeline = Pipeline::for_model(&Default::default(), 10);
        let (height, width) = pipeline.output_size().unwrap();
        let batch = 3 * 3 * u64::from(height) * u64::from(width) * 4;
        let headers = [h(500), h(1_000), h(300)];
        let threads = rayon::current_num_threads();
        let roomy = DecodePlan::new(&headers, &pipeline, 1 << 30);
        assert_eq!(roomy.parallel, threads.min(3));
        let largest = [1_000, 500, 300];
        let want: u64 = largest.iter().take(roomy.parallel).sum();
        assert_eq!(roomy.bytes, batch + want);
        // Only the largest fits: one at a time, and the lease says so.
        let tight = DecodePlan::new(&headers, &pipeline, batch + 1_200);
        assert_eq!((tight.parallel, tight.bytes), (1, batch + 1_000));
    }

    #[test]
    fn counts_and_pixels_are_checked_from_headers() {
        let png = |w, h| {
            let mut out = std::io::Cursor::new(Vec::new());
            image::RgbImage::new(w, h)
                .write_to(&mut out, image::ImageFormat::Png)
                .unwrap();
            Upload {
                name: format!("{w}x{h}"),
                bytes: out.into_inner(),
            }
        };
        let code = |r: AppResult<Vec<Header>>| match r {
            Err(AppError::Client { code, .. }) => code,
            other => panic!("{:?}", other.map(|v| v.len())),
        };
        assert!(check_count(3, &caps()).is_ok());
        assert!(matches!(
            check_count(4, &caps()),
            Err(AppError::Client {
                code: "too_many_images",
                ..
            })
        ));
        assert_eq!(
            checked_headers(&[png(5, 10), png(4, 10)], &caps())
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            code(checked_headers(&[png(8, 8)], &caps())),
            "undecodable_image"
        );
        let over = [png(6, 10), png(6, 10)];
        assert_eq!(code(checked_headers(&over, &caps())), "too_many_pixels");
        let junk = Upload {
            name: "junk".into(),
            bytes: b"junk".to_vec(),
        };
        assert_eq!(code(checked_headers(&[junk], &caps())), "undecodable_image");
    }
}
