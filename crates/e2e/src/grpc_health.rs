//! A grpc.health.v1 server for probe tests: answers Health/Check with
//! SERVING or NOT_SERVING as the test switches it, over plain HTTP/2.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The server's switch; it stops when dropped.
#[derive(Debug)]
pub struct HealthServer {
    pub port: u16,
    serving: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthServer {
    /// Listens on every address (a host-network pod's probe dials the host's).
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let serving = Arc::new(AtomicBool::new(true));
        let flag = serving.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let status = if flag.load(Ordering::SeqCst) { 1u8 } else { 2 };
                        async move { Ok::<_, Infallible>(check_answer(status)) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            port,
            serving,
            task,
        })
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A HealthCheckResponse{status} (field 1, varint) framed as gRPC, then the
/// grpc-status trailer.
fn check_answer(status: u8) -> http::Response<Body> {
    let message = [0x08, status];
    let mut data = vec![0u8];
    data.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    data.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from(data))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}
