//! HTTPS between sites (issue 15): the secondary's client is rustls, and a
//! private CA named by `[primary] ca_file` is trusted besides the system's
//! roots. The primary is served over HTTPS by a TLS front (rustls) with a
//! certificate from a CA generated for the test.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use geohost::config::PrimarySection;
use geohost::primary::sites::NewSite;
use geohost::secondary::PrimaryClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A TLS front for `site`: `https://127.0.0.1:PORT`, forwarding to the
/// site's plain port. Returns its URL and the PEM of the CA that signed
/// its certificate.
async fn https_front(site: &TestSite) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Geohost test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let target = site.url.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (url, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_trusts_a_private_ca_only_with_ca_file() {
    let backend = Backend::Sqlite;
    let primary = sites::primary(backend).await;
    let (url, ca_pem) = https_front(&primary).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    // Without ca_file: a clear certificate error.
    let section = |ca_file: Option<std::path::PathBuf>| PrimarySection {
        url: url.clone(),
        access_key: "key".into(),
        secret_access_key: "secret".into(),
        ca_file,
    };
    let error = PrimaryClient::new(&section(None))
        .unwrap()
        .types()
        .await
        .unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    // A ca_file that is not PEM is refused when the client is built.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let refused = PrimaryClient::new(&section(Some(garbage))).unwrap_err();
    assert!(
        refused.to_string().contains("[primary] ca_file"),
        "{refused}"
    );
    // With it, the TLS handshake succeeds (the primary answers: 401 for
    // these made-up credentials).
    let error = PrimaryClient::new(&section(Some(ca_file.clone())))
        .unwrap()
        .types()
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");

    // A real secondary with ca_file syncs through HTTPS.
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    let id = sites::put_helm(
        &primary,
        project,
        "stable",
        &sites::index_yaml(project, "stable", 1),
    )
    .await
    .id;
    let secondary = sites::secondary_via(
        backend,
        &primary,
        NewSite {
            name: "tls".into(),
            ..Default::default()
        },
        "idle_poll_ms = 50\nconsistency_interval_secs = 2\n",
        &url,
        &format!("ca_file = {:?}", ca_file.display().to_string()),
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the record synced over HTTPS",
        || async {
            sites::registry_states_in(secondary.site.tracking().unwrap(), HELM)
                .await
                .unwrap()
                .get(&id)
                .is_some_and(|&(state, _)| state == 2)
        },
    )
    .await;
}
