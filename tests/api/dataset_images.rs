//! `GET /datasets/{id}/thumbnails` and `/images/{index}` (the web page's
//! sample images), and the page itself at `/`: public, with its assets'
//! types, while the API beside it keeps its token.

use std::io::{Cursor, Write};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};

use crate::common::{body_bytes, body_json, upload_settled, TestApp};

fn png(w: u32, h: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([shade, 100, 200]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// train/{cat,dog}: 3 images each (40x20); validation/{cat,dog}: 1 each.
fn dataset_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (split, n) in [("train", 3), ("validation", 1)] {
        for (li, label) in ["cat", "dog"].iter().enumerate() {
            for i in 0..n {
                w.start_file(format!("{split}/{label}/{i}.png"), opts)
                    .unwrap();
                w.write_all(&png(40, 20, (li * 100 + i * 10) as u8))
                    .unwrap();
            }
        }
    }
    w.finish().unwrap().into_inner()
}

async fn get(app: &TestApp, uri: &str, token: Option<&str>) -> axum::http::Response<Body> {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    app.send(req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn sample_images_per_class_and_their_thumbnails() {
    let app = TestApp::new().await;
    let (status, record) = upload_settled(&app, &dataset_zip()).await;
    assert!(status.is_success(), "{record}");
    assert_eq!(record["status"], "ready", "{record}");
    let id = record["id"].as_str().unwrap();

    let resp = get(
        &app,
        &format!("/datasets/{id}/thumbnails?per_class=2"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let t = body_json(resp).await;
    let classes = t["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2);
    assert_eq!(classes[0]["label"], "cat");
    assert_eq!(classes[1]["label"], "dog");
    for c in classes {
        let images = c["images"].as_array().unwrap();
        assert_eq!(images.len(), 2, "{c}");
        for im in images {
            assert_eq!(im["split"], "train");
            let file = im["file"].as_str().unwrap();
            assert!(
                file.contains(c["label"].as_str().unwrap()) && file.ends_with(".png"),
                "{file}"
            );
        }
    }
    // All of them: validation images come after the 6 of train.
    let all = body_json(
        get(
            &app,
            &format!("/datasets/{id}/thumbnails?per_class=20"),
            None,
        )
        .await,
    )
    .await;
    let mut indices = Vec::new();
    for c in all["classes"].as_array().unwrap() {
        let images = c["images"].as_array().unwrap();
        assert_eq!(images.len(), 4);
        let val: Vec<_> = images
            .iter()
            .filter(|i| i["split"] == "validation")
            .collect();
        assert_eq!(val.len(), 1);
        assert!(val[0]["index"].as_u64().unwrap() >= 6);
        indices.extend(images.iter().map(|i| i["index"].as_u64().unwrap()));
    }
    indices.sort_unstable();
    assert_eq!(indices, (0..8).collect::<Vec<u64>>(), "each image once");

    // A thumbnail: PNG, shrunk to fit, aspect ratio kept, same colour.
    let index = classes[1]["images"][0]["index"].as_u64().unwrap();
    let resp = get(
        &app,
        &format!("/datasets/{id}/images/{index}?size=16"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/png");
    assert!(resp.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("private"));
    let img = image::load_from_memory(&body_bytes(resp).await)
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (16, 8));
    assert_eq!(img.get_pixel(8, 4).0, [100, 100, 200], "dog/0.png's colour");
    // The default size does not enlarge a 40x20 image.
    let resp = get(&app, &format!("/datasets/{id}/images/{index}"), None).await;
    let img = image::load_from_memory(&body_bytes(resp).await).unwrap();
    assert_eq!((img.width(), img.height()), (40, 20));

    // Refusals.
    for (uri, status, code) in [
        (
            format!("/datasets/{id}/thumbnails?per_class=0"),
            400,
            "invalid_query",
        ),
        (
            format!("/datasets/{id}/thumbnails?per_class=21"),
            400,
            "invalid_query",
        ),
        (
            format!("/datasets/{id}/thumbnails?colour=red"),
            400,
            "invalid_query",
        ),
        (
            format!("/datasets/{id}/images/0?size=2000"),
            400,
            "invalid_query",
        ),
        (format!("/datasets/{id}/images/8"), 404, "not_found"),
        (format!("/datasets/{id}/images/-1"), 404, "not_found"),
        (
            "/datasets/not-a-uuid/thumbnails".to_string(),
            404,
            "not_found",
        ),
        (
            "/datasets/0193f000-0000-7000-8000-000000000000/images/0".to_string(),
            404,
            "not_found",
        ),
    ] {
        let resp = get(&app, &uri, None).await;
        assert_eq!(resp.status().as_u16(), status, "{uri}");
        let p = body_json(resp).await;
        assert_eq!(p["code"], code, "{uri}: {p}");
    }
}

/// The page and its assets need no token; the API and the images do.
#[tokio::test]
async fn the_page_is_public_and_the_images_need_the_token() {
    let app = TestApp::with_config(|c| c.api_token = Some("t0ken".into())).await;
    let resp = get(&app, "/", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = String::from_utf8(body_bytes(resp).await).unwrap();
    assert!(html.contains("/ui/app.js"), "{html}");
    for (path, kind) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/pages/job.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let resp = get(&app, path, None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], kind, "{path}");
        let etag = resp.headers()[header::ETAG].clone();
        let again = app
            .send(
                Request::get(path)
                    .header(header::IF_NONE_MATCH, etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    let missing = get(&app, "/ui/nope.js", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(missing).await["code"], "not_found");

    let id = "0193f000-0000-7000-8000-000000000000";
    for uri in [
        format!("/datasets/{id}/thumbnails"),
        format!("/datasets/{id}/images/0"),
    ] {
        assert_eq!(
            get(&app, &uri, None).await.status(),
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            get(&app, &uri, Some("t0ken")).await.status(),
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
}
