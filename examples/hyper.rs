//! `RateLimitLayer` on a plain hyper 1 server, no axum: the layer is a tower `Layer`, and
//! `hyper_util::service::TowerToHyperService` turns the stack into a hyper service.
//!
//! Without axum's `ConnectInfo`, the peer address goes into each request's extensions as a
//! plain `SocketAddr`, which the peer-IP key reads.
//!
//! ```text
//! cargo run --example hyper             # prints its address; `PORT=3001` picks the port
//! curl -i http://127.0.0.1:PORT/        # the 6th request within 60 s gets a 429
//! ```
//!
//! (`tower`, which the layer needs, is a default feature.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use sluicegate::layer::RateLimitLayer;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The limiter: 5 requests a minute per client. (The options are constants that are valid,
/// so the `expect`s cannot fire.)
pub fn limiter() -> Arc<RateLimiter> {
    let limiter = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().expect("valid window"),
        rate_group_size_ms: 100.try_into().expect("valid group"),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    })
    .build()
    .expect("valid options");
    Arc::new(limiter)
}

/// Serves every connection `listener` accepts with the rate-limited hello service.
pub async fn serve(listener: TcpListener, limiter: Arc<RateLimiter>) -> std::io::Result<()> {
    let layer = RateLimitLayer::builder(limiter)
        .rate(RateLimit::per_minute(5.0).map_err(std::io::Error::other)?)
        .headers_on_allowed(true)
        .build()
        .map_err(std::io::Error::other)?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let service = ServiceBuilder::new()
            // The peer-IP key reads the connection's address from the extensions.
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                req
            })
            .layer(layer.clone())
            .service_fn(hello);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let service = TowerToHyperService::new(service);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                eprintln!("connection from {peer}: {err}");
            }
        });
    }
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hyper example: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(dead_code)]
async fn run() -> std::io::Result<()> {
    // `PORT` from the environment, or any free port; loopback only: this is an example.
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|e| std::io::Error::other(format!("PORT={p}: {e}")))?,
        Err(_) => 0,
    };
    let limiter = limiter();
    limiter.run_cleanup_loop();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "listening on http://{addr}; try: curl -i http://{addr}/  (the 6th within 60 s is 429)"
    );
    serve(listener, limiter).await
}
