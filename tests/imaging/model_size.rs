//! Preprocessors that leave the output size open (`do_resize: false`, a
//! shortest-edge resize without a centre crop) would give every image its
//! own size, which no batch can hold and no ViT takes: `Pipeline::for_model`
//! resizes such images to the model's `image_size` squared, and keeps fixed
//! sizes as the preprocessor says.

use std::io::Cursor;

use vitrine::imaging::{Pipeline, PreprocessorConfig};

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn config(json: &str) -> PreprocessorConfig {
    serde_json::from_str(json).unwrap()
}

const OPEN: [&str; 3] = [
    r#"{"do_resize": false}"#,
    r#"{"size": {"shortest_edge": 40}}"#,
    r#"{"size": {"shortest_edge": 40}, "do_center_crop": false, "crop_size": {"height": 32, "width": 32}}"#,
];

#[test]
fn open_output_sizes_become_the_model_size() {
    let images = [png(50, 30), png(31, 77), png(48, 48)];
    let refs: Vec<&[u8]> = images.iter().map(|b| b.as_slice()).collect();
    for json in OPEN {
        let cfg = config(json);
        // As the preprocessor says: one size per image, no batch.
        let raw = Pipeline::from_preprocessor(&cfg, None);
        assert_eq!(raw.output_size(), None, "{json}");
        assert!(raw.batch_from_bytes(&refs).is_err(), "{json}");

        let p = Pipeline::for_model(&cfg, 48);
        assert_eq!(p.output_size(), Some((48, 48)), "{json}");
        for bytes in &refs {
            let t = p.tensor_from_bytes(bytes).unwrap();
            assert_eq!(t.size(), [3, 48, 48], "{json}");
        }
        let batch = p.batch_from_bytes(&refs).unwrap();
        assert_eq!(batch.size(), [3, 3, 48, 48], "{json}");
        // A square image at the model size goes through untouched: the
        // values are the pixels, rescaled and normalised.
        let t = p.tensor_from_bytes(&images[2]).unwrap();
        let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        let expected = ((7.0 * 10.0) / 255.0 - 0.5) / 0.5; // x = 10, y = 0, red
        assert!((v[10] - expected).abs() < 1e-5, "{json}: {}", v[10]);
    }
}

#[test]
fn fixed_output_sizes_are_kept() {
    for (json, hw) in [
        ("{}", (224, 224)),
        (r#"{"size": {"height": 30, "width": 40}}"#, (30, 40)),
        (
            r#"{"size": {"shortest_edge": 40}, "do_center_crop": true, "crop_size": {"height": 32, "width": 32}}"#,
            (32, 32),
        ),
    ] {
        let p = Pipeline::for_model(&config(json), 48);
        assert_eq!(p.output_size(), Some(hw), "{json}");
        let t = p.tensor_from_bytes(&png(50, 30)).unwrap();
        assert_eq!(t.size(), [3, i64::from(hw.0), i64::from(hw.1)], "{json}");
    }
}
