//! One attempt to hand an export request to the backend, over gRPC or HTTP,
//! and what a failure means (the verdicts are the helper's; HTTP answers
//! are judged here, the one protocol only this exporter speaks).

use std::io::{Read, Write};
use std::time::Duration;

use agent_exporter_helper::{grpc_failure, Failure, Verdict};
use flate2::Compression as Level;
use http::header::HeaderMap;
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::config::{Compression, OtlpProfilesConfig, Protocol};

/// A configured transport.
pub enum Sender {
    Grpc {
        client: ProfilesServiceClient<Channel>,
        metadata: MetadataMap,
    },
    Http {
        url: http::Uri,
        headers: HeaderMap,
        gzip: bool,
        client: agent_net::Http1Client,
    },
}

impl Sender {
    /// The transport `config` describes; connects lazily.
    pub fn new(config: &OtlpProfilesConfig) -> Result<Self, String> {
        let gzip = config.compression == Compression::Gzip;
        match config.protocol {
            Protocol::Grpc => {
                let channel = config.tls.grpc_channel(&config.endpoint)?;
                let mut client = ProfilesServiceClient::new(channel)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(16 << 20);
                if gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                let metadata = config.headers.grpc_metadata()?;
                Ok(Sender::Grpc { client, metadata })
            }
            Protocol::Http => {
                let url = config.http_url()?;
                Ok(Sender::Http {
                    client: agent_net::Http1Client::for_uri(&url, &config.tls.client()?)?,
                    url,
                    headers: config.headers.http()?,
                    gzip,
                })
            }
        }
    }

    /// What is sent, made once for all attempts: the message for gRPC
    /// (tonic encodes it), the encoded and compressed body for HTTP.
    pub fn prepare(&self, request: ExportProfilesServiceRequest) -> Payload {
        match self {
            Sender::Grpc { .. } => Payload::Message(request),
            Sender::Http { gzip, .. } => {
                let body = request.encode_to_vec();
                Payload::Body(Bytes::from(if *gzip { gzip_bytes(&body) } else { body }))
            }
        }
    }

    /// Sends `payload` once; `timeout` is told to a gRPC server (the
    /// caller bounds the attempt).
    pub async fn send(
        &self,
        payload: &Payload,
        timeout: Duration,
    ) -> Result<ExportProfilesServiceResponse, Failure> {
        match (self, payload) {
            (Sender::Grpc { client, metadata }, Payload::Message(request)) => {
                let mut call = tonic::Request::new(request.clone());
                *call.metadata_mut() = metadata.clone();
                call.set_timeout(timeout);
                client
                    .clone()
                    .export(call)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| grpc_failure(&status))
            }
            (
                Sender::Http {
                    url,
                    headers,
                    gzip,
                    client,
                },
                Payload::Body(body),
            ) => {
                let mut builder = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                if *gzip {
                    builder = builder.header(http::header::CONTENT_ENCODING, "gzip");
                }
                let mut post = builder
                    .body(body.clone())
                    .map_err(|e| Failure::permanent(e.to_string()))?;
                post.headers_mut().extend(headers.clone());
                let answer = client.request(post).await.map_err(Failure::retryable)?;
                http_outcome(answer)
            }
            _ => unreachable!("payloads are prepared by the sender that sends them"),
        }
    }
}

/// A request ready to send, see [`Sender::prepare`].
pub enum Payload {
    /// For gRPC.
    Message(ExportProfilesServiceRequest),
    /// For HTTP: the protobuf body, compressed when configured.
    Body(Bytes),
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Level::fast());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// What an HTTP answer means: 2xx carries the response; 429, 502, 503 and
/// 504 are retried (after `Retry-After` when given); the rest is final.
fn http_outcome(answer: http::Response<Bytes>) -> Result<ExportProfilesServiceResponse, Failure> {
    let status = answer.status();
    let gzipped = answer
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let retry_after_header = answer
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = answer.into_body().to_vec();
    if gzipped {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut plain)
            .is_ok()
        {
            body = plain;
        }
    }
    if status.is_success() {
        return ExportProfilesServiceResponse::decode(body.as_slice()).map_err(|e| {
            Failure::permanent(format!("HTTP {status} with an undecodable body: {e}"))
        });
    }
    // Failures carry a google.rpc.Status; its RetryInfo also says when to retry.
    let rpc_status = tonic_types::pb::Status::decode(body.as_slice()).ok();
    let retry_after = retry_after_header.or_else(|| {
        rpc_status.as_ref().and_then(|s| {
            s.details
                .iter()
                .filter(|d| d.type_url.ends_with("google.rpc.RetryInfo"))
                .find_map(|d| tonic_types::pb::RetryInfo::decode(d.value.as_slice()).ok())
                .and_then(|info| info.retry_delay)
                .and_then(|d| Duration::try_from(d).ok())
        })
    });
    let message = rpc_status
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
    let verdict = if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        Verdict::Retry { after: retry_after }
    } else {
        Verdict::Permanent
    };
    Err(Failure {
        verdict,
        reason: format!("HTTP {status}: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn answer(code: u16, headers: &[(&str, &str)], body: Vec<u8>) -> http::Response<Bytes> {
        let mut b = http::Response::builder().status(code);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::from(body)).unwrap()
    }

    #[test]
    fn http_answers_are_classified_as_the_spec_says() {
        let ok = http_outcome(answer(
            200,
            &[],
            ExportProfilesServiceResponse::default().encode_to_vec(),
        ));
        assert!(ok.is_ok());
        for code in [429, 502, 503, 504] {
            assert!(
                matches!(
                    http_outcome(answer(code, &[], vec![])).unwrap_err().verdict,
                    Verdict::Retry { .. }
                ),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413, 500] {
            assert_eq!(
                http_outcome(answer(code, &[], vec![])).unwrap_err().verdict,
                Verdict::Permanent,
                "{code}"
            );
        }
        let throttled = http_outcome(answer(429, &[("retry-after", "7")], vec![])).unwrap_err();
        assert_eq!(
            throttled.verdict,
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn a_status_body_with_retry_info_sets_the_delay() {
        let info = tonic_types::pb::RetryInfo {
            retry_delay: Some(prost_types_duration(3)),
        };
        let status = tonic_types::pb::Status {
            code: Code::Unavailable as i32,
            message: "busy".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        let failure = http_outcome(answer(503, &[], status.encode_to_vec())).unwrap_err();
        assert_eq!(
            failure.verdict,
            Verdict::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
        assert!(failure.reason.contains("busy"), "{}", failure.reason);
    }

    fn prost_types_duration(seconds: i64) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos: 0 }
    }
}
