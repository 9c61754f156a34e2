//! API keys, roles, tenants, document ACLs, limits and the audit log, seen
//! from outside: nothing of another tenant, and nothing of a document its
//! ACL hides, may appear in any answer.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, client_with_key, spawn_app, spawn_app_with, KeyedClient, TestApp, ADMIN_KEY,
};

async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn ids(items: &Value, field: &str) -> BTreeSet<String> {
    items.as_array().unwrap().iter().map(|item| item[field].as_str().unwrap().to_owned()).collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn every_route_but_health_needs_a_valid_key() {
    let app = spawn_app().await;
    let anonymous = reqwest::Client::new();
    assert_eq!(anonymous.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(anonymous.get(app.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);

    let routes = [
        ("GET", "/v1/collections"),
        ("POST", "/v1/collections"),
        ("GET", "/v1/models"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/batches/0190f5c2-7a6e-7b1c-9d2e-3f4a5b6c7d8e"),
    ];
    let forged = format!("ragd_{}_{}", "0".repeat(32), "ab".repeat(32));
    for (method, path) in routes {
        for authorization in [
            None,
            Some("Basic YWRtaW46YWRtaW4="),
            Some("Bearer"),
            Some("Bearer nope"),
            Some(&*format!("Bearer {forged}")),
        ] {
            let mut request = anonymous.request(method.parse().unwrap(), app.url(path)).json(&json!({}));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            let challenge =
                response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                challenge.as_deref(),
                Some("Bearer realm=\"ragd\""),
                "{method} {path} with {authorization:?}"
            );
            let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
            assert_eq!(problem["code"], "unauthenticated");
        }
    }

    // Revoked and expired keys stop working.
    let (id, key) = app.create_key(json!({"name": "soon revoked", "role": "read"})).await;
    assert_eq!(app.as_key(&key).get("/v1/collections").await.status(), StatusCode::OK);
    assert_eq!(app.delete(&format!("/v1/keys/{id}")).await.status(), StatusCode::NO_CONTENT);
    let problem =
        assert_problem(app.as_key(&key).get("/v1/collections").await, StatusCode::UNAUTHORIZED).await;
    assert!(problem["detail"].as_str().unwrap().contains("revoked"), "{problem}");
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (_, key) = app.create_key(json!({"name": "short lived", "role": "read", "expires_at": soon})).await;
    assert_eq!(app.as_key(&key).get("/v1/collections").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let problem =
        assert_problem(app.as_key(&key).get("/v1/collections").await, StatusCode::UNAUTHORIZED).await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");
    let past = app
        .post_json("/v1/keys", &json!({"name": "x", "role": "read", "expires_at": "2001-01-01T00:00:00Z"}))
        .await;
    assert_problem(past, StatusCode::BAD_REQUEST).await;

    // Keys never reach the log.
    assert!(!app.log().contains(&key) && !app.log().contains(ADMIN_KEY), "a key was logged");
}

#[tokio::test]
async fn roles_bound_what_a_key_may_do() {
    let app = spawn_app().await;
    let (_, admin) = app.create_key(json!({"name": "acme admin", "role": "admin", "tenant": "acme"})).await;
    let admin = app.as_key(&admin);
    let created = admin.post_json("/v1/keys", &json!({"name": "acme writer", "role": "write"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!((created["tenant"].as_str(), created["role"].as_str()), (Some("acme"), Some("write")));
    let writer = app.as_key(created["key"].as_str().unwrap());
    let created: Value = admin
        .post_json("/v1/keys", &json!({"name": "acme reader", "role": "read"}))
        .await
        .json()
        .await
        .unwrap();
    let reader = app.as_key(created["key"].as_str().unwrap());

    // A write key writes, and cannot manage keys or read the audit log.
    let c = writer.post_json("/v1/collections", &json!({"name": "notes"})).await;
    assert_eq!(c.status(), StatusCode::CREATED);
    let c: Value = c.json().await.unwrap();
    let c = c["id"].as_str().unwrap();
    let added = writer
        .post_json(
            &format!("/v1/collections/{c}/documents"),
            &json!({"text": "The kettle is in the kitchen."}),
        )
        .await;
    assert_eq!(added.status(), StatusCode::ACCEPTED);
    for response in [
        writer.post_json("/v1/keys", &json!({"name": "x", "role": "read"})).await,
        writer.get("/v1/keys").await,
        writer.get("/v1/audit").await,
    ] {
        assert_eq!(assert_problem(response, StatusCode::FORBIDDEN).await["code"], "forbidden");
    }

    // A read key reads, and cannot write.
    assert_eq!(reader.get(&format!("/v1/collections/{c}")).await.status(), StatusCode::OK);
    assert_eq!(reader.get(&format!("/v1/collections/{c}/documents")).await.status(), StatusCode::OK);
    for response in [
        reader.post_json("/v1/collections", &json!({"name": "mine"})).await,
        reader.post_json(&format!("/v1/collections/{c}/documents"), &json!({"text": "x"})).await,
        reader.delete(&format!("/v1/collections/{c}")).await,
        reader.post_json("/v1/keys", &json!({"name": "x", "role": "read"})).await,
    ] {
        assert_problem(response, StatusCode::FORBIDDEN).await;
    }

    // A tenant admin manages its own tenant's keys only.
    let foreign =
        admin.post_json("/v1/keys", &json!({"name": "x", "role": "admin", "tenant": "globex"})).await;
    assert_problem(foreign, StatusCode::FORBIDDEN).await;
    let operator_only =
        admin.post_json("/v1/keys", &json!({"name": "x", "role": "admin", "tenant": null})).await;
    assert_eq!(operator_only.status(), StatusCode::CREATED, "no tenant means the caller's own");
    let (globex_key, _) =
        app.create_key(json!({"name": "globex reader", "role": "read", "tenant": "globex"})).await;
    let listed = body(admin.get("/v1/keys").await).await;
    let tenants: BTreeSet<&str> =
        listed["keys"].as_array().unwrap().iter().map(|k| k["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, BTreeSet::from(["acme"]));
    assert!(listed.to_string().find("ragd_").is_none(), "a secret is listed: {listed}");
    assert_problem(admin.delete(&format!("/v1/keys/{globex_key}")).await, StatusCode::NOT_FOUND).await;
    let everything = body(app.get("/v1/keys").await).await;
    assert_eq!(everything["keys"].as_array().unwrap().len(), 5, "{everything}");
}

/// Two tenants with a collection each, of the same name.
struct Tenants<'a> {
    a: KeyedClient<'a>,
    b: KeyedClient<'a>,
    a_collection: String,
    a_document: String,
    a_batch: String,
    b_collection: String,
}

async fn two_tenants(app: &TestApp) -> Tenants<'_> {
    let (_, a) = app.create_key(json!({"name": "a", "role": "admin", "tenant": "tenant-a"})).await;
    let (_, b) = app.create_key(json!({"name": "b", "role": "admin", "tenant": "tenant-b"})).await;
    let (a, b) = (app.as_key(&a), app.as_key(&b));
    let mut collections = Vec::new();
    for client in [&a, &b] {
        let response = client.post_json("/v1/collections", &json!({"name": "shared-name"})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        collections.push(created["id"].as_str().unwrap().to_owned());
    }
    let a_collection = collections[0].clone();
    let added = a
        .client
        .post(app.url(&format!("/v1/collections/{a_collection}/documents")))
        .header("content-type", "application/x-ndjson")
        .body("{\"title\": \"Merger plan\", \"text\": \"Tenant A secretly plans to acquire the zeppelin works in March.\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::ACCEPTED);
    let added: Value = added.json().await.unwrap();
    let a_document = added["documents"][0]["id"].as_str().unwrap().to_owned();
    let a_batch = added["batch_id"].as_str().unwrap().to_owned();
    let b_text = json!({"title": "Canteen", "text": "Tenant B serves soup in the canteen on Fridays."});
    let b_added: Value = b
        .post_json(&format!("/v1/collections/{}/documents", collections[1]), &b_text)
        .await
        .json()
        .await
        .unwrap();
    for (client, c, d) in
        [(&a, &a_collection, &a_document), (&b, &collections[1], &b_added["id"].as_str().unwrap().to_owned())]
    {
        wait_ready(client, c, d).await;
    }
    Tenants { a, b, a_collection, a_document, a_batch, b_collection: collections[1].clone() }
}

async fn wait_ready(client: &KeyedClient<'_>, collection: &str, document: &str) {
    for _ in 0..600 {
        let doc = body(client.get(&format!("/v1/collections/{collection}/documents/{document}")).await).await;
        if doc["status"] == "ready" {
            return;
        }
        assert_ne!(doc["status"], "failed", "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("document {document} not ready after 60 s");
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let app = spawn_app().await;
    let t = two_tenants(&app).await;
    let (a_c, a_d, b) = (&t.a_collection, &t.a_document, &t.b);

    // B's lists hold only B's things.
    let listed = body(b.get("/v1/collections").await).await;
    assert_eq!(ids(&listed["collections"], "id"), set(&[&t.b_collection]));
    let models = body(b.get("/v1/models").await).await;
    let model_ids = ids(&models["data"], "id");
    assert!(model_ids.contains("rag:shared-name") && model_ids.len() == 2, "{models}");
    let stats = body(b.get("/v1/collections/shared-name").await).await;
    assert_eq!(
        (stats["id"].as_str(), &stats["stats"]["documents"]["total"]),
        (Some(t.b_collection.as_str()), &json!(1))
    );

    // A's collection, document and batch do not exist for B, by id: 404,
    // not 403, so B cannot even learn that they exist.
    let not_found = [
        b.get(&format!("/v1/collections/{a_c}")).await,
        b.get(&format!("/v1/collections/{a_c}/documents")).await,
        b.get(&format!("/v1/collections/{a_c}/documents/{a_d}")).await,
        b.get(&format!("/v1/collections/{}/documents/{a_d}", t.b_collection)).await,
        b.get(&format!("/v1/batches/{}", t.a_batch)).await,
        b.post_json(&format!("/v1/collections/{a_c}/search"), &json!({"query": "zeppelin"})).await,
        b.post_json(&format!("/v1/collections/{a_c}/query"), &json!({"query": "zeppelin", "max_tokens": 4}))
            .await,
        b.post_json(&format!("/v1/collections/{a_c}/documents"), &json!({"text": "planted"})).await,
        b.post_json(
            "/v1/chat/completions",
            &json!({"model": format!("rag:{a_c}"), "messages": [{"role": "user", "content": "zeppelin?"}]}),
        )
        .await,
        b.get(&format!("/v1/models/rag:{a_c}")).await,
        b.delete(&format!("/v1/collections/{a_c}/documents/{a_d}")).await,
        b.delete(&format!("/v1/collections/{a_c}")).await,
    ];
    for response in not_found {
        let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
        assert!(!problem.to_string().contains("zeppelin works"), "{problem}");
    }

    // B's own collection of the same name answers from B's documents only.
    let hits = body(
        b.post_json(
            "/v1/collections/shared-name/search",
            &json!({"query": "zeppelin works acquisition March", "top_k": 10}),
        )
        .await,
    )
    .await;
    assert!(!hits.to_string().contains("zeppelin") && !hits.to_string().contains(a_d.as_str()), "{hits}");
    let chat = body(
        b.post_json(
            "/v1/chat/completions",
            &json!({"model": "rag:shared-name", "max_tokens": 4, "messages": [{"role": "user", "content": "Who plans to acquire the zeppelin works?"}]}),
        )
        .await,
    )
    .await;
    assert!(!chat["sources"].to_string().contains("zeppelin"), "{chat}");
    let batch = b.get(&format!("/v1/batches/{}", t.a_batch)).await;
    assert_eq!(batch.status(), StatusCode::NOT_FOUND);
    assert_eq!(b.post_json("/v1/embeddings", &json!({"input": "zeppelin"})).await.status(), StatusCode::OK);

    // A's jobs do not exist for B either. The job is cancelled at once so
    // that no training runs.
    let pairs: Vec<Value> = (0..4)
        .map(|n| json!({"query": format!("zeppelin question {n}"), "positive": format!("zeppelin answer {n}")}))
        .collect();
    let job = t.a.post_json("/v1/jobs", &json!({"kind": "finetune-embedder", "params": {"name": "zeppelin-model", "pairs": pairs}})).await;
    assert_eq!(job.status(), StatusCode::ACCEPTED);
    let job: Value = job.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(t.a.post_json(&format!("/v1/jobs/{job_id}/cancel"), &json!({})).await.status(), StatusCode::ACCEPTED);
    let b_jobs = body(b.get("/v1/jobs").await).await;
    assert_eq!(b_jobs["jobs"], json!([]), "{b_jobs}");
    assert_problem(b.get(&format!("/v1/jobs/{job_id}")).await, StatusCode::NOT_FOUND).await;
    assert_problem(b.post_json(&format!("/v1/jobs/{job_id}/cancel"), &json!({})).await, StatusCode::NOT_FOUND)
        .await;
    let a_jobs = body(t.a.get("/v1/jobs").await).await;
    assert_eq!(ids(&a_jobs["jobs"], "id"), set(&[&job_id]));

    // A still has everything.
    let a_doc = body(t.a.get(&format!("/v1/collections/{a_c}/documents/{a_d}")).await).await;
    assert_eq!(a_doc["status"], "ready");
    let a_batch = body(t.a.get(&format!("/v1/batches/{}", t.a_batch)).await).await;
    assert_eq!(a_batch["documents"]["ready"], 1);
}

#[tokio::test]
async fn document_acls_hide_what_a_user_may_not_see() {
    let app = spawn_app().await;
    let (_, admin) = app.create_key(json!({"name": "admin", "role": "admin", "tenant": "acme", "on_behalf_of": true})).await;
    let (_, plain) = app.create_key(json!({"name": "plain reader", "role": "read", "tenant": "acme"})).await;
    let (_, portal) = app
        .create_key(json!({"name": "portal", "role": "read", "tenant": "acme", "on_behalf_of": true}))
        .await;
    let (admin, plain, portal) = (app.as_key(&admin), app.as_key(&plain), app.as_key(&portal));
    let c: Value = admin.post_json("/v1/collections", &json!({"name": "wiki"})).await.json().await.unwrap();
    let c = c["id"].as_str().unwrap().to_owned();
    let mut documents = Vec::new();
    for (title, text, acl) in [
        ("Lunch", "The office lunch break about the salary of staff starts at noon.", json!([])),
        ("Alice's salary", "Alice's salary review: her salary rises by ten percent.", json!(["alice"])),
        (
            "Engineering salary bands",
            "Salary bands for the engineering group, by level.",
            json!(["eng", "hr"]),
        ),
    ] {
        let added = admin
            .post_json(
                &format!("/v1/collections/{c}/documents"),
                &json!({"title": title, "text": text, "acl": acl}),
            )
            .await;
        assert_eq!(added.status(), StatusCode::ACCEPTED);
        let added: Value = added.json().await.unwrap();
        documents.push(added["id"].as_str().unwrap().to_owned());
    }
    for d in &documents {
        wait_ready(&admin, &c, d).await;
    }
    let (public, alice_only, eng) = (&documents[0], &documents[1], &documents[2]);
    let search = |who: &KeyedClient<'_>, on_behalf_of: Value| {
        let mut request = json!({"query": "salary", "top_k": 10});
        if !on_behalf_of.is_null() {
            request["on_behalf_of"] = on_behalf_of;
        }
        let url = format!("/v1/collections/{c}/search");
        let client = who.client.clone();
        let url = who.app.url(&url);
        async move { client.post(url).json(&request).send().await.unwrap() }
    };
    let as_user = |user: &str, groups: &[&str]| json!({"user": user, "groups": groups});
    // Only an admin key acting for nobody sees every document, and with
    // them the index's point count.
    let cases = [
        (&admin, Value::Null, set(&[public, alice_only, eng])),
        (&plain, Value::Null, set(&[public])),
        (&portal, Value::Null, set(&[public])),
        (&portal, as_user("bob", &[]), set(&[public])),
        (&portal, as_user("alice", &[]), set(&[public, alice_only])),
        (&portal, as_user("carol", &["hr"]), set(&[public, eng])),
        (&portal, as_user("alice", &["eng"]), set(&[public, alice_only, eng])),
        (&admin, as_user("bob", &["sales"]), set(&[public])),
    ];
    for (n, (who, on_behalf_of, visible)) in cases.into_iter().enumerate() {
        let sees_all = n == 0;
        let hits = body(search(who, on_behalf_of.clone()).await).await;
        assert_eq!(ids(&hits["hits"], "document_id"), visible, "search as {on_behalf_of}");

        // The document list and get, and the counts, agree with search.
        let query = if on_behalf_of.is_null() {
            String::new()
        } else {
            format!("?on_behalf_of={}", urlencode(&on_behalf_of.to_string()))
        };
        let listed = body(who.get(&format!("/v1/collections/{c}/documents{query}")).await).await;
        assert_eq!(ids(&listed["documents"], "id"), visible, "list as {on_behalf_of}");
        for d in &documents {
            let status = who.get(&format!("/v1/collections/{c}/documents/{d}{query}")).await.status();
            let expected = if visible.contains(d) { StatusCode::OK } else { StatusCode::NOT_FOUND };
            assert_eq!(status, expected, "get {d} as {on_behalf_of}");
        }
        let stats = body(who.get(&format!("/v1/collections/{c}{query}")).await).await;
        assert_eq!(stats["stats"]["documents"]["total"], visible.len(), "counts as {on_behalf_of}: {stats}");
        assert_eq!(
            stats["stats"]["point_count"].is_null(),
            !sees_all,
            "point count as {on_behalf_of}: {stats}"
        );
    }

    // An ACL given to a multipart upload applies to its files, and to each
    // row of a CSV file among them.
    let form = reqwest::multipart::Form::new()
        .text("acl", r#"["alice"]"#)
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"Alice's bonus: a salary supplement in May.".to_vec())
                .file_name("bonus.txt")
                .mime_str("text/plain")
                .unwrap(),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"title,text\nRaise,Alice's raise comes in June.\n".to_vec())
                .file_name("raises.csv"),
        );
    let uploaded =
        admin.client.post(app.url(&format!("/v1/collections/{c}/documents"))).multipart(form).send().await.unwrap();
    assert_eq!(uploaded.status(), StatusCode::ACCEPTED);
    let uploaded: Value = uploaded.json().await.unwrap();
    let files = ids(&uploaded["documents"], "id");
    assert_eq!(files.len(), 2, "{uploaded}");
    let alice = format!("?on_behalf_of={}", urlencode(&as_user("alice", &[]).to_string()));
    for file in &files {
        wait_ready(&admin, &c, file).await;
        let hidden = plain.get(&format!("/v1/collections/{c}/documents/{file}")).await;
        assert_problem(hidden, StatusCode::NOT_FOUND).await;
        let seen = portal.get(&format!("/v1/collections/{c}/documents/{file}{alice}")).await;
        assert_eq!(seen.status(), StatusCode::OK);
    }

    // A key that may not act for users is refused when it tries.
    let refused = search(&plain, as_user("alice", &[])).await;
    assert_eq!(assert_problem(refused, StatusCode::FORBIDDEN).await["code"], "forbidden");
    let refused = plain
        .get(&format!(
            "/v1/collections/{c}/documents?on_behalf_of={}",
            urlencode(&as_user("alice", &[]).to_string())
        ))
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;

    // Answers: forbidden documents are never a source, so never cited nor
    // in the prompt.
    let question = "How much does Alice's salary rise?";
    let query = body(
        portal
            .post_json(
                &format!("/v1/collections/{c}/query"),
                &json!({"query": question, "max_tokens": 8, "on_behalf_of": as_user("bob", &[])}),
            )
            .await,
    )
    .await;
    assert!(ids(&query["sources"], "document_id").is_subset(&set(&[public])), "{query}");
    assert!(!query.to_string().contains("ten percent"), "{query}");
    let chat = |on_behalf_of: Value| json!({"model": "rag:wiki", "max_tokens": 8, "messages": [{"role": "user", "content": question}], "on_behalf_of": on_behalf_of});
    let answer = body(portal.post_json("/v1/chat/completions", &chat(as_user("bob", &[]))).await).await;
    assert!(ids(&answer["sources"], "document_id").is_subset(&set(&[public])), "{answer}");
    assert!(!answer.to_string().contains("ten percent"), "{answer}");
    let answer = body(portal.post_json("/v1/chat/completions", &chat(as_user("alice", &[]))).await).await;
    assert!(ids(&answer["sources"], "document_id").contains(alice_only), "{answer}");
    let refused = plain.post_json("/v1/chat/completions", &chat(as_user("alice", &[]))).await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_first_start_prints_an_operator_key_once() {
    let app = spawn_app_with(&[("RAGD_ADMIN_KEY", "")]).await;
    let key = app
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("ragd_"))
        .expect("a key in the banner")
        .to_owned();
    assert!(!app.log().contains(&key), "the key reached the log");
    let operator = app.as_key(&key);
    assert_eq!(operator.get("/v1/collections").await.status(), StatusCode::OK);
    let keys = body(operator.get("/v1/keys").await).await;
    assert_eq!(keys["keys"][0]["role"], "admin");
    assert!(keys["keys"][0]["tenant"].is_null());
    // Without RAGD_ADMIN_KEY the test key is not an admin key.
    assert_problem(app.get("/v1/collections").await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn keys_are_managed_from_the_command_line() {
    let app = spawn_app().await;
    let ragd = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ragd"));
        command
            .current_dir(crate::helpers::repo_root())
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(app.data_dir.path());
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let key =
        ragd(&["create", "--name", "from the shell", "--role", "read", "--tenant", "acme"]).trim().to_owned();
    assert!(key.starts_with("ragd_"), "{key}");
    let reader = app.as_key(&key);
    assert_eq!(reader.get("/v1/collections").await.status(), StatusCode::OK);
    let listed = ragd(&["list"]);
    let id = &key[5..37];
    assert!(
        listed.contains(id) && listed.contains("from the shell") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "the list shows a secret");
    ragd(&["revoke", id]);
    assert_problem(reader.get("/v1/collections").await, StatusCode::UNAUTHORIZED).await;
    assert!(ragd(&["list"]).contains("revoked"));
}

#[tokio::test]
async fn the_audit_log_records_writes_and_admin_actions() {
    let app = spawn_app().await;
    let t = two_tenants(&app).await;
    let (_, reader) = app.create_key(json!({"name": "a reader", "role": "read", "tenant": "tenant-a"})).await;
    let reader = app.as_key(&reader);
    assert_problem(
        reader.post_json("/v1/collections", &json!({"name": "nope"})).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        t.a.delete(&format!("/v1/collections/{}/documents/{}", t.a_collection, t.a_document)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(reader.get("/v1/audit").await, StatusCode::FORBIDDEN).await;

    let entries = |log: &Value| {
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["tenant"].as_str().unwrap_or("-").to_owned(),
                    e["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let all = body(app.get("/v1/audit").await).await;
    let seen = entries(&all);
    for expected in [
        ("key.create", "tenant-a", "ok"),
        ("key.create", "tenant-b", "ok"),
        ("collection.create", "tenant-a", "ok"),
        ("collection.create", "tenant-b", "ok"),
        ("document.add", "tenant-a", "ok"),
        ("collection.create", "tenant-a", "denied"),
        ("document.delete", "tenant-a", "ok"),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2.to_owned());
        assert!(seen.contains(&expected), "{expected:?} missing from {seen:?}");
    }
    assert!(all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["key_id"].is_string() && e["at"].is_string()));
    assert!(!all.to_string().contains("ragd_"), "the audit log holds a secret");

    // A tenant admin sees its own tenant's entries, newest first, in pages.
    let own = entries(&body(t.a.get("/v1/audit").await).await);
    assert_eq!(own.first().map(|e| e.0.as_str()), Some("document.delete"), "{own:?}");
    assert!(own.iter().all(|e| e.1 == "tenant-a"), "{own:?}");
    let page = body(t.a.get("/v1/audit?limit=2").await).await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next_before"].as_str().expect("a next page");
    let rest = entries(&body(t.a.get(&format!("/v1/audit?before={next}&limit=500")).await).await);
    assert_eq!(rest.len() + 2, own.len());
}

#[tokio::test]
async fn limits_are_enforced() {
    let app = spawn_app_with(&[
        ("RAGD_AUTH__RATE_LIMIT_PER_SECOND", "1"),
        ("RAGD_AUTH__RATE_LIMIT_BURST", "12"),
        ("RAGD_SERVER__MAX_BATCH_DOCUMENTS", "2"),
        ("RAGD_SERVER__MAX_BODY_BYTES", "4096"),
        ("RAGD_SERVER__MAX_TOP_K", "5"),
        ("RAGD_RETRIEVAL__MAX_QUERY_CHARS", "50"),
    ])
    .await;
    let c = app.create_collection("bounded").await;
    let search = format!("/v1/collections/{c}/search");
    assert_problem(app.post_json(&search, &json!({"query": "x", "top_k": 6})).await, StatusCode::BAD_REQUEST)
        .await;
    assert_problem(app.post_json(&search, &json!({"query": "x".repeat(51)})).await, StatusCode::BAD_REQUEST)
        .await;
    let big =
        app.post_json(&format!("/v1/collections/{c}/documents"), &json!({"text": "y".repeat(5000)})).await;
    assert_problem(big, StatusCode::PAYLOAD_TOO_LARGE).await;
    let lines =
        (0..3).map(|i| json!({"text": format!("line {i}")}).to_string()).collect::<Vec<_>>().join("\n");
    let bulk = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), StatusCode::ACCEPTED);
    let bulk: Value = bulk.json().await.unwrap();
    assert_eq!((bulk["accepted"].as_i64(), bulk["rejected_count"].as_i64()), (Some(2), Some(1)), "{bulk}");
    assert!(bulk["rejected"][0]["reason"].as_str().unwrap().contains("at most 2"), "{bulk}");
    // The cap holds for the rows of a CSV file too.
    let csv = reqwest::multipart::Part::bytes(b"text\none\ntwo\nthree\n".to_vec()).file_name("rows.csv");
    let rows = reqwest::multipart::Form::new().part("file", csv);
    let documents = format!("/v1/collections/{c}/documents");
    let files = app.client.post(app.url(&documents)).multipart(rows).send().await.unwrap();
    assert_eq!(files.status(), StatusCode::ACCEPTED);
    let files: Value = files.json().await.unwrap();
    let taken = files["documents"].as_array().unwrap().len();
    assert_eq!((taken, files["rejected_count"].as_i64()), (2, Some(1)), "{files}");
    assert_eq!(files["rejected"][0]["file"], "rows.csv#3", "{files}");
    assert!(files["rejected"][0]["reason"].as_str().unwrap().contains("at most 2"), "{files}");

    // The admin key has used its burst by now; another key has its own.
    let mut limited = None;
    for _ in 0..20 {
        let response = app.get("/v1/collections").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the admin key was never limited");
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await["code"], "rate_limited");
    let other = client_with_key(ADMIN_KEY);
    assert_eq!(
        other.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK,
        "health checks are not limited"
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(app.get("/v1/collections").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn errors_carry_a_request_id_and_no_internals() {
    let app = spawn_app().await;
    let data_dir = app.data_dir.path().to_string_lossy().into_owned();
    let responses = [
        app.get("/v1/collections/0190f5c2-7a6e-7b1c-9d2e-3f4a5b6c7d8e").await,
        app.post_json("/v1/collections", &json!({"name": "bad name"})).await,
        app.get("/v1/nowhere").await,
        app.as_key("nope").get("/v1/collections").await,
    ];
    for response in responses {
        assert!(response.headers().contains_key("x-request-id"), "{:?}", response.headers());
        let text = response.text().await.unwrap();
        for leak in [data_dir.as_str(), "/src/", ".rs:", "panicked", "sqlx", "SELECT"] {
            assert!(!text.contains(leak), "{leak:?} in {text}");
        }
    }
}
