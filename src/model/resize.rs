//! Changing the input size a model takes natively: its position embeddings
//! are resampled once, exactly as `transformers` interpolates them on the
//! fly at that size (bicubic, align_corners false, in fp32; antialiased for
//! `dinov2_with_registers`), and `image_size` is updated. So the model at
//! the new size starts out giving the outputs `transformers` gives for the
//! original checkpoint with `interpolate_pos_encoding=True`, and a saved
//! copy runs at the new size in `transformers` with no interpolation.
//!
//! The convolutional networks (ConvNeXt, ResNet) take any size that fits
//! their downsampling, and Swin any size without absolute position
//! embeddings: only `image_size` in the configuration changes (Swin's
//! absolute ones are resampled, see [`super::swin::set_image_size`]).

use tch::{Kind, Tensor};

use super::error::{ModelError, Result};
use super::{Model, ModelConfig, PositionTable};

/// Checks that `size` is a usable square input side for `config`.
pub fn check_image_size(config: &ModelConfig, size: i64) -> Result<()> {
    check_patch_grid(size, config.patch_size())?;
    let min = config.min_input_size();
    if size < min {
        return Err(ModelError::InvalidInput(format!(
            "`image_size` {size} is below the model's minimum input side {min}"
        )));
    }
    config
        .family()
        .check_input_size(size, size)
        .map_err(ModelError::InvalidInput)
}

/// `size` must be a positive multiple of the patch size; the error names
/// the nearest sizes that are.
pub fn check_patch_grid(size: i64, patch: i64) -> Result<()> {
    if size < patch || size % patch != 0 {
        let below = (size / patch * patch).max(patch);
        let above = (size / patch + 1) * patch;
        let suggestion = if below == above || size < patch {
            format!("e.g. {above}")
        } else {
            format!("e.g. {below} or {above}")
        };
        return Err(ModelError::InvalidInput(format!(
            "`image_size` {size} is not a multiple of the model's patch size {patch} ({suggestion})"
        )));
    }
    Ok(())
}

impl Model {
    /// Makes the model take `size` x `size` inputs natively. A no-op at its own size.
    pub fn set_image_size(&mut self, size: i64) -> Result<()> {
        check_image_size(&self.config, size)?;
        if size == self.config.image_size() {
            return Ok(());
        }
        match self.config.family().position_table() {
            PositionTable::None => {}
            PositionTable::ClassTokenGrid { antialias } => {
                self.resample_positions(size, antialias)?
            }
            PositionTable::Grid => super::swin::resample_absolute_positions(self, size)?,
        }
        self.config.family_mut().set_image_size(size);
        Ok(())
    }

    /// Resamples `{prefix}.embeddings.position_embeddings` (a class token,
    /// then a square grid) to the grid of a `size` input.
    fn resample_positions(&mut self, size: i64, antialias: bool) -> Result<()> {
        let name = format!(
            "{}.embeddings.position_embeddings",
            self.config.backbone_prefix()
        );
        let mut var = self.vs.variables().remove(&name).ok_or_else(|| {
            ModelError::UnsupportedCheckpoint(format!("the model has no `{name}`"))
        })?;
        let (_, tokens, dim) = var.size3()?;
        let old_grid = ((tokens - 1) as f64).sqrt().round() as i64;
        if old_grid * old_grid + 1 != tokens {
            return Err(ModelError::UnsupportedCheckpoint(format!(
                "`{name}` has {tokens} positions, not a square grid plus a class token"
            )));
        }
        let new_grid = size / self.config.patch_size();
        let resampled = tch::no_grad(|| {
            let grid = var
                .narrow(1, 1, tokens - 1)
                .reshape([1, old_grid, old_grid, dim])
                .permute([0, 3, 1, 2])
                .to_kind(Kind::Float);
            let grid = if antialias {
                grid.internal_upsample_bicubic2d_aa([new_grid, new_grid], false, None, None)
            } else {
                grid.upsample_bicubic2d([new_grid, new_grid], false, None, None)
            };
            let grid = grid.to_kind(var.kind()).permute([0, 2, 3, 1]).reshape([
                1,
                new_grid * new_grid,
                dim,
            ]);
            Tensor::cat(&[var.narrow(1, 0, 1), grid], 1)
        });
        var.set_data(&resampled);
        tracing::info!(tensor = %name, from = old_grid, to = new_grid, "position embeddings resampled");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_patch_grid;

    #[test]
    fn off_grid_sizes_name_the_nearest_valid_ones() {
        assert!(check_patch_grid(224, 16).is_ok());
        let err = |size, patch| check_patch_grid(size, patch).unwrap_err().to_string();
        assert!(
            err(230, 14).contains("(e.g. 224 or 238)"),
            "{}",
            err(230, 14)
        );
        // Below one patch there is no smaller valid size to suggest.
        assert!(err(8, 16).contains("(e.g. 16)"), "{}", err(8, 16));
        assert!(err(0, 16).contains("(e.g. 16)"), "{}", err(0, 16));
    }
}
