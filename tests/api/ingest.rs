use serde_json::Value;

use crate::helpers::{spawn_app, ADMIN_KEY};

/// `ragd ingest` walks a folder, uploads through the API and waits for the
/// documents; hidden files are skipped and unsupported ones reported.
#[tokio::test]
async fn ingest_command_uploads_a_folder() {
    let app = spawn_app().await;
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(folder.path().join("sub")).unwrap();
    std::fs::write(folder.path().join("lighthouse.txt"), "The lighthouse keeper lights the lamp at dusk.").unwrap();
    std::fs::write(folder.path().join("sub/tides.md"), "# Tides\n\nTides are caused by the gravity of the moon.").unwrap();
    std::fs::write(folder.path().join(".secret"), "never uploaded").unwrap();
    std::fs::write(folder.path().join("blob.bin"), [0u8, 1, 2, 3, 255, 254, 0, 7]).unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(["ingest", "--collection", "cli", "--create", "--server", &app.address])
        .env("RAGD_API_KEY", ADMIN_KEY)
        .arg(folder.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 ready, 0 failed, 1 rejected"), "{stdout}");
    assert!(stderr.contains("blob.bin"), "the rejected file is named: {stderr}");

    let collection: Value = app.get("/v1/collections/cli").await.json().await.unwrap();
    assert_eq!(collection["stats"]["documents"]["total"], 2, "{collection}");
    assert_eq!(collection["stats"]["documents"]["ready"], 2);
}
