//! A small gRPC client of `sidestream.push.v1.Push` (docs/api.md, "gRPC"):
//!
//! ```sh
//! cargo run -p sidestream-push --example grpc-client -- subscribe prices news=k3x9a2-4 --count 2
//! cargo run -p sidestream-push --example grpc-client -- publish prices 101.5 --event tick
//! ```
//!
//! `subscribe` prints one line per event (`message`, `reset`, `subscribed`,
//! `heartbeat`) and exits after `--count` messages; `publish` prints the id.
//! A failed call prints its status to stderr and exits 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidestream_proto::push::v1::push_client::PushClient;
use sidestream_proto::push::v1::{
    subscribe_event, PublishRequest, SubscribeRequest, TopicPosition,
};
use tonic::metadata::MetadataValue;
use tonic::Request;

#[derive(Debug, Parser)]
struct Cli {
    /// The push server's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:18090")]
    addr: String,
    /// Bearer token (`authorization: Bearer <token>` metadata).
    #[arg(long)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe to topics: `topic` (new messages only) or `topic=<last id seen>`.
    Subscribe {
        #[arg(required = true)]
        topics: Vec<String>,
        /// Exit after this many messages (default: run until the stream ends).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Publish one message.
    Publish {
        topic: String,
        data: String,
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn with_token<T>(message: T, token: Option<&str>) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut client = PushClient::connect(cli.addr.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cli.addr))?;
    let status = |s: tonic::Status| format!("status: {:?}: {}", s.code(), s.message());
    match cli.command {
        Command::Publish {
            topic,
            data,
            event,
            idempotency_key,
        } => {
            let request = PublishRequest {
                topic,
                data: data.into_bytes().into(),
                event: event.unwrap_or_default(),
                idempotency_key: idempotency_key.unwrap_or_default(),
            };
            let reply = client
                .publish(with_token(request, cli.token.as_deref())?)
                .await
                .map_err(status)?
                .into_inner();
            println!("published id={} duplicate={}", reply.id, reply.duplicate);
        }
        Command::Subscribe { topics, count } => {
            let topics = topics
                .iter()
                .map(|t| {
                    let (topic, from) = t.split_once('=').unwrap_or((t, ""));
                    TopicPosition {
                        topic: topic.to_owned(),
                        from: from.to_owned(),
                    }
                })
                .collect();
            let request = with_token(SubscribeRequest { topics }, cli.token.as_deref())?;
            let mut stream = client
                .subscribe(request)
                .await
                .map_err(status)?
                .into_inner();
            let mut messages = 0;
            while count.is_none_or(|count| messages < count) {
                let Some(event) = stream.message().await.map_err(status)? else {
                    break;
                };
                match event.event {
                    Some(subscribe_event::Event::Message(m)) => {
                        messages += 1;
                        println!(
                            "message topic={} id={} event={} data={}",
                            m.topic,
                            m.id,
                            m.event,
                            String::from_utf8_lossy(&m.data)
                        );
                    }
                    Some(subscribe_event::Event::Reset(r)) => println!(
                        "reset topic={} reason={} position={}",
                        r.topic, r.reason, r.position
                    ),
                    Some(subscribe_event::Event::Subscribed(s)) => {
                        println!("subscribed topic={} position={}", s.topic, s.position)
                    }
                    Some(subscribe_event::Event::Heartbeat(_)) => println!("heartbeat"),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
