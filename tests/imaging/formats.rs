//! What users upload, decoded as `transformers.image_utils.load_image` does
//! (EXIF transpose, then PIL's `convert("RGB")`): Python writes every format
//! and colour type vitrine accepts and the pixels `load_image` returns;
//! `imaging::decode` must give the same size and orientation, the same
//! pixels for lossless formats, and pixels within a few levels for lossy
//! ones (zune-jpeg and libjpeg-turbo differ in IDCT and upsampling). What
//! `load_image` refuses (truncated files, non-images) vitrine refuses too.

use vitrine::imaging::{decode, DecodeLimits};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    width: u32,
    height: u32,
    lossy: bool,
    refused: bool,
}

#[test]
fn every_format_decodes_as_transformers_load_image_does() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/decode_formats.py"
    );
    crate::common::run_python(script, &[dir.path().to_str().unwrap()], dir.path());
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(dir.path().join(&case.name)).unwrap();
        let decoded = decode(&bytes, &DecodeLimits::default());
        // Dataset validation's check: the same refusals and the same size
        // as shown (orientation applied), without turning the pixels.
        let verified = vitrine::imaging::decode::verify(&bytes, &DecodeLimits::default());
        match (&verified, &decoded) {
            (Ok(size), Ok(img)) if *size == img.dimensions() => {}
            (Err(_), Err(_)) => {}
            _ => failures.push(format!(
                "{}: verify {:?}, decode {:?}",
                case.name,
                verified.as_ref().map_err(|e| e.to_string()),
                decoded
                    .as_ref()
                    .map(|i| i.dimensions())
                    .map_err(|e| e.to_string())
            )),
        }
        if case.refused {
            match decoded {
                Ok(img) => failures.push(format!(
                    "{}: decoded ({:?}), load_image refuses it",
                    case.name,
                    img.dimensions()
                )),
                Err(e) => println!("{:>22}: refused: {e}", case.name),
            }
            continue;
        }
        let img = match decoded {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        if img.dimensions() != (case.width, case.height) {
            failures.push(format!(
                "{}: {:?}, load_image gives {}x{}",
                case.name,
                img.dimensions(),
                case.width,
                case.height
            ));
            continue;
        }
        let want = std::fs::read(dir.path().join(format!("{}.rgb", case.name))).unwrap();
        let got = img.as_raw();
        let (mut max, mut sum) = (0u8, 0u64);
        for (a, b) in got.iter().zip(&want) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            sum += u64::from(d);
        }
        let mean = sum as f64 / want.len() as f64;
        println!("{:>22}: max {max:>3} mean {mean:.3}", case.name);
        // Lossy: decoders differ by a few levels here and there; a wrong
        // orientation or colour conversion is off by tens on average.
        let ok = if case.lossy {
            max <= 12 && mean < 1.0
        } else {
            max == 0
        };
        if !ok {
            failures.push(format!("{}: max {max} mean {mean:.3}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "differs from load_image: {failures:#?}"
    );
}
