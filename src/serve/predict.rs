//! One prediction request, step by step, cheapest refusal first:
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
//!    then the decode on the blocking pool and the forward pass.
//!
//! So 10,000 tiny images or sixty 8000x8000 WebPs are refused before a
//! pixel is decoded, and those accepted decode within the budget.

use std::sync::Arc;

use crate::budget::DecodeBudget;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::imaging::decode::{header, Header};
use crate::imaging::Pipeline;
use crate::serve::output::{self, ImageResult, OutputOptions};
use crate::serve::thumbnails::blocking;
use crate::serve::{Inference, ModelInfo};

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

/// A request to classify `images` with the model `selector` names (the
/// default model when `None`).
pub struct PredictRequest {
    pub selector: Option<String>,
    pub images: Vec<Upload>,
    pub options: OutputOptions,
}

/// The answer: the model that answered and one result per image.
pub struct Predicted {
    pub model: String,
    pub results: Vec<ImageResult>,
}

/// What a request needs besides itself: the caps, and where models and
/// decoding memory come from.
pub struct PredictContext<'a> {
    pub db: &'a crate::db::Db,
    pub artifacts: &'a crate::artifacts::Artifacts,
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
        req: PredictRequest,
    ) -> AppResult<Predicted> {
        check_count(req.images.len(), &cx.caps)?;
        if req.images.is_empty() {
            return Err(AppError::bad_request(
                "no_image",
                "send at least one image (multipart `image` parts, a raw image/* body, or JSON `images`)",
            ));
        }
        check_options(&req.options)?;
        let headers = checked_headers(&req.images, &cx.caps)?;
        let model = self
            .registry
            .resolve(cx.db, cx.artifacts, req.selector.as_deref())
            .await?;
        let plan = DecodePlan::new(&headers, &model.pipeline, cx.budget.total());
        let lease = cx.budget.try_acquire(plan.bytes, "this request's images")?;
        let ticket = self.announce();
        let pipeline = model.pipeline.clone();
        let images = req.images;
        let pixels = blocking(move || {
            let _lease = lease; // held until the images are decoded
            decode_all(&pipeline, &images, plan.parallel)
        })
        .await??;
        let logits = self.logits(&model, pixels, ticket).await?;
        Ok(answer(&model, &logits, &req.options))
    }
}

fn answer(model: &Arc<ModelInfo>, logits: &tch::Tensor, options: &OutputOptions) -> Predicted {
    let results = output::format(
        logits,
        model.task,
        &model.labels,
        model.thresholds.as_deref(),
        options,
    );
    Predicted {
        model: model.id.clone(),
        results,
    }
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
fn checked_headers(images: &[Upload], caps: &RequestCaps) -> AppResult<Vec<Header>> {
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

/// Decodes `parallel` images at a time (as the lease was sized); the
/// first failure names its part.
fn decode_all(pipeline: &Pipeline, images: &[Upload], parallel: usize) -> AppResult<tch::Tensor> {
    use rayon::prelude::*;
    let mut tensors: Vec<tch::Tensor> = Vec::with_capacity(images.len());
    for chunk in images.chunks(parallel.max(1)) {
        let decoded: Vec<tch::Tensor> = chunk
            .par_iter()
            .map(|u| {
                pipeline.tensor_from_bytes(&u.bytes).map_err(|e| {
                    AppError::unprocessable("undecodable_image", format!("{}: {e}", u.name))
                })
            })
            .collect::<AppResult<_>>()?;
        tensors.extend(decoded);
    }
    // Every model's pipeline has one output size (`Pipeline::for_model`);
    // should that ever not hold, this is our error, not a panic.
    if let Some(t) = tensors.iter().find(|t| t.size() != tensors[0].size()) {
        return Err(anyhow::anyhow!(
            "preprocessed images differ in shape: {:?} and {:?}",
            tensors[0].size(),
            t.size()
        )
        .into());
    }
    Ok(tch::Tensor::stack(&tensors, 0))
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
