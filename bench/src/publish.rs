//! Publishers for the three push servers. Each sends the same payload bytes
//! (see [`crate::sse::make_payload`]); only the envelope differs:
//!
//! * sidestream: `POST /v1/topics/{topic}/messages`, body = the data;
//! * Nchan: `POST /pub?id={topic}`, body = the data;
//! * Pushpin: `POST /publish/` on its publish port, a GRIP `http-stream` item
//!   whose content is the SSE event `data: <payload>\n\n`.

use std::net::SocketAddr;

use anyhow::bail;

use crate::http1::{parse_url, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sidestream,
    Nchan,
    Pushpin,
}

/// One publisher connection.
pub struct Publisher {
    kind: Kind,
    path: String,
    topic: String,
    conn: Connection,
}

impl Publisher {
    /// `url` is the full publish URL (for Pushpin, `http://ip:port/publish/`).
    pub fn new(kind: Kind, url: &str, topic: &str) -> anyhow::Result<Publisher> {
        let (addr, path): (SocketAddr, String) = parse_url(url)?;
        Ok(Publisher {
            kind,
            path,
            topic: topic.to_owned(),
            conn: Connection::new(addr),
        })
    }

    pub async fn publish(&mut self, payload: &str) -> anyhow::Result<()> {
        let response = match self.kind {
            Kind::Sidestream | Kind::Nchan => {
                self.conn
                    .request(
                        "POST",
                        &self.path,
                        &[("content-type", "text/plain")],
                        payload.as_bytes(),
                    )
                    .await?
            }
            Kind::Pushpin => {
                let body = serde_json::json!({
                    "items": [{
                        "channel": self.topic,
                        "formats": { "http-stream": { "content": format!("data: {payload}\n\n") } }
                    }]
                });
                self.conn
                    .request(
                        "POST",
                        &self.path,
                        &[("content-type", "application/json")],
                        body.to_string().as_bytes(),
                    )
                    .await?
            }
        };
        if !(200..300).contains(&response.status) {
            bail!(
                "publish answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        Ok(())
    }
}
