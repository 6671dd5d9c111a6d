//! The apiserver's side of a SPDY port-forward, spoken straight to a node's
//! kubelet endpoint: measures the aranya↔arhat segment without kubectl and
//! the apiserver in the way.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, bail};
use bytes::BytesMut;
use spdy::{
    Frame, Headers,
    frame::{Decoder, Encoder},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use crate::kubelet::{Caller, connect};

/// One upgraded `/portForward` connection.
#[derive(Debug)]
pub struct PortForward {
    tls: TlsStream<TcpStream>,
    encoder: Encoder,
    decoder: Decoder,
    input: BytesMut,
    next_stream: u32,
    next_request: u32,
}

/// What one forwarded connection returned.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Bytes that came back on the data stream.
    pub data: u64,
    /// What came back on the error stream (empty when the port answered).
    pub error: String,
}

impl PortForward {
    /// Upgrades `POST /portForward/{namespace}/{pod}` to SPDY/3.1.
    pub async fn open(
        ip: IpAddr,
        port: u16,
        ca_pem: &str,
        caller: Caller<'_>,
        namespace: &str,
        pod: &str,
    ) -> anyhow::Result<Self> {
        let mut tls = connect(ip, port, ca_pem, caller).await?;
        let request = format!(
            "POST /portForward/{namespace}/{pod} HTTP/1.1\r\nHost: {ip}:{port}\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        let mut input = BytesMut::new();
        let head_end = loop {
            if let Some(at) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if tls.read_buf(&mut input).await? == 0 {
                bail!("the endpoint closed before answering the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&input.split_to(head_end)).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        Ok(Self {
            tls,
            encoder: Encoder::default(),
            decoder: Decoder::new(16 << 20, 1 << 20),
            input,
            next_stream: 1,
            next_request: 0,
        })
    }

    /// Forwards one connection to `port`: sends `request`, half-closes, and
    /// reads until the pod's side ends.
    pub async fn exchange(&mut self, port: u16, request: &[u8]) -> anyhow::Result<Exchange> {
        let (error_id, data_id) = (self.next_stream, self.next_stream + 2);
        self.next_stream += 4;
        let request_id = self.next_request.to_string();
        self.next_request += 1;
        let mut out = BytesMut::new();
        for (id, kind) in [(error_id, "error"), (data_id, "data")] {
            let headers = Headers::new()
                .with("streamtype", kind)
                .with("port", port.to_string())
                .with("requestid", request_id.clone());
            self.encoder.encode(
                &Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    slot: 0,
                    fin: false,
                    unidirectional: false,
                    headers,
                },
                &mut out,
            );
        }
        spdy::frame::data_frame(&mut out, data_id, true, request);
        self.tls.write_all(&out).await?;
        self.tls.flush().await?;
        let mut got = Exchange::default();
        let (mut data_done, mut error_done) = (false, false);
        while !(data_done && error_done) {
            let frame = self.next_frame().await?;
            match frame {
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } if stream_id == data_id => {
                    got.data += data.len() as u64;
                    data_done |= fin;
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } if stream_id == error_id => {
                    got.error.push_str(&String::from_utf8_lossy(&data));
                    error_done |= fin;
                }
                Frame::RstStream { stream_id, .. } if stream_id == data_id => data_done = true,
                Frame::RstStream { stream_id, .. } if stream_id == error_id => error_done = true,
                Frame::GoAway { .. } => bail!("the endpoint ended the connection"),
                _ => {}
            }
        }
        Ok(got)
    }

    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.input)? {
                return Ok(frame);
            }
            let n =
                tokio::time::timeout(Duration::from_secs(60), self.tls.read_buf(&mut self.input))
                    .await
                    .context("no SPDY frame from the endpoint for 60 s")??;
            if n == 0 {
                bail!("the endpoint closed the connection");
            }
        }
    }
}
