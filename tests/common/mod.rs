// Each test binary compiles this module tree anew and uses only part of it: unused items
// would be dead_code warnings (errors under clippy -D warnings) in the others.
#![allow(dead_code)]

pub mod bin;
pub mod hostile;
pub mod lapi;
pub mod lease;
pub mod observe;
pub mod proxy;
pub mod recorder;
pub mod world;

/// Serves `router` on a loopback port for the rest of the test; returns its address.
pub async fn serve_on_loopback(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}
